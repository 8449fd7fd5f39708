/*
 * mgmt-sync-int.h: what mgmt-sync.c (streams, fan-out, refresh),
 * mgmt-sync-drain.c (the drain and other bulk endings) and
 * mgmt-sync-checks.c (the periodic serial and login expiry checks) share:
 * the hub, its per-account entries and the stream record, and the two
 * stream/fan-out entry points the checks call. Not for other modules:
 * they use mgmt-sync.h. Ownership and threads as in mgmt-sync.c's header
 * comment: everything here belongs to the CQ thread unless marked.
 */
#pragma once

#include "cp/base.h"
#include "cp/store-peers.h"
#include "cp/store-sso.h"
#include "cp/util.h"
#include "mgmt-agent-int.h"
#include "mgmt-map.h"
#include "mgmt-metrics.h"
#include "mgmt-strmap.h"
#include "mgmt-sync.h"

#include <stdatomic.h>

#include "management.pb-c.h"

typedef struct sync_acct sync_acct;

/* One fan-out's delivery, for netbird_cp_sync_delivery_seconds: t0 (the
 * earliest change the fan-out carries, monotonic ns) and a count: one per
 * map it queued until that map is written or dropped (never sent: the
 * stream closed, or a newer map replaced it, whose own write then counts
 * for its fan-out), plus one the fan-out holds until it queued them all.
 * Observed once when the count reaches 0, if a map of it was written.
 * Any thread may drop a reference (atomics); freed by the last. */
typedef struct sync_delivery {
        atomic_uint refs;
        atomic_bool written;
        bool bus;                       /* t0 is a bus message's send time */
        int64_t t0_ns;
} sync_delivery;

typedef struct sync_stream {
        unsigned refs;                  /* CQ thread */
        mgmt_sync *hub;
        mgmt_call *call;                /* one reference, dropped when freed */

        /* Fixed by the open job, read-only afterwards. */
        char peer_id[64];
        char account_id[64];
        char peer_key[CP_WG_KEY_B64_LEN];
        cp_crypto_box_shared shared;    /* wiped when freed */
        /* The server public key the stream opened with: every message is
         * sealed with that pair, for as long as the stream lives, even
         * after the server key was rotated (the agent keeps the key it
         * fetched before opening). */
        char server_key[CP_WG_KEY_B64_LEN];
        bool have_shared;
        int64_t token;                  /* session token; 0 until the open job took one */
        uint64_t lost_hints;            /* the hub's lost_hints when the call came (CQ thread) */

        /* Results of the open job (CQ thread reads them in open_done). */
        mgmt_agent_op *op;              /* NULL once the open is done */
        int connect;                    /* 1 landed, 0 stale, -1 not tried / failed */
        bool was_expired;               /* login_expired before the connect */
        int64_t changed_serial;         /* meta change visible to others: > 0 */
        uint8_t *first;                 /* EncryptedMessage bytes (malloc) */
        size_t first_len;
        int64_t first_serial;

        /* CQ thread state. */
        bool connected;                 /* our connect landed and no disconnect is issued yet */
        bool registered;                /* hub->peers[peer_id] == this */
        bool opened;                    /* the first map was queued */
        bool closed;                    /* on_close ran */
        bool ending;                    /* the status is decided; no more maps */
        grpc_status_code end_status;
        const char *end_message;        /* static text or NULL */
        const char *end_reason;         /* for the log line */
        int64_t last_serial;            /* newest map accepted (in flight or pending) */
        uint8_t *pending;               /* the one unsent map (malloc) */
        size_t pending_len;
        /* The fan-outs of the pending map and of the map being sent (one
         * reference each; NULL: a first or last map, a refresh). */
        sync_delivery *pending_dlv, *sending_dlv;
        int64_t started_ms;

        /* Credential refresh (CQ thread; creds_ms is set by the open job). */
        int64_t creds_ms;               /* monotonic ms the first message's credentials were made */
        int64_t refresh_due_ms;         /* next refresh, while on the hub's refresh list */
        bool on_refresh_list;
        bool refreshing;                /* a refresh job for it is running */
        uint8_t *refresh;               /* the unsent refresh message (malloc); sent before a map */
        size_t refresh_len;
        struct sync_stream *refresh_prev, *refresh_next;

        sync_acct *acct;                /* while registered */
        struct sync_stream *acct_prev, *acct_next;
} sync_stream;

/* The streams of one account in this process, and its fan-out state. */
struct sync_acct {
        char id[64];
        sync_stream *streams;           /* registered streams */
        size_t n_streams;
        bool building;                  /* a fan-out (or a hint's serial read) is running */
        /* Asked for again while one runs, or while the account has no
         * stream here (an entry kept for opens in progress): one more
         * run after it / after the open. dirty_force: one of those asks
         * was a change committed here (rebuild), not only a hint. */
        bool dirty, dirty_force;
        /* The serial the newest fan-out read from the database. Not a
         * maximum and never from a bus message: a restored database
         * goes back, and a message may be forged (docs/architecture.md,
         * "The bus"). */
        int64_t db_serial;
        /* The earliest change not yet taken by a fan-out (monotonic ns;
         * 0 = none) and whether it came as a bus hint. */
        int64_t t0_ns;
        bool t0_bus;
        bool kept;                      /* on hub->kept: created for opens in progress */
        struct sync_acct *kept_next;
};

struct mgmt_sync {
        const mgmt_agent *agent;
        mgmt_maps *maps;
        int max_setups;
        _Atomic(mgmt_grpc *) grpc;

        /* CQ thread only. */
        mgmt_strmap *peers;             /* peer id -> sync_stream */
        mgmt_strmap *accts;             /* account id -> sync_acct */
        int setups;                     /* opens in progress */
        sync_acct *kept;                /* entries kept only for opens in progress */
        size_t n_kept;
        /* Hints for accounts without an entry that came while opens were
         * in progress and the kept entries were at their cap (a flood of
         * messages naming made-up accounts must not grow them): an open
         * that saw this move re-reads its account's serial. */
        uint64_t lost_hints;
        bool draining;
        /* The drain spread over a window (mgmt_sync_drain): monotonic ms
         * of its end and of the previous step; 0 = not spreading. */
        int64_t drain_end_ms, drain_last_ms;
        atomic_bool drain_done;         /* any thread reads: no stream is left to end */
        /* Since shutdown began: streams the drain ended, fenced
         * disconnects that landed and that were fenced off (the peer had
         * a newer session, e.g. it reconnected elsewhere first); logged
         * when the hub is freed. */
        uint64_t n_drained, n_disc_landed, n_disc_fenced;
        bool checking;                  /* a serial check is running */
        bool check_again;               /* asked for while one was running */
        bool expiring;                  /* a login expiry check is running */

        /* Disconnects that failed, waiting for a retry (CQ thread). */
        struct disconnect_job *retry_disconnects;
        size_t n_retry_disconnects;

        /* Local changes are announced through this (set before start). */
        mgmt_sync_announce_fn announce;
        void *announce_userdata;

        /* Credential refresh: registered streams ordered by due time
         * (CQ thread only). refresh_ms 0: nothing expires, no list. */
        int64_t refresh_ms;
        sync_stream *refresh_head, *refresh_tail;
};

/* mgmt-sync.c; CQ thread. */
void mgmt_sync__stream_end(sync_stream *s, grpc_status_code status, const char *message, const char *reason);
/* One run for every stream registered now. force: rebuild and push (a
 * change committed here); else a hint: read the account's serial first
 * and rebuild only when it differs from what the streams have. */
void mgmt_sync__fanout_start(mgmt_sync *h, sync_acct *a, bool force);
