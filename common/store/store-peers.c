/*
 * store-peers.c: peers for the agent protocol: lookup, setup-key
 * registration, login update and logout (cp/store-peers.h).
 *
 * Lock order, the same in every transaction here so they cannot deadlock
 * one another: setup_keys row, then peers rows, then the accounts row
 * (the serial bump always comes last).
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/strbuf.h"
#include "cp/util.h"
#include "cp/store-peers.h"
#include "cp/store-tx.h"
#include "store-int.h"

#include <arpa/inet.h>
#include <jansson.h>

/* NetBird activity codes (netbird-protocol.md section 7). */
enum {
        ACTIVITY_PEER_ADDED_BY_USER = 0,
        ACTIVITY_PEER_ADDED_WITH_SETUP_KEY = 1,
        ACTIVITY_PEER_REMOVED_BY_USER = 5,
};

/* Random addresses tried before scanning for a free one. */
#define IP_RANDOM_TRIES 8
/* Inserts tried in all (random picks, then scans) before giving up. */
#define INSERT_TRIES 12
/* Only this many code points of a hostname label are looked at: a DNS
 * label is at most 63 bytes and punycode is quadratic. */
#define LABEL_MAX_CODEPOINTS 255

/* ---- the record's memory ---------------------------------------------------
 * Every string and array of a cp_store_peer is a block on one list, freed
 * together by cp_store_peer_free(). */
typedef struct rec_block {
        struct rec_block *next;
        max_align_t data[];
} rec_block;

static void *rec_alloc(cp_store_peer *p, size_t n) {
        rec_block *b = cp_xmalloc(sizeof *b + (n ? n : 1));

        b->next = p->_mem;
        p->_mem = b;
        return b->data;
}

static const char *rec_strdup(cp_store_peer *p, const char *s) {
        size_t n = strlen(s) + 1;
        char *d = rec_alloc(p, n);

        memcpy(d, s, n);
        return d;
}

cp_store_peer *cp_store_peer_free(cp_store_peer *p) {
        if (!p)
                return NULL;
        for (rec_block *b = p->_mem, *next; b; b = next) {
                next = b->next;
                free(b);
        }
        free(p);
        return NULL;
}

/* ---- reading a record --------------------------------------------------- */

/* Column positions of PEER_COLUMNS (store.c): the base part, then the
 * detail part. */
enum peer_col {
        COL_ID, COL_ACCOUNT_ID, COL_KEY, COL_IP, COL_DNS_LABEL, COL_NAME, COL_USER_ID, COL_SSH_KEY,
        COL_SSH_ENABLED, COL_LOGIN_EXP, COL_INACTIVITY_EXP, COL_EPHEMERAL, COL_ALLOW_EXTRA,
        COL_LAST_LOGIN, COL_CREATED_AT, COL_CONN_IP,
        COL_CONNECTED, COL_LOGIN_EXPIRED, COL_REQUIRES_APPROVAL, COL_SESSION, COL_LAST_SEEN,
        COL_META_HOSTNAME, /* ... 13 plain meta strings in cp_store_peer_meta order */
        COL_ENV_CLOUD = COL_META_HOSTNAME + 13, COL_ENV_PLATFORM, COL_SYNC_VERSION,
        _COL_BASE_MAX,
        COL_EXTRA_LABELS = _COL_BASE_MAX, COL_NET_ADDRS, COL_FILES, COL_FLAGS, COL_CAPS, COL_GROUP_IDS,
        _COL_MAX,
};

static const char *json_str(const json_t *o, const char *k) {
        const char *v = json_string_value(json_object_get(o, k));
        return v ? v : "";
}

/* A JSON array of strings into a record-owned array. */
static int parse_strv(cp_store_peer *p, const char *text, const char *const **ret, size_t *ret_n) {
        _cleanup_(json_decrefp) json_t *a = json_loads(text, 0, NULL);
        const char **v;
        size_t i;
        json_t *e;

        if (!json_is_array(a))
                return -EBADMSG;
        v = rec_alloc(p, (json_array_size(a) + 1) * sizeof *v);
        json_array_foreach(a, i, e)
                v[i] = rec_strdup(p, json_string_value(e) ? json_string_value(e) : "");
        v[json_array_size(a)] = NULL;
        *ret = v;
        *ret_n = json_array_size(a);
        return 0;
}

static int parse_meta_json(cp_store_peer *p, const PGresult *res) {
        cp_store_peer_meta *m = &p->meta;
        _cleanup_(json_decrefp) json_t *addrs = json_loads(PQgetvalue(res, 0, COL_NET_ADDRS), 0, NULL);
        _cleanup_(json_decrefp) json_t *files = json_loads(PQgetvalue(res, 0, COL_FILES), 0, NULL);
        _cleanup_(json_decrefp) json_t *flags = json_loads(PQgetvalue(res, 0, COL_FLAGS), 0, NULL);
        _cleanup_(json_decrefp) json_t *caps = json_loads(PQgetvalue(res, 0, COL_CAPS), 0, NULL);
        size_t i;
        json_t *e;

        if (!json_is_array(addrs) || !json_is_array(files) || !json_is_object(flags))
                return -EBADMSG;

        cp_store_peer_netaddr *na = rec_alloc(p, json_array_size(addrs) * sizeof *na);
        json_array_foreach(addrs, i, e) {
                na[i].net_ip = rec_strdup(p, json_str(e, "NetIP"));
                na[i].mac = rec_strdup(p, json_str(e, "Mac"));
        }
        m->network_addresses = na;
        m->n_network_addresses = json_array_size(addrs);

        cp_store_peer_file *fv = rec_alloc(p, json_array_size(files) * sizeof *fv);
        json_array_foreach(files, i, e) {
                fv[i].path = rec_strdup(p, json_str(e, "Path"));
                fv[i].exist = json_is_true(json_object_get(e, "Exist"));
                fv[i].process_is_running = json_is_true(json_object_get(e, "ProcessIsRunning"));
        }
        m->files = fv;
        m->n_files = json_array_size(files);

#define FLAG(field, name) m->flags.field = json_is_true(json_object_get(flags, name))
        FLAG(rosenpass_enabled, "RosenpassEnabled");
        FLAG(rosenpass_permissive, "RosenpassPermissive");
        FLAG(server_ssh_allowed, "ServerSSHAllowed");
        FLAG(disable_client_routes, "DisableClientRoutes");
        FLAG(disable_server_routes, "DisableServerRoutes");
        FLAG(disable_dns, "DisableDNS");
        FLAG(disable_firewall, "DisableFirewall");
        FLAG(block_lan_access, "BlockLANAccess");
        FLAG(block_inbound, "BlockInbound");
        FLAG(lazy_connection_enabled, "LazyConnectionEnabled");
        FLAG(disable_ipv6, "DisableIPv6");
#undef FLAG

        /* array_to_json of an empty array is "[]"; of NULL it is NULL. */
        size_t nc = json_is_array(caps) ? json_array_size(caps) : 0;
        int32_t *cv = rec_alloc(p, nc * sizeof *cv);
        for (i = 0; i < nc; i++)
                cv[i] = (int32_t) json_integer_value(json_array_get(caps, i));
        m->capabilities = cv;
        m->n_capabilities = nc;
        return 0;
}

/* Builds a record from row 0 of a result whose first ncols columns are
 * PEER_COLUMNS (_COL_MAX) or only its base part (_COL_BASE_MAX: extra
 * labels, the JSON parts of the meta and the group ids stay empty),
 * followed by extra columns of the caller's. */
static int peer_from_row(const PGresult *res, int ncols, int extra, cp_store_peer **ret, cp_error *reterr) {
        static const char *const none[1] = { NULL };
        cp_store_peer *p;
        int r = 0;

        if (PQnfields(res) != ncols + extra)
                return cp_error_set(reterr, -EIO, "peer row has %d columns, expected %d",
                                    PQnfields(res), ncols + extra);
        p = cp_xcalloc(1, sizeof *p);
#define S(col) rec_strdup(p, PQgetvalue(res, 0, col))
        p->id = S(COL_ID);
        p->account_id = S(COL_ACCOUNT_ID);
        p->key = S(COL_KEY);
        p->ip = S(COL_IP);
        p->dns_label = S(COL_DNS_LABEL);
        p->name = S(COL_NAME);
        p->user_id = S(COL_USER_ID);
        p->ssh_key = S(COL_SSH_KEY);
        p->connection_ip = S(COL_CONN_IP);

        const char **meta_str[13] = {
                &p->meta.hostname, &p->meta.go_os, &p->meta.kernel, &p->meta.core,
                &p->meta.platform, &p->meta.os, &p->meta.os_version, &p->meta.wt_version,
                &p->meta.ui_version, &p->meta.kernel_version, &p->meta.system_serial_number,
                &p->meta.system_product_name, &p->meta.system_manufacturer,
        };
        for (size_t i = 0; i < ELEMENTSOF(meta_str); i++)
                *meta_str[i] = S(COL_META_HOSTNAME + (int) i);
        p->meta.environment_cloud = S(COL_ENV_CLOUD);
        p->meta.environment_platform = S(COL_ENV_PLATFORM);
#undef S
        p->ssh_enabled = cp_store__col_bool(res, COL_SSH_ENABLED);
        p->login_expiration_enabled = cp_store__col_bool(res, COL_LOGIN_EXP);
        p->inactivity_expiration_enabled = cp_store__col_bool(res, COL_INACTIVITY_EXP);
        p->ephemeral = cp_store__col_bool(res, COL_EPHEMERAL);
        p->allow_extra_dns_labels = cp_store__col_bool(res, COL_ALLOW_EXTRA);
        p->last_login_unix_ns = cp_store__col_int64(res, COL_LAST_LOGIN) * 1000;
        p->created_at_unix_ns = cp_store__col_int64(res, COL_CREATED_AT) * 1000;
        p->status.connected = cp_store__col_bool(res, COL_CONNECTED);
        p->status.login_expired = cp_store__col_bool(res, COL_LOGIN_EXPIRED);
        p->status.requires_approval = cp_store__col_bool(res, COL_REQUIRES_APPROVAL);
        p->status.session_started_at = cp_store__col_int64(res, COL_SESSION);
        p->status.last_seen_unix_ns = cp_store__col_int64(res, COL_LAST_SEEN) * 1000;
        p->meta.sync_message_version = (int32_t) cp_store__col_int64(res, COL_SYNC_VERSION);

        p->extra_dns_labels = p->group_ids = none;
        if (ncols == _COL_MAX) {
                r = parse_strv(p, PQgetvalue(res, 0, COL_EXTRA_LABELS), &p->extra_dns_labels,
                               &p->n_extra_dns_labels);
                if (r >= 0)
                        r = parse_strv(p, PQgetvalue(res, 0, COL_GROUP_IDS), &p->group_ids, &p->n_group_ids);
                if (r >= 0)
                        r = parse_meta_json(p, res);
        }
        if (r < 0) {
                cp_store_peer_free(p);
                return cp_error_set(reterr, r, "stored peer row is malformed");
        }
        *ret = p;
        return 0;
}

/* Runs a PEER_COLUMNS query on c; -ENOENT when it finds nothing. */
static int peer_query(cp_store_conn *c, cp_store_stmt st, const char *const *params,
                      cp_store_peer **ret, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r;

        r = cp_store__exec(c, st, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "peer not found");
        return peer_from_row(res, _COL_MAX, 0, ret, reterr);
}

static int peer_get(cp_store *s, cp_store_stmt st, const char *const *params,
                    cp_store_peer **ret, cp_error *reterr) {
        cp_store_peer *p = NULL;
        cp_store_conn *c;
        int r;

        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                return r;
        r = peer_query(c, st, params, &p, reterr);
        cp_store__release(s, c);
        if (r < 0)
                return r;
        /* ret may be NULL: the caller only asks whether the peer exists. */
        if (ret)
                *ret = p;
        else
                cp_store_peer_free(p);
        return 0;
}

int cp_store_peer_get_by_key(cp_store *s, const char *wg_pub_key, cp_store_peer **ret_peer,
                             cp_error *reterr) {
        const char *params[1] = { wg_pub_key };

        if (!wg_pub_key || !*wg_pub_key)
                return cp_error_set(reterr, -EINVAL, "peer key is required");
        return peer_get(s, ST_PEER_GET_BY_KEY, params, ret_peer, reterr);
}

int cp_store_peer_get(cp_store *s, const char *account_id, const char *peer_id,
                      cp_store_peer **ret_peer, cp_error *reterr) {
        const char *params[2] = { account_id, peer_id };

        if (!account_id || !peer_id)
                return cp_error_set(reterr, -EINVAL, "account and peer id are required");
        return peer_get(s, ST_PEER_GET, params, ret_peer, reterr);
}

/* ---- account settings ----------------------------------------------------- */

/* Columns ACCOUNT_SETTINGS_COLUMNS (store.c) of row 0, from column col. */
static void settings_from_row(const PGresult *res, int col, cp_store_account_settings *ret) {
        cp_store_account_settings out = { 0 };

        (void) snprintf(out.network_cidr, sizeof out.network_cidr, "%s", PQgetvalue(res, 0, col));
        out.network_prefix_len = (unsigned) cp_store__col_int64(res, col + 1);
        (void) snprintf(out.dns_domain, sizeof out.dns_domain, "%s", PQgetvalue(res, 0, col + 2));
        out.login_expiration_enabled = cp_store__col_bool(res, col + 3);
        out.login_expiration_ns = cp_store__col_int64(res, col + 4);
        out.inactivity_expiration_enabled = cp_store__col_bool(res, col + 5);
        out.inactivity_expiration_ns = cp_store__col_int64(res, col + 6);
        out.lazy_connection_enabled = cp_store__col_bool(res, col + 7);
        out.routing_peer_dns_resolution_enabled = cp_store__col_bool(res, col + 8);
        out.peer_approval_enabled = cp_store__col_bool(res, col + 9);
        out.network_serial = cp_store__col_int64(res, col + 10);
        out.suspended = cp_store__col_bool(res, col + 11);
        *ret = out;
}
#define SETTINGS_COLUMNS 12

int cp_store_account_get_settings(cp_store *s, const char *account_id,
                                  cp_store_account_settings *ret, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[1] = { account_id };
        int r;

        if (!account_id)
                return cp_error_set(reterr, -EINVAL, "account id is required");
        r = cp_store__run(s, ST_ACCOUNT_SETTINGS, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "account %s not found", account_id);
        settings_from_row(res, 0, ret);
        return 0;
}

/* ---- lookup for Login and Sync ---------------------------------------------------- */

int cp_store_peer_lookup(cp_store *s, const char *wg_pub_key, cp_store_peer **ret_peer,
                         cp_store_account_settings *ret_settings, int64_t *ret_db_now_ns, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[1] = { wg_pub_key };
        cp_store_peer *p = NULL;
        int r;

        if (!wg_pub_key || !*wg_pub_key)
                return cp_error_set(reterr, -EINVAL, "peer key is required");
        if (!ret_peer || !ret_settings)
                return cp_error_set(reterr, -EINVAL, "result pointers are required");
        r = cp_store__run(s, ST_PEER_LOOKUP, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "peer not found");
        r = peer_from_row(res, _COL_BASE_MAX, SETTINGS_COLUMNS + 2, &p, reterr);
        if (r < 0)
                return r;
        settings_from_row(res, _COL_BASE_MAX, ret_settings);
        if (ret_db_now_ns)
                *ret_db_now_ns = cp_store__col_int64(res, _COL_BASE_MAX + SETTINGS_COLUMNS);
        p->owner_blocked = cp_store__col_bool(res, _COL_BASE_MAX + SETTINGS_COLUMNS + 1);
        *ret_peer = p;
        return 0;
}

/* ---- DNS labels ------------------------------------------------------------- */

/* Decodes one UTF-8 sequence; invalid bytes decode as U+FFFD, one byte
 * each, as Go's range over a string does. */
static uint32_t utf8_next(const unsigned char **sp) {
        const unsigned char *s = *sp;
        uint32_t c;
        int n;

        if (s[0] < 0x80) {
                *sp = s + 1;
                return s[0];
        }
        if ((s[0] & 0xe0) == 0xc0)
                c = s[0] & 0x1f, n = 1;
        else if ((s[0] & 0xf0) == 0xe0)
                c = s[0] & 0x0f, n = 2;
        else if ((s[0] & 0xf8) == 0xf0)
                c = s[0] & 0x07, n = 3;
        else
                goto bad;
        for (int i = 1; i <= n; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        goto bad;
                c = (c << 6) | (s[i] & 0x3f);
        }
        if ((n == 1 && c < 0x80) || (n == 2 && c < 0x800) || (n == 3 && c < 0x10000) ||
            c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
                goto bad;
        *sp = s + n + 1;
        return c;
bad:
        *sp = s + 1;
        return 0xfffd;
}

static char puny_digit(uint32_t d) {
        return (char) (d < 26 ? 'a' + d : '0' + (d - 26));
}

static uint32_t puny_adapt(uint32_t delta, uint32_t numpoints, bool first) {
        uint32_t k = 0;

        delta = first ? delta / 700 : delta / 2;
        delta += delta / numpoints;
        while (delta > ((36 - 1) * 26) / 2) {
                delta /= 36 - 1;
                k += 36;
        }
        return k + (36 - 1 + 1) * delta / (delta + 38);
}

/* RFC 3492 encoding of cps[0..n) appended to sb (without "xn--"). n is
 * bounded by LABEL_MAX_CODEPOINTS, so delta cannot overflow. */
static void punycode_encode(const uint32_t *cps, size_t n, cp_strbuf *sb) {
        uint32_t cp_n = 128, delta = 0, bias = 72, h, b = 0;

        for (size_t i = 0; i < n; i++)
                if (cps[i] < 0x80) {
                        cp_strbuf_addch(sb, (char) cps[i]);
                        b++;
                }
        h = b;
        if (b > 0)
                cp_strbuf_addch(sb, '-');
        while (h < n) {
                uint32_t m = UINT32_MAX;
                for (size_t i = 0; i < n; i++)
                        if (cps[i] >= cp_n && cps[i] < m)
                                m = cps[i];
                delta += (m - cp_n) * (h + 1);
                cp_n = m;
                for (size_t i = 0; i < n; i++) {
                        if (cps[i] < cp_n)
                                delta++;
                        if (cps[i] != cp_n)
                                continue;
                        uint32_t q = delta;
                        for (uint32_t k = 36;; k += 36) {
                                uint32_t t = k <= bias ? 1 : k >= bias + 26 ? 26 : k - bias;
                                if (q < t)
                                        break;
                                cp_strbuf_addch(sb, puny_digit(t + (q - t) % (36 - t)));
                                q = (q - t) / (36 - t);
                        }
                        cp_strbuf_addch(sb, puny_digit(q));
                        bias = puny_adapt(delta, h + 1, h == b);
                        delta = 0;
                        h++;
                }
                delta++;
                cp_n++;
        }
}

static bool label_char_ok(char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
               ch == '-';
}

int cp_store_dns_label_from_hostname(const char *hostname, char out[CP_STORE_DNS_LABEL_MAX + 1]) {
        uint32_t cps[LABEL_MAX_CODEPOINTS];
        size_t n = 0, len = 0;
        bool ascii = true, in_run = false;
        cp_strbuf sb;

        if (!hostname)
                return -EINVAL;
        /* The first label; a leading dot or an empty name gives none. */
        const unsigned char *p = (const unsigned char *) hostname;
        while (*p && *p != '.' && n < LABEL_MAX_CODEPOINTS) {
                cps[n] = utf8_next(&p);
                if (cps[n] >= 0x80)
                        ascii = false;
                n++;
        }
        if (n == 0)
                return -EINVAL;

        cp_strbuf_init(&sb);
        if (ascii) {
                for (size_t i = 0; i < n; i++)
                        cp_strbuf_addch(&sb, (char) cps[i]);
        } else {
                cp_strbuf_adds(&sb, "xn--");
                punycode_encode(cps, n, &sb);
        }
        /* Runs of characters outside [a-zA-Z0-9-] become one '-', then
         * lower case, then at most 59 characters (NetBird's rules). */
        for (size_t i = 0; i < sb.len && len < 59; i++) {
                char ch = sb.buf[i];
                if (!label_char_ok(ch)) {
                        if (!in_run)
                                out[len++] = '-';
                        in_run = true;
                        continue;
                }
                in_run = false;
                out[len++] = (char) (ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
        }
        out[len] = '\0';
        cp_strbuf_release(&sb);
        return (int) len;
}

/* "<label>-<octet 3>-<octet 4>", the label shortened so the whole stays a
 * valid 63-character DNS label. */
static void fallback_label(const char *label, uint32_t ip, char out[CP_STORE_DNS_LABEL_MAX + 1]) {
        char suffix[12];
        int sn = snprintf(suffix, sizeof suffix, "-%u-%u", (ip >> 8) & 0xff, ip & 0xff);
        int keep = (int) strlen(label);

        if (keep > CP_STORE_DNS_LABEL_MAX - sn)
                keep = CP_STORE_DNS_LABEL_MAX - sn;
        (void) snprintf(out, CP_STORE_DNS_LABEL_MAX + 1, "%.*s%s", keep, label, suffix);
}

int cp_store_dns_label_with_ip(const char *label, const char *ipv4, char out[CP_STORE_DNS_LABEL_MAX + 1]) {
        struct in_addr in;

        if (!label || !*label || !ipv4 || inet_pton(AF_INET, ipv4, &in) != 1)
                return -EINVAL;
        fallback_label(label, ntohl(in.s_addr), out);
        return (int) strlen(out);
}

/* Validates and lower-cases extra DNS labels into a text[] literal. Each
 * is a domain name of [a-z0-9-] labels; none needs quoting in the
 * literal. */
static int extra_labels_literal(const char *const *labels, size_t n, cp_strbuf *sb, cp_error *reterr) {
        if (n > CP_STORE_MAX_EXTRA_DNS_LABELS)
                return cp_error_set(reterr, -EINVAL, "too many extra DNS labels (%zu, at most %d)",
                                    n, CP_STORE_MAX_EXTRA_DNS_LABELS);
        cp_strbuf_addch(sb, '{');
        for (size_t i = 0; i < n; i++) {
                const char *l = labels[i];
                size_t len = l ? strlen(l) : 0, part = 0;

                if (len == 0 || len > 253)
                        return cp_error_set(reterr, -EINVAL, "invalid extra DNS label \"%s\"", l ? l : "");
                for (size_t j = 0; j <= len; j++) {
                        char ch = l[j];
                        if (ch == '.' || ch == '\0') {
                                if (part == 0 || part > 63 || l[j - 1] == '-' || l[j - part] == '-')
                                        return cp_error_set(reterr, -EINVAL, "invalid extra DNS label \"%s\"", l);
                                part = 0;
                                continue;
                        }
                        if (!label_char_ok(ch))
                                return cp_error_set(reterr, -EINVAL, "invalid extra DNS label \"%s\"", l);
                        part++;
                }
                if (i > 0)
                        cp_strbuf_addch(sb, ',');
                for (size_t j = 0; j < len; j++)
                        cp_strbuf_addch(sb, (char) (l[j] >= 'A' && l[j] <= 'Z' ? l[j] - 'A' + 'a' : l[j]));
        }
        cp_strbuf_addch(sb, '}');
        return 0;
}

/* ---- meta -------------------------------------------------------------------- */

/* The 19 parameters of PEER_META_COLUMNS, built once from the caller's
 * meta with the mapping rules applied. */
typedef struct meta_params {
        const char *v[19];
        cp_strbuf addrs, env, flags, files, caps;
        char sync[12];
} meta_params;

static void meta_params_release(meta_params *mp) {
        cp_strbuf_release(&mp->addrs);
        cp_strbuf_release(&mp->env);
        cp_strbuf_release(&mp->flags);
        cp_strbuf_release(&mp->files);
        cp_strbuf_release(&mp->caps);
}

/* Canonical "addr/bits" when s is a CIDR prefix as Go's
 * netip.ParsePrefix takes it, else false. */
static bool canonical_prefix(const char *s, char out[INET6_ADDRSTRLEN + 4]) {
        const char *slash = s ? strrchr(s, '/') : NULL;
        char addr[INET6_ADDRSTRLEN + 1], text[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        int64_t bits;
        int af;

        if (!slash || (size_t) (slash - s) > INET6_ADDRSTRLEN || slash == s)
                return false;
        memcpy(addr, s, (size_t) (slash - s));
        addr[slash - s] = '\0';
        af = strchr(addr, ':') ? AF_INET6 : AF_INET;
        if (inet_pton(af, addr, bin) != 1)
                return false;
        /* Decimal, no sign, no leading zeros. */
        if (!slash[1] || (slash[1] == '0' && slash[2]) ||
            strspn(slash + 1, "0123456789") != strlen(slash + 1) ||
            cp_parse_int64(slash + 1, 0, af == AF_INET ? 32 : 128, &bits) < 0)
                return false;
        if (!inet_ntop(af, bin, text, sizeof text))
                return false;
        (void) snprintf(out, INET6_ADDRSTRLEN + 4, "%s/%d", text, (int) bits);
        return true;
}

typedef struct addr_item {
        char net_ip[INET6_ADDRSTRLEN + 4];
        const char *mac;
} addr_item;

static int addr_cmp(const void *a, const void *b) {
        const addr_item *x = a, *y = b;
        int r = strcmp(x->mac, y->mac);
        return r ? r : strcmp(x->net_ip, y->net_ip);
}

static int file_cmp(const void *a, const void *b) {
        const cp_store_peer_file *x = a, *y = b;
        return strcmp(cp_store__nz(x->path), cp_store__nz(y->path));
}

/* ,"key":"value" (first: without the comma), the value escaped. The
 * database checks the text is UTF-8 (else -EINVAL) and keeps jsonb in
 * its own normal form, so only the JSON has to be right here. */
static void json_key(cp_strbuf *sb, bool first, const char *key) {
        cp_strbuf_adds(sb, first ? "\"" : ",\"");
        cp_strbuf_adds(sb, key);
        cp_strbuf_adds(sb, "\":");
}

static void json_str_member(cp_strbuf *sb, bool first, const char *key, const char *value) {
        json_key(sb, first, key);
        cp_strbuf_addch(sb, '"');
        cp_strbuf_add_json_escaped(sb, cp_store__nz(value));
        cp_strbuf_addch(sb, '"');
}

static void json_bool_member(cp_strbuf *sb, bool first, const char *key, bool value) {
        json_key(sb, first, key);
        cp_strbuf_adds(sb, value ? "true" : "false");
}

static void meta_params_init(meta_params *mp) {
        memset(mp, 0, sizeof *mp);
        cp_strbuf_init(&mp->addrs);
        cp_strbuf_init(&mp->env);
        cp_strbuf_init(&mp->flags);
        cp_strbuf_init(&mp->files);
        cp_strbuf_init(&mp->caps);
}

static int meta_params_build(const cp_store_peer_meta *m, meta_params *mp, cp_error *reterr) {
        meta_params_init(mp);
        if (m->n_network_addresses > CP_STORE_META_MAX_ADDRESSES || m->n_files > CP_STORE_META_MAX_FILES ||
            m->n_capabilities > CP_STORE_META_MAX_CAPABILITIES)
                return cp_error_set(reterr, -EINVAL, "peer meta has too many entries");

        /* Network addresses: drop non-prefixes, canonicalise, sort so the
         * same set always stores (and compares) the same. */
        _cleanup_free_ addr_item *items = cp_xcalloc(m->n_network_addresses + 1, sizeof *items);
        size_t n_items = 0;
        for (size_t i = 0; i < m->n_network_addresses; i++) {
                if (!canonical_prefix(m->network_addresses[i].net_ip, items[n_items].net_ip))
                        continue;
                items[n_items++].mac = cp_store__nz(m->network_addresses[i].mac);
        }
        qsort(items, n_items, sizeof *items, addr_cmp);
        cp_strbuf_addch(&mp->addrs, '[');
        for (size_t i = 0; i < n_items; i++) {
                cp_strbuf_adds(&mp->addrs, i ? ",{" : "{");
                json_str_member(&mp->addrs, true, "NetIP", items[i].net_ip);
                json_str_member(&mp->addrs, false, "Mac", items[i].mac);
                cp_strbuf_addch(&mp->addrs, '}');
        }
        cp_strbuf_addch(&mp->addrs, ']');

        cp_strbuf_addch(&mp->env, '{');
        json_str_member(&mp->env, true, "Cloud", m->environment_cloud);
        json_str_member(&mp->env, false, "Platform", m->environment_platform);
        cp_strbuf_addch(&mp->env, '}');

        const cp_store_peer_flags *f = &m->flags;
        cp_strbuf_addch(&mp->flags, '{');
        json_bool_member(&mp->flags, true, "RosenpassEnabled", f->rosenpass_enabled);
        json_bool_member(&mp->flags, false, "RosenpassPermissive", f->rosenpass_permissive);
        json_bool_member(&mp->flags, false, "ServerSSHAllowed", f->server_ssh_allowed);
        json_bool_member(&mp->flags, false, "DisableClientRoutes", f->disable_client_routes);
        json_bool_member(&mp->flags, false, "DisableServerRoutes", f->disable_server_routes);
        json_bool_member(&mp->flags, false, "DisableDNS", f->disable_dns);
        json_bool_member(&mp->flags, false, "DisableFirewall", f->disable_firewall);
        json_bool_member(&mp->flags, false, "BlockLANAccess", f->block_lan_access);
        json_bool_member(&mp->flags, false, "BlockInbound", f->block_inbound);
        json_bool_member(&mp->flags, false, "LazyConnectionEnabled", f->lazy_connection_enabled);
        json_bool_member(&mp->flags, false, "DisableIPv6", f->disable_ipv6);
        cp_strbuf_addch(&mp->flags, '}');

        _cleanup_free_ cp_store_peer_file *fv = cp_xcalloc(m->n_files + 1, sizeof *fv);
        if (m->n_files)
                memcpy(fv, m->files, m->n_files * sizeof *fv);
        qsort(fv, m->n_files, sizeof *fv, file_cmp);
        cp_strbuf_addch(&mp->files, '[');
        for (size_t i = 0; i < m->n_files; i++) {
                cp_strbuf_adds(&mp->files, i ? ",{" : "{");
                json_str_member(&mp->files, true, "Path", fv[i].path);
                json_bool_member(&mp->files, false, "Exist", fv[i].exist);
                json_bool_member(&mp->files, false, "ProcessIsRunning", fv[i].process_is_running);
                cp_strbuf_addch(&mp->files, '}');
        }
        cp_strbuf_addch(&mp->files, ']');

        cp_strbuf_addch(&mp->caps, '{');
        for (size_t i = 0; i < m->n_capabilities; i++)
                cp_strbuf_addf(&mp->caps, "%s%" PRId32, i ? "," : "", m->capabilities[i]);
        cp_strbuf_addch(&mp->caps, '}');
        (void) snprintf(mp->sync, sizeof mp->sync, "%" PRId32, m->sync_message_version);

        /* The order of PEER_META_COLUMNS. */
        const char *os_version = m->os_version && *m->os_version ? m->os_version : cp_store__nz(m->core);
        const char *v[19] = {
                cp_store__nz(m->hostname), cp_store__nz(m->go_os), cp_store__nz(m->kernel), cp_store__nz(m->core), cp_store__nz(m->platform),
                cp_store__nz(m->os), os_version, cp_store__nz(m->wt_version), cp_store__nz(m->ui_version), cp_store__nz(m->kernel_version),
                mp->addrs.buf, cp_store__nz(m->system_serial_number), cp_store__nz(m->system_product_name),
                cp_store__nz(m->system_manufacturer), mp->env.buf, mp->flags.buf, mp->files.buf, mp->caps.buf, mp->sync,
        };
        memcpy(mp->v, v, sizeof v);
        return 0;
}

static bool valid_ip(const char *s) {
        unsigned char bin[16];
        return s && (inet_pton(AF_INET, s, bin) == 1 || inet_pton(AF_INET6, s, bin) == 1);
}

/* ---- transactions ------------------------------------------------------------ */

static int begin(cp_store_conn *c, cp_error *reterr) {
        return cp_store__command(c, "BEGIN", reterr);
}

/* Commits when r >= 0, else rolls back; returns r or the commit error. */
static int finish(cp_store_conn *c, int r, cp_error *reterr) {
        if (r >= 0)
                r = cp_store__command(c, "COMMIT", reterr);
        if (r < 0)
                (void) cp_store__command(c, "ROLLBACK", NULL);
        return r;
}

static int serial_bump(cp_store_conn *c, const char *account_id, int64_t *ret, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[1] = { account_id };
        int r = cp_store__exec(c, ST_ACCOUNT_SERIAL_BUMP, params, &res, reterr);

        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "account %s not found", account_id);
        *ret = cp_store__col_int64(res, 0);
        return 0;
}

/* ---- registration ------------------------------------------------------------- */

/* Where a new peer comes from: a claimed setup key, or (user_id set) an
 * SSO user, whose peers expire and take the user's auto-groups. */
typedef struct claimed_key {
        char id[64];
        char account_id[64];
        char *name;
        bool ephemeral;
        bool allow_extra_dns_labels;
        const char *user_id;            /* SSO registration; NULL = setup key */
        bool proxy;                     /* a proxy's embedded peer: no key, no user */
        int64_t device_limit;           /* set when admission refused it (-EDQUOT) */
} claimed_key;

static int claim_key(cp_store_conn *c, const char *hash, claimed_key *k, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[1] = { hash };
        int r = cp_store__exec(c, ST_SETUP_KEY_CLAIM, params, &res, reterr);

        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOKEY, "setup key is invalid");
        (void) snprintf(k->id, sizeof k->id, "%s", PQgetvalue(res, 0, 0));
        (void) snprintf(k->account_id, sizeof k->account_id, "%s", PQgetvalue(res, 0, 1));
        k->name = cp_xstrdup(PQgetvalue(res, 0, 2));
        k->ephemeral = cp_store__col_bool(res, 3);
        k->allow_extra_dns_labels = cp_store__col_bool(res, 4);
        return 0;
}

typedef struct account_net {
        uint32_t base;          /* network address, host order */
        uint64_t size;          /* addresses in the network */
} account_net;

static int account_network(cp_store_conn *c, const char *account_id, account_net *ret, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[1] = { account_id };
        struct in_addr in;
        int r = cp_store__exec(c, ST_ACCOUNT_NETWORK, params, &res, reterr);

        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -EIO, "account %s of the setup key not found", account_id);
        int64_t plen = cp_store__col_int64(res, 1);
        if (cp_store__col_int64(res, 2) != 4 || inet_pton(AF_INET, PQgetvalue(res, 0, 0), &in) != 1 ||
            plen < 8 || plen > 30)
                return cp_error_set(reterr, -EADDRNOTAVAIL, "account network %s/%" PRId64 " has no room"
                                    " for peers", PQgetvalue(res, 0, 0), plen);
        ret->base = ntohl(in.s_addr);
        ret->size = UINT64_C(1) << (32 - plen);
        return 0;
}

static void ip_text(uint32_t ip, char out[INET_ADDRSTRLEN]) {
        struct in_addr in = { .s_addr = htonl(ip) };
        (void) inet_ntop(AF_INET, &in, out, INET_ADDRSTRLEN);
}

/* Picks the address for attempt `attempt`: random host offsets first;
 * after that the first free one at or after a random offset (wrapping),
 * which also finds the last free addresses of a nearly full network.
 * Returns 0, or -EADDRNOTAVAIL when the network is full. */
static int pick_ip(cp_store_conn *c, const char *account_id, const account_net *net, int attempt,
                   uint32_t *ret, cp_error *reterr) {
        uint64_t hosts = net->size - 2;         /* offsets 1 .. size-2 */
        uint64_t start = 1 + cp_random_uniform(hosts);
        char base[INET_ADDRSTRLEN], lo[24], hi[24];

        if (attempt < IP_RANDOM_TRIES) {
                *ret = net->base + (uint32_t) start;
                return 0;
        }
        ip_text(net->base, base);
        for (int pass = 0; pass < 2; pass++) {
                _cleanup_pgresult_ PGresult *res = NULL;
                struct in_addr in;
                (void) snprintf(lo, sizeof lo, "%" PRIu64, pass == 0 ? start : 1);
                (void) snprintf(hi, sizeof hi, "%" PRIu64, pass == 0 ? hosts : start - 1);
                if (pass == 1 && start == 1)
                        break;
                const char *params[4] = { account_id, base, lo, hi };
                int r = cp_store__exec(c, ST_PEER_FREE_IP, params, &res, reterr);
                if (r < 0)
                        return r;
                if (PQntuples(res) == 1 && inet_pton(AF_INET, PQgetvalue(res, 0, 0), &in) == 1) {
                        *ret = ntohl(in.s_addr);
                        return 0;
                }
        }
        return cp_error_set(reterr, -EADDRNOTAVAIL, "no free address left in the account network");
}

static int label_taken(cp_store_conn *c, const char *account_id, const char *label, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[2] = { account_id, label };
        int r = cp_store__exec(c, ST_PEER_LABEL_TAKEN, params, &res, reterr);

        if (r < 0)
                return r;
        return cp_store__col_bool(res, 0) ? 1 : 0;
}

/* Inserts the peer, retrying address and label collisions under a
 * savepoint. Returns 0, -EEXIST (the WireGuard key is registered) or an
 * error. */
static int insert_peer(cp_store_conn *c, const cp_store_peer_register_req *req, const claimed_key *k,
                       const meta_params *mp, const char *labels_literal, const char *peer_id,
                       const char *base_label, cp_error *reterr) {
        account_net net = { 0 };
        int r;

        r = account_network(c, k->account_id, &net, reterr);
        if (r < 0)
                return r;

        for (int attempt = 0; attempt < INSERT_TRIES; attempt++) {
                _cleanup_pgresult_ PGresult *res = NULL;
                char ip[INET_ADDRSTRLEN], label[CP_STORE_DNS_LABEL_MAX + 1];
                uint32_t addr = 0;

                r = pick_ip(c, k->account_id, &net, attempt, &addr, reterr);
                if (r < 0)
                        return r;
                ip_text(addr, ip);
                /* Checked on every attempt: a collision may have been a
                 * concurrent registration taking this very label. */
                r = label_taken(c, k->account_id, base_label, reterr);
                if (r < 0)
                        return r;
                if (r > 0)
                        fallback_label(base_label, addr, label);
                else
                        (void) snprintf(label, sizeof label, "%s", base_label);

                char gid[24];
                const cp_store_peer_location *loc = req->location;
                (void) snprintf(gid, sizeof gid, "%" PRId64, loc ? loc->geoname_id : 0);
                const char *params[35] = {
                        peer_id, k->account_id, req->wg_pub_key, ip, cp_store__nz(req->meta->hostname), label,
                        mp->v[0], mp->v[1], mp->v[2], mp->v[3], mp->v[4], mp->v[5], mp->v[6],
                        mp->v[7], mp->v[8], mp->v[9], mp->v[10], mp->v[11], mp->v[12], mp->v[13],
                        mp->v[14], mp->v[15], mp->v[16], mp->v[17], mp->v[18],
                        cp_store__nz(req->ssh_key), k->ephemeral ? "true" : "false",
                        k->allow_extra_dns_labels ? "true" : "false", labels_literal,
                        req->connection_ip, k->user_id ? k->user_id : "", k->user_id ? "true" : "false",
                        loc ? cp_store__nz(loc->country_code) : "", loc ? cp_store__nz(loc->city_name) : "", gid,
                };
                r = cp_store__command(c, "SAVEPOINT peer_insert", reterr);
                if (r < 0)
                        return r;
                r = cp_store__exec(c, ST_PEER_INSERT, params, &res, reterr);
                if (r == -EEXIST) {
                        /* (account_id, ip) or (account_id, dns_label) taken;
                         * the key itself is ON CONFLICT DO NOTHING. */
                        r = cp_store__command(c, "ROLLBACK TO SAVEPOINT peer_insert", reterr);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (r < 0)
                        return r;
                if (PQntuples(res) == 0)
                        return cp_error_set(reterr, -EEXIST, "peer has been already registered");
                return cp_store__command(c, "RELEASE SAVEPOINT peer_insert", reterr);
        }
        return cp_error_set(reterr, -EADDRNOTAVAIL, "no free address and DNS label found after %d tries",
                            INSERT_TRIES);
}

/* Everything after the claim: peer, groups, event, serial, read-back. */
static int register_claimed(cp_store_conn *c, const cp_store_peer_register_req *req, claimed_key *k,
                            const meta_params *mp, const char *labels_literal, const char *base_label,
                            cp_store_peer **ret_peer, int64_t *ret_serial, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        char peer_id[CP_ID_LEN + 1], code[12];
        int r;

        if (req->n_extra_dns_labels > 0 && !k->allow_extra_dns_labels)
                return cp_error_set(reterr, -EPERM, "setup key doesn't allow extra DNS labels");

        if (!k->proxy) {
                /* Suspension and the device limit (store-tenant.c). */
                r = cp_store__peer_admit(c, k->account_id, &k->device_limit, reterr);
                if (r < 0)
                        return r;
        }
        cp_id_new(peer_id);
        r = insert_peer(c, req, k, mp, labels_literal, peer_id, base_label, reterr);
        if (r < 0)
                return r;

        const char *grp[3] = { k->account_id, peer_id, k->user_id ? k->user_id : k->id };
        /* NetBird's AddPeer without setup key or user: event 1, no initiator. */
        r = cp_store__exec(c, ST_PEER_GROUP_ALL, grp, &res, reterr);
        if (r < 0)
                return r;
        if (cp_store__affected(res) != 1)
                return cp_error_set(reterr, -EIO, "account %s has no All group", k->account_id);
        if (!k->proxy)
                r = cp_store__exec(c, k->user_id ? ST_PEER_GROUP_USER_AUTO : ST_PEER_GROUP_AUTO, grp, NULL,
                                   reterr);
        else {
                const char *pm[3] = { k->account_id, peer_id, cp_store__nz(req->proxy_cluster) };
                r = cp_store__exec(c, ST_PROXY_PEER_META, pm, NULL, reterr);
        }
        if (r < 0)
                return r;

        json_auto_t *extra = k->user_id ? NULL : json_pack("{s:s}", "setup_key_name", k->name);
        _cleanup_free_ char *extra_s = extra ? json_dumps(extra, JSON_COMPACT) : NULL;
        (void) snprintf(code, sizeof code, "%d",
                        k->user_id ? ACTIVITY_PEER_ADDED_BY_USER : ACTIVITY_PEER_ADDED_WITH_SETUP_KEY);
        const char *ev[7] = { code, grp[2], k->account_id, peer_id, cp_store__nz(req->dns_domain),
                              extra_s ? extra_s : "{}", NULL };
        r = cp_store__exec(c, ST_PEER_EVENT, ev, NULL, reterr);
        if (r < 0)
                return r;

        r = serial_bump(c, k->account_id, ret_serial, reterr);
        if (r < 0)
                return r;

        const char *get[2] = { k->account_id, peer_id };
        return peer_query(c, ST_PEER_GET, get, ret_peer, reterr);
}

/* The SSO user as the source of a new peer (NetBird's
 * handleUserAddedPeer): the user's account locked first, then the user,
 * whose last_login becomes the registration time. */
static int claim_user(cp_store_conn *c, const char *user_id, claimed_key *k, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL, *pend = NULL;
        const char *params[1] = { user_id };
        int r;

        r = cp_store__exec(c, ST_SSO_USER_ACCOUNT_LOCK, params, NULL, reterr);
        if (r >= 0)
                r = cp_store__exec(c, ST_SSO_USER, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1) {
                r = cp_store__exec(c, ST_SSO_USER_PENDING, params, &pend, reterr);
                if (r < 0)
                        return r;
                if (PQntuples(pend) == 1)
                        return cp_error_set(reterr, -EACCES, "user pending approval cannot add peers");
                return cp_error_set(reterr, -ENOENT, "failed adding new peer: user not found");
        }
        (void) snprintf(k->account_id, sizeof k->account_id, "%s", PQgetvalue(res, 0, 0));
        k->user_id = user_id;
        return 0;
}

/* k is the caller's (zeroed; it frees k->name): after a refused
 * admission it still says which account and key or user were refused. */
static int register_tx(cp_store_conn *c, const cp_store_peer_register_req *req, const char *hash,
                       const meta_params *mp, const char *labels_literal, const char *base_label,
                       claimed_key *k, cp_store_peer **ret_peer, int64_t *ret_serial, cp_error *reterr) {
        const char *key[1] = { hash };
        int r;

        if (req->proxy_account_id) {
                _cleanup_pgresult_ PGresult *res = NULL;
                const char *acc[1] = { req->proxy_account_id };
                r = cp_store__exec(c, ST_PROXY_PEER_ACCOUNT_LOCK, acc, &res, reterr);
                if (r < 0)
                        return r;
                if (PQntuples(res) != 1)
                        return cp_error_set(reterr, -ENOENT, "account %s not found", req->proxy_account_id);
                (void) snprintf(k->account_id, sizeof k->account_id, "%s", req->proxy_account_id);
                k->ephemeral = true;
                k->proxy = true;
                k->name = cp_xstrdup("");
                return register_claimed(c, req, k, mp, labels_literal, base_label, ret_peer, ret_serial, reterr);
        }
        if (req->user_id) {
                r = claim_user(c, req->user_id, k, reterr);
                if (r < 0)
                        return r;
                return register_claimed(c, req, k, mp, labels_literal, base_label, ret_peer, ret_serial,
                                        reterr);
        }

        /* Account first, then the key: the order REST writers use. */
        r = cp_store__exec(c, ST_SETUP_KEY_ACCOUNT_LOCK, key, NULL, reterr);
        if (r < 0)
                return r;
        r = claim_key(c, hash, k, reterr);
        if (r < 0)
                return r;
        return register_claimed(c, req, k, mp, labels_literal, base_label, ret_peer, ret_serial, reterr);
}

int cp_store_peer_register(cp_store *s, const cp_store_peer_register_req *req,
                           cp_store_peer **ret_peer, int64_t *ret_serial, cp_error *reterr) {
        char hash[CP_SHA256_B64_LEN] = "", base_label[CP_STORE_DNS_LABEL_MAX + 1];
        cp_store_peer *peer = NULL;
        meta_params mp;
        cp_strbuf labels;
        cp_store_conn *c;
        int64_t serial = 0;
        int r;

        if (!req || !req->meta)
                return cp_error_set(reterr, -EINVAL, "peer system meta is required");
        if (!req->wg_pub_key || !*req->wg_pub_key)
                return cp_error_set(reterr, -EINVAL, "peer key is required");
        if (req->connection_ip && !valid_ip(req->connection_ip))
                return cp_error_set(reterr, -EINVAL, "invalid connection address \"%s\"", req->connection_ip);
        if (cp_store_dns_label_from_hostname(req->meta->hostname, base_label) <= 0)
                return cp_error_set(reterr, -EINVAL, "hostname \"%s\" gives no DNS label",
                                    cp_store__nz(req->meta->hostname));
        /* A key that cannot even be hashed is as invalid as an unknown one. */
        if (req->proxy_account_id ? !*req->proxy_account_id
            : req->user_id ? !*req->user_id
                           : !req->setup_key || cp_crypto_setup_key_hash(req->setup_key, hash) < 0)
                return cp_error_set(reterr, req->user_id || req->proxy_account_id ? -EINVAL : -ENOKEY,
                                    req->proxy_account_id ? "account id is empty"
                                    : req->user_id ? "user id is empty" : "setup key is invalid");

        cp_strbuf_init(&labels);
        r = extra_labels_literal(req->extra_dns_labels, req->n_extra_dns_labels, &labels, reterr);
        if (r < 0) {
                cp_strbuf_release(&labels);
                return r;
        }
        r = meta_params_build(req->meta, &mp, reterr);
        if (r < 0)
                goto out;

        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                goto out;
        claimed_key k = { 0 };
        r = begin(c, reterr);
        if (r >= 0)
                r = register_tx(c, req, hash, &mp, labels.buf, base_label, &k, &peer, &serial, reterr);
        r = finish(c, r, reterr);
        if (r == -EDQUOT)
                cp_store__peer_limit_event(c, k.account_id, k.user_id ? k.user_id : k.id,
                                           req->meta->hostname, k.device_limit);
        free(k.name);
        cp_store__release(s, c);
        if (r < 0) {
                peer = cp_store_peer_free(peer);
                goto out;
        }
        if (ret_peer)
                *ret_peer = TAKE_PTR(peer);
        else
                peer = cp_store_peer_free(peer);
        if (ret_serial)
                *ret_serial = serial;
out:
        meta_params_release(&mp);
        cp_strbuf_release(&labels);
        cp_explicit_bzero(hash, sizeof hash);
        return r;
}

/* ---- serials of many accounts ---------------------------------------------------- */

int cp_store_account_serials(cp_store *s, const char *const *ids, size_t n, int64_t *ret_serials,
                             cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        cp_strbuf arr;
        cp_store_conn *c;
        int r;

        if (n == 0)
                return 0;
        if (!ids || !ret_serials)
                return cp_error_set(reterr, -EINVAL, "account ids and a result array are required");
        /* A text[] literal: every element quoted, '"' and '\\' escaped. */
        cp_strbuf_init(&arr);
        cp_strbuf_addch(&arr, '{');
        for (size_t i = 0; i < n; i++) {
                if (!ids[i]) {
                        cp_strbuf_release(&arr);
                        return cp_error_set(reterr, -EINVAL, "account id %zu is NULL", i);
                }
                if (i > 0)
                        cp_strbuf_addch(&arr, ',');
                cp_strbuf_addch(&arr, '"');
                for (const char *p = ids[i]; *p; p++) {
                        if (*p == '"' || *p == '\\')
                                cp_strbuf_addch(&arr, '\\');
                        cp_strbuf_addch(&arr, *p);
                }
                cp_strbuf_addch(&arr, '"');
        }
        cp_strbuf_addch(&arr, '}');

        r = cp_store__acquire(s, &c, reterr);
        if (r >= 0) {
                const char *params[1] = { arr.buf };
                r = cp_store__exec(c, ST_ACCOUNT_SERIALS, params, &res, reterr);
                cp_store__release(s, c);
        }
        cp_strbuf_release(&arr);
        if (r < 0)
                return r;
        if ((size_t) PQntuples(res) != n)
                return cp_error_set(reterr, -EIO, "account serials: %d rows for %zu ids", PQntuples(res), n);
        for (size_t i = 0; i < n; i++)
                ret_serials[i] = PQgetisnull(res, (int) i, 0) ? -1 : strtoll(PQgetvalue(res, (int) i, 0), NULL, 10);
        return 0;
}

/* ---- login update and fenced connect ------------------------------------------------- */

/* The connection's location as three parameters (country, city, geoname
 * id, written into gid), all NULL when it is unknown: the connect and the
 * open keep the stored location then. */
static void location_params(const cp_store_peer_location *loc, char gid[24], const char **params) {
        params[0] = params[1] = params[2] = NULL;
        if (!loc)
                return;
        (void) snprintf(gid, 24, "%" PRId64, loc->geoname_id);
        params[0] = cp_store__nz(loc->country_code);
        params[1] = cp_store__nz(loc->city_name);
        params[2] = gid;
}

/* Both statements take the meta as $6..$24, NULL = keep what is stored.
 * mp is built from meta (when there is one) and released by the caller
 * in every case. */
static int meta_params_or_keep(const cp_store_peer_meta *meta, meta_params *mp, const char **params,
                               cp_error *reterr) {
        int r;

        if (!meta) {
                meta_params_init(mp);
                for (size_t i = 0; i < ELEMENTSOF(mp->v); i++)
                        params[i] = NULL;
                return 0;
        }
        r = meta_params_build(meta, mp, reterr);
        if (r < 0)
                return r;
        memcpy(params, mp->v, sizeof mp->v);
        return 0;
}

/* A boolean result column; NULL (no UPDATE row) reads as false. */
static bool flag(const PGresult *res, int col) {
        return !PQgetisnull(res, 0, col) && cp_store__col_bool(res, col);
}

int cp_store_peer_login_update(cp_store *s, const char *account_id, const char *peer_id,
                               const cp_store_peer_login_req *req, unsigned *ret_changed,
                               int64_t *ret_serial, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[24];
        meta_params mp;
        unsigned changed = 0;
        int r;

        if (!account_id || !peer_id || !req)
                return cp_error_set(reterr, -EINVAL, "account id, peer id and request are required");
        if (req->connection_ip && !valid_ip(req->connection_ip))
                return cp_error_set(reterr, -EINVAL, "invalid connection address \"%s\"", req->connection_ip);
        params[0] = account_id;
        params[1] = peer_id;
        params[2] = req->ssh_key && *req->ssh_key ? req->ssh_key : NULL;
        params[3] = req->connection_ip;
        params[4] = req->n_extra_dns_labels > 0 ? "true" : "false";
        r = meta_params_or_keep(req->meta, &mp, params + 5, reterr);
        if (r >= 0)
                r = cp_store__run(s, ST_PEER_LOGIN_UPDATE, params, &res, reterr);
        meta_params_release(&mp);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "peer %s not found in account %s", peer_id, account_id);
        if (req->n_extra_dns_labels > 0 && !cp_store__col_bool(res, 0))
                return cp_error_set(reterr, -EPERM, "setup key doesn't allow extra DNS labels");
        if (flag(res, 1))
                changed |= CP_STORE_PEER_CHANGED_META;
        if (flag(res, 2))
                changed |= CP_STORE_PEER_CHANGED_WT_VERSION;
        if (flag(res, 3))
                changed |= CP_STORE_PEER_CHANGED_SSH_KEY;
        if (flag(res, 4))
                changed |= CP_STORE_PEER_CHANGED_CONN_IP;
        if (flag(res, 6))
                changed |= CP_STORE_PEER_CHANGED_POSTURE;
        if (changed & (CP_STORE_PEER_CHANGED_SSH_KEY | CP_STORE_PEER_CHANGED_WT_VERSION |
                       CP_STORE_PEER_CHANGED_POSTURE))
                changed |= CP_STORE_PEER_CHANGED_SERIAL;
        if (ret_changed)
                *ret_changed = changed;
        if (ret_serial)
                *ret_serial = cp_store__col_int64(res, 5);
        return 0;
}

int cp_store_peer_connect(cp_store *s, const char *account_id, const char *peer_id,
                          const cp_store_peer_connect_req *req, unsigned *ret_changed, int64_t *ret_serial,
                          cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[28], *vparams[27];
        char tok[24], gid[24];
        meta_params mp;
        unsigned changed = 0;
        int64_t serial = 0;
        cp_store_conn *c;
        int r;

        if (!account_id || !peer_id || !req)
                return cp_error_set(reterr, -EINVAL, "account id, peer id and request are required");
        /* Tokens are positive: 0 means "no session" and is the oldest. */
        if (req->token <= 0)
                return cp_error_set(reterr, -EINVAL, "session token must be positive, got %" PRId64, req->token);
        if (req->connection_ip && !valid_ip(req->connection_ip))
                return cp_error_set(reterr, -EINVAL, "invalid connection address \"%s\"", req->connection_ip);
        (void) snprintf(tok, sizeof tok, "%" PRId64, req->token);
        params[0] = account_id;
        params[1] = peer_id;
        params[2] = tok;
        params[3] = s->replica_id;
        params[4] = req->connection_ip;
        r = meta_params_or_keep(req->meta, &mp, params + 5, reterr);
        if (r < 0)
                goto out;
        /* The location: $26..$28 of the plain connect, $25..$27 of the
         * other. */
        location_params(req->location, gid, params + 25);
        memcpy(vparams, params, 24 * sizeof *params);
        memcpy(vparams + 24, params + 25, 3 * sizeof *params);
        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                goto out;
        /* Without meta, or with the version the caller expects stored, the
         * plain fenced UPDATE is enough: the version cannot change, so
         * neither can the serial. It is guarded by that version (and by
         * "no posture input changes while the account has posture
         * checks"), so when the row changed meanwhile, a posture input
         * changes, or the connect is stale, it lands nowhere and the
         * statement that compares under the lock decides
         * (a second fenced attempt: it lands only if the token is still
         * the newest then, as a connect that came that much later). */
        bool plain = !req->meta || (req->expect_wt_version && strcmp(req->expect_wt_version, mp.v[7]) == 0);
        if (plain) {
                params[24] = req->meta ? mp.v[7] : NULL;
                r = cp_store__exec(c, ST_PEER_CONNECT, params, &res, reterr);
                if (r >= 0)
                        r = cp_store__affected(res) > 0 ? 1 : 0;
        }
        if (!plain || r == 0) {
                PQclear(TAKE_PTR(res));
                r = cp_store__exec(c, ST_PEER_CONNECT_VERSION, vparams, &res, reterr);
                if (r >= 0 && PQntuples(res) == 1) {
                        if (cp_store__col_bool(res, 0))
                                changed = CP_STORE_PEER_CHANGED_WT_VERSION | CP_STORE_PEER_CHANGED_SERIAL;
                        if (cp_store__col_bool(res, 2))
                                changed |= CP_STORE_PEER_CHANGED_POSTURE | CP_STORE_PEER_CHANGED_SERIAL;
                        serial = cp_store__col_int64(res, 1);
                        r = 1;
                } else if (r >= 0)
                        r = 0;
        }
        cp_store__release(s, c);
        if (r < 0)
                goto out;
        cp_store__fenced(true, r == 1);
        if (ret_changed)
                *ret_changed = changed;
        if (ret_serial)
                *ret_serial = changed ? serial : 0;
out:
        meta_params_release(&mp);
        return r;
}

int cp_store_peer_open(cp_store *s, const cp_store_peer_open_req *req, cp_store_peer_opened *ret,
                       cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[27];
        char now_us[24], gid[24];
        meta_params mp;
        int r;

        if (!req || !req->wg_pub_key || !*req->wg_pub_key || !ret)
                return cp_error_set(reterr, -EINVAL, "peer key and result are required");
        if (req->connection_ip && !valid_ip(req->connection_ip))
                return cp_error_set(reterr, -EINVAL, "invalid connection address \"%s\"", req->connection_ip);
        (void) snprintf(now_us, sizeof now_us, "%" PRId64, req->now_unix_ns / 1000);
        params[0] = req->wg_pub_key;
        params[2] = now_us;
        params[3] = s->replica_id;
        params[4] = req->connection_ip;
        r = meta_params_or_keep(req->meta, &mp, params + 5, reterr);
        if (r < 0)
                goto out;
        /* The version the meta carries, which must be the stored one;
         * no meta: the stored meta is kept, so is the version. */
        params[1] = req->meta ? mp.v[7] : NULL;
        location_params(req->location, gid, params + 24);
        r = cp_store__run(s, ST_PEER_OPEN, params, &res, reterr);
        if (r < 0)
                goto out;
        r = PQntuples(res) == 1 ? 1 : 0;
        if (r == 1) {
                (void) snprintf(ret->peer_id, sizeof ret->peer_id, "%s", PQgetvalue(res, 0, 0));
                (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", PQgetvalue(res, 0, 1));
                ret->token = cp_store__col_int64(res, 2);
                ret->network_serial = cp_store__col_int64(res, 3);
                cp_store__fenced(true, true);
        }
out:
        meta_params_release(&mp);
        return r;
}

/* ---- logout ------------------------------------------------------------------------ */

int cp_store_peer_delete(cp_store *s, const char *account_id, const char *peer_id,
                         const char *initiator_id, const char *dns_domain, int64_t *ret_serial,
                         cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        char code[12];
        const char *params[5] = { account_id, peer_id, initiator_id, cp_store__nz(dns_domain), code };
        int64_t serial = 0;
        cp_store_conn *c;
        int r;

        if (!account_id || !peer_id)
                return cp_error_set(reterr, -EINVAL, "account and peer id are required");
        (void) snprintf(code, sizeof code, "%d", ACTIVITY_PEER_REMOVED_BY_USER);

        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                return r;
        r = begin(c, reterr);
        if (r >= 0)
                r = cp_store__exec(c, ST_PEER_DELETE, params, &res, reterr);
        if (r >= 0 && PQntuples(res) != 1)
                r = cp_error_set(reterr, -ENOENT, "peer %s not found in account %s", peer_id, account_id);
        if (r >= 0)
                r = serial_bump(c, account_id, &serial, reterr);
        r = finish(c, r, reterr);
        cp_store__release(s, c);
        if (r >= 0 && ret_serial)
                *ret_serial = serial;
        return r;
}

/* ---- inside a caller's transaction ------------------------------------------------ */

/* Runs st on tx's connection; a failure aborts tx (cp/store-tx.h). */
static int tx_exec(cp_store_tx *tx, cp_store_stmt st, const char *const *params, PGresult **res,
                   cp_error *reterr) {
        cp_store_conn *c = cp_store__tx_conn(tx);
        int r;

        if (!c)
                return cp_error_set(reterr, -ECANCELED, "the transaction was aborted by an earlier error");
        r = cp_store__exec(c, st, params, res, reterr);
        if (r < 0)
                cp_store__tx_failed(tx);
        return r;
}

int cp_store_tx_peer_delete(cp_store_tx *tx, const char *account_id, const char *peer_id,
                            const char *initiator_id, const char *dns_domain, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        char code[12];
        int r;

        if (!account_id || !peer_id || !initiator_id)
                return cp_error_set(reterr, -EINVAL, "account, peer and initiator ids are required");
        (void) snprintf(code, sizeof code, "%d", ACTIVITY_PEER_REMOVED_BY_USER);
        const char *params[5] = { account_id, peer_id, initiator_id, cp_store__nz(dns_domain), code };
        r = tx_exec(tx, ST_PEER_DELETE, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "peer %s not found in account %s", peer_id, account_id);
        return 0;
}

int cp_store_tx_peer_event(cp_store_tx *tx, int activity, const char *account_id, const char *peer_id,
                           const char *initiator_id, const char *target_id, const char *dns_domain,
                           const char *extra_meta, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        char code[12];
        int r;

        if (!account_id || !peer_id || !initiator_id)
                return cp_error_set(reterr, -EINVAL, "account, peer and initiator ids are required");
        (void) snprintf(code, sizeof code, "%d", activity);
        const char *params[7] = { code, initiator_id, account_id, peer_id, cp_store__nz(dns_domain),
                                  extra_meta ? extra_meta : "{}", target_id };
        r = tx_exec(tx, ST_PEER_EVENT, params, &res, reterr);
        if (r < 0)
                return r;
        if (cp_store__affected(res) != 1)
                return cp_error_set(reterr, -ENOENT, "peer %s not found in account %s", peer_id, account_id);
        return 0;
}
