/*
 * Commands that talk to the store directly: migrate, account create and
 * the operator views (accounts, sessions, replicas), which read the
 * runbook views of migration 0003 (docs/ops.md).
 */
#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/log.h"
#include "cp/store-pii.h"
#include "cp/strbuf.h"
#include "admin.h"

static const cp_log_ctx log_ctx = { .component = "admin" };

/* Timestamps in the JSON the views give: UTC, milliseconds, "Z". */
#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

int admin_cmd_migrate(const admin_ctx *a) {
        cp_store_migrate_result mr = { 0 };
        cp_store *s = NULL;
        cp_strbuf out;
        int r;

        r = admin_open_store(a, true, &mr, &s);
        if (r != 0)
                return r;
        cp_store_free(s);
        cp_strbuf_init(&out);
        cp_store_migrate_report(&mr, &out);
        fputs(out.buf, stdout);
        cp_strbuf_release(&out);
        return admin_finish_stdout();
}

/* The same transaction and output as `netbird-mgmt bootstrap`
 * (cp_store_account_create, cp_store_account_env); with --if-none it is
 * that command exactly: nothing is created or printed when an account
 * exists. Applies migrations first, like bootstrap, so a fresh database
 * needs one command. */
int admin_cmd_account_create(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        cp_store_account_created out;
        cp_error err = { 0 };
        cp_store *s = NULL;
        cp_strbuf env;
        int r;

        if (o->setup_key_ttl_ms % 1000 != 0) {
                fprintf(stderr, ADMIN_PROG ": error: invalid value for --setup-key-ttl: whole seconds only\n");
                return ADMIN_EXIT_USAGE;
        }
        r = admin_open_store(a, true, NULL, &s);
        if (r != 0)
                return r;
        {
                /* The owner's name is sealed when the deployment's key is
                 * given and matches the data; else the replicas seal it. */
                uint8_t key[32], prev[32];
                int k = cp_config_encryption_key(a->cfg, key), p = cp_config_encryption_key_previous(a->cfg, prev);
                r = cp_store_pii_tool_keys(s, k == 1 ? key : NULL, p == 1 ? prev : NULL, &err);
                cp_explicit_bzero(key, sizeof key);
                cp_explicit_bzero(prev, sizeof prev);
                if (r < 0) {
                        cp_store_free(s);
                        return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot create the account");
                }
        }
        cp_store_account_spec spec = {
                .name = o->owner_name,
                .domain = o->domain,
                .dns_domain = o->account_dns_domain,
                .setup_key_ttl_s = o->setup_key_ttl_ms / 1000,
                .only_if_none = o->if_none,
        };
        r = cp_store_account_create(s, &spec, &out, &err);
        cp_store_free(s);
        cp_pii_uninstall();
        if (r == -EEXIST && o->if_none) {
                cp_log(&log_ctx, CP_LOG_WARN, "an account already exists; created nothing (--if-none)");
                return ADMIN_EXIT_OK;
        }
        if (r < 0)
                return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot create the account");
        cp_log_kv(&log_ctx, CP_LOG_INFO, "account created", "account", out.account_id, "user", out.user_id,
                  "network", out.network_cidr, NULL);
        cp_strbuf_init(&env);
        cp_store_account_env(&out, &env);
        cp_explicit_bzero(&out, sizeof out);
        fputs(env.buf, stdout);
        cp_explicit_bzero(env.buf, env.len);
        cp_strbuf_release(&env);
        return admin_finish_stdout();
}

/* Runs a JSON query and prints it as a table (or JSON). */
static int list(const admin_ctx *a, const char *sql, int n, const char *const *params,
                const admin_column *cols, size_t n_cols) {
        cp_store *s = NULL;
        json_t *rows = NULL;
        int r;

        r = admin_open_store(a, false, NULL, &s);
        if (r != 0)
                return r;
        r = admin_query_json(s, sql, n, params, &rows);
        cp_store_free(s);
        if (r != 0)
                return r;
        admin_print_rows(rows, cols, n_cols, a->opts->json);
        json_decref(rows);
        return admin_finish_stdout();
}

/* Every account with its owner and peer counts. Deployment-wide on
 * purpose: this is the operator's list of tenants. */
static const char SQL_ACCOUNTS[] =
        "SELECT coalesce(json_agg(t ORDER BY t.created_at, t.id), '[]') FROM ("
        " SELECT a.id, a.domain, " TS("a.created_at") " AS created_at,"
        "  (SELECT u.id FROM users u WHERE u.account_id = a.id AND u.role = 'owner'"
        "    ORDER BY u.created_at, u.id LIMIT 1) AS owner_user_id,"
        "  v.network_serial AS serial, v.peers, v.connected"
        " FROM accounts a JOIN cp_peers_connected_by_account v ON v.account_id = a.id) t";

int admin_cmd_account_list(const admin_ctx *a) {
        static const admin_column cols[] = {
                { "ID", "id" }, { "DOMAIN", "domain" }, { "OWNER", "owner_user_id" },
                { "PEERS", "peers" }, { "CONNECTED", "connected" }, { "SERIAL", "serial" },
                { "CREATED", "created_at" },
        };
        return list(a, SQL_ACCOUNTS, 0, NULL, cols, ELEMENTSOF(cols));
}

/* Peers marked connected: their session token (Sync stream open time by
 * the database clock), last_seen and the replica holding the stream;
 * "stale" says why cp_stale_sessions lists it (owner gone or silent). */
static const char SQL_SESSIONS[] =
        "SELECT coalesce(json_agg(t ORDER BY t.account_id, t.name, t.peer_id), '[]') FROM ("
        " SELECT p.account_id, p.id AS peer_id, p.name, host(p.ip) AS ip,"
        "  p.peer_status_session_started_at::text AS session_token,"
        "  " TS("p.peer_status_last_seen") " AS last_seen,"
        "  p.peer_status_replica_id AS replica_id, r.name AS replica_name, r.state AS replica_state,"
        "  s.reason AS stale"
        " FROM peers p LEFT JOIN cp_replicas r ON r.id = p.peer_status_replica_id"
        " LEFT JOIN cp_stale_sessions s ON s.account_id = p.account_id AND s.peer_id = p.id"
        " WHERE p.peer_status_connected AND ($1::text IS NULL OR p.account_id = $1)) t";

int admin_cmd_sessions_list(const admin_ctx *a) {
        static const admin_column cols[] = {
                { "ACCOUNT", "account_id" }, { "PEER", "peer_id" }, { "NAME", "name" }, { "IP", "ip" },
                { "SESSION", "session_token" }, { "LAST_SEEN", "last_seen" }, { "REPLICA", "replica_id" },
                { "REPLICA_NAME", "replica_name" }, { "STALE", "stale" },
        };
        const char *p[1] = { a->opts->account };
        return list(a, SQL_SESSIONS, 1, p, cols, ELEMENTSOF(cols));
}

static const char SQL_REPLICAS[] =
        "SELECT coalesce(json_agg(t ORDER BY t.name, t.id), '[]') FROM ("
        " SELECT id, name, state, (extract(epoch FROM heartbeat_age) * 1000)::bigint AS heartbeat_age_ms,"
        "  sessions, grpc_address, http_address, version, pid, " TS("started_at") " AS started_at"
        " FROM cp_replicas) t";

int admin_cmd_replicas_list(const admin_ctx *a) {
        static const admin_column cols[] = {
                { "ID", "id" }, { "NAME", "name" }, { "STATE", "state" }, { "HEARTBEAT_AGE_MS", "heartbeat_age_ms" },
                { "SESSIONS", "sessions" }, { "GRPC", "grpc_address" }, { "HTTP", "http_address" },
                { "VERSION", "version" }, { "STARTED", "started_at" },
        };
        return list(a, SQL_REPLICAS, 0, NULL, cols, ELEMENTSOF(cols));
}
