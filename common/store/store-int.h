/*
 * store-int.h: internals shared by the store's .c files; not exported.
 */
#pragma once

#include <libpq-fe.h>
#include <pthread.h>

#include "cp/store.h"

/* One compiled-in migration (generated from sql/migrations by embed.py). */
typedef struct cp_store_migration {
        int version;
        const char *name;
        const char *sql;
} cp_store_migration;

extern const cp_store_migration cp_store__migrations[];
extern const size_t cp_store__n_migrations;

/* The statement table: every prepared statement the store runs. The enum
 * indexes cp_store__statements[] in store.c. */
typedef enum cp_store_stmt {
        ST_PING,
        ST_PEER_CONNECT,
        ST_PEER_CONNECT_VERSION,
        ST_PEER_OPEN,
        ST_PEER_DISCONNECT,
        ST_PEER_STATUS,
        ST_ACCOUNT_COUNT,
        ST_ACCOUNT_INSERT,
        ST_GROUP_INSERT,
        ST_POLICY_INSERT,
        ST_POLICY_RULE_INSERT,
        ST_USER_INSERT,
        ST_PAT_INSERT,
        ST_SETUP_KEY_INSERT,
        ST_EVENT_INSERT,
        ST_EVENT_INSERT_SPARSE,
        ST_SERVER_KEY_GET,
        ST_SERVER_KEY_INSERT,
        ST_SERVER_KEY_INFO,
        ST_SERVER_KEY_LOCK,
        ST_SERVER_KEY_ROTATE,
        /* store-peers.c: login and registration */
        ST_PEER_GET_BY_KEY,
        ST_PEER_GET,
        ST_ACCOUNT_SETTINGS,
        ST_PEER_LOOKUP,
        ST_ACCOUNT_NETWORK,
        ST_ACCOUNT_SERIAL_BUMP,
        ST_SETUP_KEY_CLAIM,
        ST_SETUP_KEY_ACCOUNT_LOCK,
        ST_PEER_LABEL_TAKEN,
        ST_PEER_FREE_IP,
        ST_PEER_INSERT,
        ST_PEER_GROUP_ALL,
        ST_PEER_GROUP_AUTO,
        ST_PEER_EVENT,
        ST_PEER_LOGIN_UPDATE,
        ST_PEER_DELETE,
        ST_DB_NOW,
        ST_ACCOUNT_SERIALS,
        ST_ACCOUNT_SERIAL_RAISE,
        ST_PEER_EXPIRE_LOGINS,
        /* store-sso.c and the SSO registration */
        ST_JWT_CLAIM,
        ST_JWT_CLAIMS_GC,
        ST_PEER_SSO_LOGIN,
        ST_PEER_EXTEND_SESSION,
        ST_SSO_USER_ACCOUNT_LOCK,
        ST_SSO_USER,
        ST_SSO_USER_PENDING,
        ST_PEER_GROUP_USER_AUTO,
        ST_REPLICA_REGISTER,
        ST_REPLICA_HEARTBEAT,
        ST_REPLICA_STATE,
        ST_REPLICA_DEREGISTER,
        ST_REPLICA_REAP,
        /* store-ephemeral.c */
        ST_EPHEMERAL_ACCOUNTS,
        ST_EPHEMERAL_SWEEP,
        /* CreateProxyPeer's registration */
        ST_PROXY_PEER_ACCOUNT_LOCK,
        ST_PROXY_PEER_META,
        /* Registration's admission (suspension, device limit; store-peers.c) */
        ST_ACCOUNT_ADMIT_READ,
        ST_ACCOUNT_ADMIT_LOCK,
        ST_ACCOUNT_PEER_COUNT,
        _ST_MAX,
} cp_store_stmt;

typedef struct cp_store_conn {
        PGconn *pg;
        cp_store *store;
        bool in_use;
        bool prepared[_ST_MAX];
} cp_store_conn;

struct cp_store {
        char *dsn;
        /* true: statements run unnamed (PQexecParams), as a pgbouncer in
         * transaction mode needs; set at open (cp_store_use_prepared) or
         * for good once the server lost or duplicated a named statement. */
        _Atomic bool unprepared;
        char *replica_id;               /* owner written by fenced connects; NULL = none */
        unsigned size;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        cp_store_conn *conns;
};

/* Borrows a connection (connecting it if needed); blocks while all are in
 * use. Returns 0 and *ret, or a negative error when connecting failed. */
int cp_store__acquire(cp_store *s, cp_store_conn **ret, cp_error *reterr);
/* Borrows a connection, runs one prepared statement (cp_store__exec),
 * gives the connection back. */
int cp_store__run(cp_store *s, cp_store_stmt st, const char *const *params, PGresult **ret,
                  cp_error *reterr);
/* Gives the connection back. A connection that went bad is closed here and
 * reconnected by the next acquire. */
void cp_store__release(cp_store *s, cp_store_conn *c);

/* Executes a prepared statement with text parameters (NULL = SQL NULL).
 * On success returns 0 and hands the PGresult to *ret (caller PQclear()s;
 * ret may be NULL to discard). On failure fills reterr (SQLSTATE kept) and
 * returns: -EEXIST unique violation, -ENOENT foreign key violation,
 * -EINVAL check/invalid input, -ECONNRESET connection lost, -EIO else. */
int cp_store__exec(cp_store_conn *c, cp_store_stmt st, const char *const *params,
                   PGresult **ret, cp_error *reterr);

/* The connection of a caller's transaction (cp/store-tx.h), for store
 * functions that run inside it (cp_store_tx_*): NULL when an earlier
 * statement failed and only the rollback is left. A function that fails
 * on it calls cp_store__tx_failed(), as cp_store_tx_exec() does. */
struct cp_store_tx;
cp_store_conn *cp_store__tx_conn(struct cp_store_tx *tx);
void cp_store__tx_failed(struct cp_store_tx *tx);

/* Runs a simple command without parameters (BEGIN, COMMIT, migration SQL). */
int cp_store__command(cp_store_conn *c, const char *sql, cp_error *reterr);

/* Metrics (store-metrics.c). The statement's name ("peer_connect"), its
 * label in netbird_cp_store_query_*. */
const char *cp_store__stmt_name(cp_store_stmt st);
/* Its SQL text and parameter count, as prepared (static storage); for
 * tests/sql's scope checker, which lists every statement. */
const char *cp_store__stmt_sql(cp_store_stmt st, int *ret_nparams);
/* The name it is prepared under on the server: "<name>_<8 hex of the
 * SHA-256 of its SQL>" (static storage), so that a statement another
 * client prepared under the same name on a pooled server connection never
 * runs in place of ours. */
const char *cp_store__stmt_server_name(cp_store_stmt st);
/* Monotonic nanoseconds, for cp_store__observe. */
int64_t cp_store__clock_ns(void);
/* Registration's admission (store-tenant.c), inside the registration's
 * transaction after the key or user claim: the account row locked FOR NO
 * KEY UPDATE; -EHOSTDOWN when suspended, -EDQUOT (with *ret_limit) when
 * it holds device_limit peers already (proxy peers not counted). */
int cp_store__peer_admit(cp_store_conn *c, const char *account_id, int64_t *ret_limit, cp_error *reterr);
/* After a -EDQUOT registration was rolled back: event 1300, best effort. */
void cp_store__peer_limit_event(cp_store_conn *c, const char *account_id, const char *initiator,
                                const char *hostname, int64_t limit);

/* Records one statement (a cp_store_stmt, or _ST_MAX for COMMIT) that
 * started at started_ns; failed counts an error too. Lock-free. */
void cp_store__observe(int st, int64_t started_ns, bool failed);
/* The cp_store__observe index of statements run through cp/store-tx.h. */
#define CP_STORE__TIMED_API (_ST_MAX + 1)
/* Counts one fenced status write that reached the database. */
void cp_store__fenced(bool connect, bool landed);

/* Fills reterr from a failed result or connection; returns the errno code. */
int cp_store__error(PGconn *pg, const PGresult *res, cp_error *reterr);

/* Number of rows changed by a command result. */
int64_t cp_store__affected(const PGresult *res);

/* Row 0's column col of res as a bool ("t") or an int64. */
static inline bool cp_store__col_bool(const PGresult *res, int col) {
        return PQgetvalue(res, 0, col)[0] == 't';
}

static inline int64_t cp_store__col_int64(const PGresult *res, int col) {
        return strtoll(PQgetvalue(res, 0, col), NULL, 10);
}

/* A text parameter that may be NULL, as "". */
static inline const char *cp_store__nz(const char *s) {
        return s ? s : "";
}

static inline void cp_store__pqclearp(PGresult **r) {
        if (*r)
                PQclear(*r);
}
#define _cleanup_pgresult_ _cleanup_(cp_store__pqclearp)
