/*
 * netmap show: the SyncResponse a peer would get, computed fresh from the
 * database with the replicas' own map code (cp_netmap_load, then
 * cp_netmap_encode_sync as a fan-out push encodes it: no netbirdConfig,
 * no JWTConfig). No replica and no cache is involved, so the convergence
 * checker (tests/converge) compares what agents hold with this.
 *
 * Output: one line per peer, "<peer id> <serial> <base64 SyncResponse>",
 * or with --json an object {account, serial, peers: [{peer_id, peer_key,
 * sync_response}]}. --peer limits it to one peer.
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/netmap.h"
#include "admin.h"

static char *b64_dup(const uint8_t *data, size_t len) {
        size_t n = cp_crypto_b64_len(len);
        char *out = cp_xmalloc(n);

        cp_crypto_b64_encode(data, len, out, n);
        return out;
}

static int print_peer(cp_netmap_worker *w, const cp_netmap_account *acc, size_t idx, json_t *arr) {
        const uint8_t *data;
        size_t len;
        char *b64;
        int r;

        r = cp_netmap_encode_sync(w, acc, idx, NULL, &data, &len, NULL);
        if (r < 0)
                return admin_fail(ADMIN_EXIT_FAILURE, NULL, "cannot encode the map of peer %s: %s",
                                  cp_netmap_account_peer_id(acc, idx), strerror(-r));
        b64 = b64_dup(data, len);
        if (arr)
                (void) json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "peer_id",
                                                            cp_netmap_account_peer_id(acc, idx), "peer_key",
                                                            cp_netmap_account_peer_key(acc, idx),
                                                            "sync_response", b64));
        else
                printf("%s %" PRIu64 " %s\n", cp_netmap_account_peer_id(acc, idx), cp_netmap_account_serial(acc),
                       b64);
        free(b64);
        return 0;
}

int admin_cmd_netmap_show(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        cp_netmap_account *acc = NULL;
        cp_netmap_worker *w = NULL;
        json_t *arr = NULL;
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r;

        if (!o->account) {
                fprintf(stderr, ADMIN_PROG ": error: --account is required\n");
                return ADMIN_EXIT_USAGE;
        }
        r = admin_open_store(a, false, NULL, &s);
        if (r != 0)
                return r;
        r = cp_netmap_load(s, o->account, a->cfg->dns_domain, &acc, &err);
        if (r < 0) {
                r = admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot read the map of account %s", o->account);
                goto out;
        }
        w = cp_netmap_worker_new();
        arr = o->json ? json_array() : NULL;
        if (o->peer) {
                int64_t idx = cp_netmap_account_find_peer(acc, o->peer);
                if (idx < 0) {
                        r = admin_fail(ADMIN_EXIT_FAILURE, NULL, "peer %s is not in account %s", o->peer,
                                       o->account);
                        goto out;
                }
                r = print_peer(w, acc, (size_t) idx, arr);
        } else
                for (size_t i = 0; i < cp_netmap_account_n_peers(acc) && r == 0; i++)
                        r = print_peer(w, acc, i, arr);
        if (r != 0)
                goto out;
        if (arr) {
                json_t *doc = json_pack("{s:s, s:I, s:O}", "account", o->account, "serial",
                                        (json_int_t) cp_netmap_account_serial(acc), "peers", arr);
                char *text = json_dumps(doc, JSON_COMPACT);
                puts(text);
                free(text);
                json_decref(doc);
        }
        r = admin_finish_stdout();
out:
        json_decref(arr);
        (void) cp_netmap_worker_free(w);
        (void) cp_netmap_account_unref(acc);
        cp_store_free(s);
        return r;
}
