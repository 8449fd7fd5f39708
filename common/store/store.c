#include "cp/base.h"
#include "store-int.h"

/* Every statement the store prepares, by cp_store_stmt. Parameters are
 * passed as text; PostgreSQL infers their types from the statement. */
static const struct {
        const char *name;
        const char *sql;
        int nparams;
} statements[_ST_MAX] = {
        [ST_PING] = { "ping", "SELECT 1", 0 },

        /* Fenced status: one UPDATE each, netbird-protocol.md section 5.2. */
        [ST_PEER_CONNECT] = { "peer_connect",
                "UPDATE peers SET peer_status_connected = TRUE,"
                " peer_status_last_seen = CURRENT_TIMESTAMP,"
                " peer_status_session_started_at = $3::bigint,"
                " peer_status_login_expired = FALSE"
                " WHERE account_id = $1 AND id = $2"
                " AND peer_status_session_started_at < $3::bigint", 3 },
        [ST_PEER_DISCONNECT] = { "peer_disconnect",
                "UPDATE peers SET peer_status_connected = FALSE,"
                " peer_status_last_seen = CURRENT_TIMESTAMP,"
                " peer_status_session_started_at = 0"
                " WHERE account_id = $1 AND id = $2"
                " AND peer_status_session_started_at = $3::bigint", 3 },
        [ST_PEER_STATUS] = { "peer_status",
                "SELECT peer_status_connected, peer_status_login_expired,"
                " peer_status_requires_approval, peer_status_session_started_at,"
                " COALESCE((EXTRACT(EPOCH FROM peer_status_last_seen) * 1000000)::bigint, 0)"
                " FROM peers WHERE account_id = $1 AND id = $2", 2 },

        [ST_ACCOUNT_COUNT] = { "account_count", "SELECT count(*) FROM accounts", 0 },
        [ST_ACCOUNT_INSERT] = { "account_insert",
                "INSERT INTO accounts (id, created_by, domain, network_identifier, network_net,"
                " network_serial, settings_dns_domain)"
                " VALUES ($1, $2, $3, $4, $5::cidr, 0, $6)", 6 },
        [ST_GROUP_INSERT] = { "group_insert",
                "INSERT INTO groups (id, account_id, name, issued) VALUES ($1, $2, $3, $4)", 4 },
        [ST_POLICY_INSERT] = { "policy_insert",
                "INSERT INTO policies (id, account_id, name, description, enabled)"
                " VALUES ($1, $2, $3, $4, $5::boolean)", 5 },
        [ST_POLICY_RULE_INSERT] = { "policy_rule_insert",
                "INSERT INTO policy_rules (id, policy_id, account_id, name, description, enabled,"
                " action, bidirectional, protocol, sources, destinations)"
                " VALUES ($1, $2, $3, $4, $5, $6::boolean, $7, $8::boolean, $9,"
                " $10::text[], $11::text[])", 11 },
        [ST_USER_INSERT] = { "user_insert",
                "INSERT INTO users (id, account_id, role, is_service_user, non_deletable,"
                " service_user_name, name, issued)"
                " VALUES ($1, $2, $3, $4::boolean, $5::boolean, $6, $7, 'api')", 7 },
        [ST_PAT_INSERT] = { "pat_insert",
                "INSERT INTO personal_access_tokens (id, account_id, user_id, name, hashed_token,"
                " expiration_date, created_by)"
                " VALUES ($1, $2, $3, $4, $5,"
                " CURRENT_TIMESTAMP + make_interval(days => $6::int), $7)", 7 },
        [ST_SETUP_KEY_INSERT] = { "setup_key_insert",
                "INSERT INTO setup_keys (id, account_id, key, key_secret, name, type, expires_at,"
                " usage_limit, auto_groups, ephemeral)"
                " VALUES ($1, $2, $3, $4, $5, $6,"
                " CASE WHEN $7::bigint > 0 THEN CURRENT_TIMESTAMP + make_interval(secs => $7::bigint)"
                " END, $8::int, $9::text[], $10::boolean)", 10 },
        [ST_EVENT_INSERT] = { "event_insert",
                "INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " VALUES ($1::int, $2, $3, $4, $5::jsonb)", 5 },

        /* Server key pair (store-serverkey.c): first writer wins, all read. */
        [ST_SERVER_KEY_GET] = { "server_key_get",
                "SELECT public_key, private_key_enc FROM server_keys WHERE purpose = $1", 1 },
        [ST_SERVER_KEY_INSERT] = { "server_key_insert",
                "INSERT INTO server_keys (purpose, public_key, private_key_enc) VALUES ($1, $2, $3)"
                " ON CONFLICT (purpose) DO NOTHING", 3 },
};

int cp_store__error(PGconn *pg, const PGresult *res, cp_error *reterr) {
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        int code = -EIO;

        if (pg && PQstatus(pg) != CONNECTION_OK)
                code = -ECONNRESET;
        else if (state && strcmp(state, "23505") == 0)
                code = -EEXIST;
        else if (state && strcmp(state, "23503") == 0)
                code = -ENOENT;
        else if (state && (strcmp(state, "23514") == 0 || strcmp(state, "23502") == 0 ||
                           strncmp(state, "22", 2) == 0))
                code = -EINVAL;
        else if (state && strncmp(state, "08", 2) == 0)
                code = -ECONNRESET;

        if (!reterr)
                return code;
        const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        if (!msg || !*msg)
                msg = pg ? PQerrorMessage(pg) : "no connection";
        cp_error_set(reterr, code, "%s", msg);
        /* libpq messages end in a newline; logs are one line each. */
        size_t n = strlen(reterr->message);
        while (n > 0 && (reterr->message[n - 1] == '\n' || reterr->message[n - 1] == ' '))
                reterr->message[--n] = '\0';
        if (state)
                (void) snprintf(reterr->sqlstate, sizeof reterr->sqlstate, "%s", state);
        const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
        const char *hint = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
        if (detail)
                cp_error_detail(reterr, "%s", detail);
        if (hint)
                cp_error_hint(reterr, "%s", hint);
        return code;
}

int64_t cp_store__affected(const PGresult *res) {
        const char *n = PQcmdTuples((PGresult *) res);
        return n && *n ? strtoll(n, NULL, 10) : 0;
}

/* libpq prints NOTICEs to stderr by default; a library must not write to
 * the process's streams, and the notices carry nothing we act on. */
static void drop_notice(void *arg, const char *message) {
}

static int conn_open(cp_store *s, cp_store_conn *c, cp_error *reterr) {
        PGconn *pg = PQconnectdb(s->dsn);

        if (PQstatus(pg) != CONNECTION_OK) {
                int r = cp_store__error(pg, NULL, reterr);
                cp_error_prefix(reterr, "cannot connect to PostgreSQL");
                PQfinish(pg);
                return r;
        }
        PQsetNoticeProcessor(pg, drop_notice, NULL);
        c->pg = pg;
        memset(c->prepared, 0, sizeof c->prepared);
        return 0;
}

static void conn_close(cp_store_conn *c) {
        if (c->pg)
                PQfinish(c->pg);
        c->pg = NULL;
        memset(c->prepared, 0, sizeof c->prepared);
}

int cp_store_open(const char *dsn, unsigned pool_size, cp_store **ret, cp_error *reterr) {
        cp_store *s;
        cp_store_conn *c;
        int r;

        if (!dsn || !*dsn)
                return cp_error_set(reterr, -EINVAL, "no PostgreSQL DSN given");
        if (pool_size < 1 || pool_size > 256)
                return cp_error_set(reterr, -EINVAL, "pool size %u out of range 1..256", pool_size);

        s = cp_xcalloc(1, sizeof *s);
        s->dsn = cp_xstrdup(dsn);
        s->size = pool_size;
        s->conns = cp_xcalloc(pool_size, sizeof *s->conns);
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->cond, NULL);

        /* Connect one now so a bad DSN or a down server fails here. */
        r = cp_store__acquire(s, &c, reterr);
        if (r < 0) {
                cp_store_free(s);
                return r;
        }
        cp_store__release(s, c);
        *ret = s;
        return 0;
}

cp_store *cp_store_free(cp_store *s) {
        if (!s)
                return NULL;
        for (unsigned i = 0; i < s->size; i++)
                conn_close(&s->conns[i]);
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
        cp_explicit_bzero(s->dsn, strlen(s->dsn));
        free(s->dsn);
        free(s->conns);
        free(s);
        return NULL;
}

int cp_store__acquire(cp_store *s, cp_store_conn **ret, cp_error *reterr) {
        cp_store_conn *c = NULL;

        pthread_mutex_lock(&s->lock);
        for (;;) {
                /* Prefer a live connection, then any free slot. */
                for (unsigned i = 0; i < s->size && !c; i++)
                        if (!s->conns[i].in_use && s->conns[i].pg)
                                c = &s->conns[i];
                for (unsigned i = 0; i < s->size && !c; i++)
                        if (!s->conns[i].in_use)
                                c = &s->conns[i];
                if (c)
                        break;
                pthread_cond_wait(&s->cond, &s->lock);
        }
        c->in_use = true;
        pthread_mutex_unlock(&s->lock);

        /* Connecting happens outside the lock; the slot is ours. */
        if (c->pg && PQstatus(c->pg) != CONNECTION_OK)
                conn_close(c);
        if (!c->pg) {
                int r = conn_open(s, c, reterr);
                if (r < 0) {
                        cp_store__release(s, c);
                        return r;
                }
        }
        *ret = c;
        return 0;
}

void cp_store__release(cp_store *s, cp_store_conn *c) {
        /* A connection left inside a transaction or broken is not reused. */
        if (c->pg && (PQstatus(c->pg) != CONNECTION_OK ||
                      PQtransactionStatus(c->pg) != PQTRANS_IDLE))
                conn_close(c);
        pthread_mutex_lock(&s->lock);
        c->in_use = false;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
}

static int prepare(cp_store_conn *c, cp_store_stmt st, cp_error *reterr) {
        PGresult *res;
        int r = 0;

        if (c->prepared[st])
                return 0;
        res = PQprepare(c->pg, statements[st].name, statements[st].sql, statements[st].nparams, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                r = cp_store__error(c->pg, res, reterr);
                cp_error_prefix(reterr, "preparing %s", statements[st].name);
        } else
                c->prepared[st] = true;
        PQclear(res);
        return r;
}

int cp_store__exec(cp_store_conn *c, cp_store_stmt st, const char *const *params,
                   PGresult **ret, cp_error *reterr) {
        PGresult *res;
        int r;

        r = prepare(c, st, reterr);
        if (r < 0)
                return r;
        res = PQexecPrepared(c->pg, statements[st].name, statements[st].nparams, params,
                             NULL, NULL, 0);
        ExecStatusType status = PQresultStatus(res);
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
                r = cp_store__error(c->pg, res, reterr);
                cp_error_prefix(reterr, "%s", statements[st].name);
                PQclear(res);
                return r;
        }
        if (ret)
                *ret = res;
        else
                PQclear(res);
        return 0;
}

int cp_store__command(cp_store_conn *c, const char *sql, cp_error *reterr) {
        PGresult *res = PQexec(c->pg, sql);
        ExecStatusType status = PQresultStatus(res);
        int r = 0;

        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
                r = cp_store__error(c->pg, res, reterr);
        PQclear(res);
        return r;
}

int cp_store_ping(cp_store *s, cp_error *reterr) {
        cp_store_conn *c;
        int r = cp_store__acquire(s, &c, reterr);

        if (r < 0)
                return r;
        r = cp_store__exec(c, ST_PING, NULL, NULL, reterr);
        cp_store__release(s, c);
        return r;
}
