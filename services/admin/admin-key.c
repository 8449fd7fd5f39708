/*
 * server-key rotate / show: the deployment's WireGuard server key
 * (cp_store_server_key_rotate; docs/ops.md "Rotating the server key").
 */
#include "cp/base.h"
#include "cp/log.h"
#include "cp/util.h"
#include "admin.h"

static const cp_log_ctx log_ctx = { .component = "admin" };

static json_t *time_or_null(int64_t unix_ns) {
        char buf[32];

        if (unix_ns <= 0)
                return json_null();
        cp_format_rfc3339(unix_ns, buf);
        return json_string(buf);
}

static json_t *info_json(const cp_store_server_key_info *i) {
        json_t *o = json_object();

        json_object_set_new(o, "public_key", json_string(i->public_key));
        json_object_set_new(o, "generation", json_integer(i->generation));
        json_object_set_new(o, "created_at", time_or_null(i->created_unix_ns));
        json_object_set_new(o, "rotated_at", time_or_null(i->rotated_unix_ns));
        json_object_set_new(o, "previous_public_key",
                            i->previous_public_key[0] ? json_string(i->previous_public_key) : json_null());
        json_object_set_new(o, "previous_expires_at", time_or_null(i->previous_expires_unix_ns));
        json_object_set_new(o, "previous_valid", json_boolean(i->previous_valid));
        return o;
}

/* KEY=VALUE lines (safe to source), or one JSON object. */
static int print_info(const cp_store_server_key_info *i, bool json) {
        json_t *o = info_json(i);
        const char *k;
        json_t *v;

        if (json) {
                char *d = json_dumps(o, JSON_INDENT(2));
                printf("%s\n", d ? d : "{}");
                free(d);
        } else {
                json_object_foreach(o, k, v) {
                        char name[64];
                        size_t n = 0;
                        for (const char *p = k; *p && n + 1 < sizeof name; p++)
                                name[n++] = (char) (*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
                        name[n] = '\0';
                        if (json_is_string(v))
                                printf("SERVER_KEY_%s=%s\n", name, json_string_value(v));
                        else if (json_is_integer(v))
                                printf("SERVER_KEY_%s=%" JSON_INTEGER_FORMAT "\n", name, json_integer_value(v));
                        else if (json_is_boolean(v))
                                printf("SERVER_KEY_%s=%s\n", name, json_is_true(v) ? "true" : "false");
                        else
                                printf("SERVER_KEY_%s=\n", name);
                }
        }
        json_decref(o);
        return admin_finish_stdout();
}

int admin_cmd_server_key_show(const admin_ctx *a) {
        cp_store_server_key_info info;
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r;

        r = admin_open_store(a, false, NULL, &s);
        if (r != 0)
                return r;
        r = cp_store_server_key_info_get(s, &info, &err);
        cp_store_free(s);
        if (r < 0)
                return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot read the server key");
        return print_info(&info, a->opts->json);
}

int admin_cmd_server_key_rotate(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        cp_store_server_key_info info;
        uint8_t data_key[32];
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r;

        if (o->grace_ms % 1000 != 0) {
                fprintf(stderr, ADMIN_PROG ": error: invalid value for --grace: whole seconds only\n");
                return ADMIN_EXIT_USAGE;
        }
        r = cp_config_encryption_key(a->cfg, data_key);
        if (r <= 0) {
                cp_error_set(&err, -EINVAL, r == 0 ? "no DataStoreEncryptionKey configured: the new server key is "
                             "stored encrypted with it" : "invalid DataStoreEncryptionKey: expected standard base64 "
                             "of 32 bytes");
                cp_error_hint(&err, "give the same key as the replicas: --data-store-encryption-key, "
                              "NB_MGMT_DATA_STORE_ENCRYPTION_KEY or DataStoreEncryptionKey in management.json");
                return admin_fail(ADMIN_EXIT_USAGE, &err, "cannot rotate the server key");
        }
        r = admin_open_store(a, false, NULL, &s);
        if (r != 0) {
                cp_explicit_bzero(data_key, sizeof data_key);
                return r;
        }
        r = cp_store_server_key_rotate(s, data_key, o->grace_ms / 1000, o->force, &info, &err);
        cp_explicit_bzero(data_key, sizeof data_key);
        cp_store_free(s);
        if (r == -EKEYREJECTED)
                return admin_fail(ADMIN_EXIT_USAGE, &err, "cannot rotate the server key");
        if (r < 0)
                return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot rotate the server key");
        cp_log_kv(&log_ctx, CP_LOG_INFO, "server key rotated", "public_key", info.public_key, "previous_key",
                  info.previous_public_key, NULL);
        return print_info(&info, o->json);
}
