/*
 * cp/store-tenant.h: the lifecycle of an account as an MSP or a tenant
 * (issue 13; migration 0010_msp's columns): MSP enable/disable, suspend
 * and resume, the device limit, deleting every row of an account in one
 * transaction, and the per-tenant status of the tenant list.
 *
 * The database is the truth for all of it. Replicas read suspension and
 * the device limit from the accounts row on every Login, Sync open and
 * registration (cp/store-peers.h), never from a cache. Suspend, resume
 * and delete bump (or, for delete, return one past) the account's
 * network_serial so the caller can publish the bus hint
 * "account A at serial S": every replica's fan-out for A then re-reads
 * the row and ends A's streams (suspended or gone), and a replica that
 * missed the hint sees the serial move on its periodic serial check.
 *
 * Threads: like every cp_store function, safe from any thread; each call
 * borrows one pooled connection. Nothing here logs. Errors are cp_store's
 * (-ENOENT unknown account, -EINVAL bad arguments, -ECONNRESET, -EIO)
 * with reterr filled.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/store.h"

/* Activity codes of this module (outside NetBird's range, which ends at
 * 142 and 99999; docs/msp.md "Tenant lifecycle"). */
enum {
        /* A registration was refused at the device limit. Account = the
         * limited account, initiator = the setup key id (or the SSO
         * user), target "", meta {name: hostname, device_limit}. */
        CP_ACTIVITY_ACCOUNT_PEER_LIMIT_REACHED = 1300,
        CP_ACTIVITY_ACCOUNT_SUSPENDED = 1301,           /* meta {} */
        CP_ACTIVITY_ACCOUNT_RESUMED = 1302,             /* meta {} */
        CP_ACTIVITY_ACCOUNT_DEVICE_LIMIT_UPDATED = 1303, /* meta {device_limit: n or null} */
        CP_ACTIVITY_ACCOUNT_MSP_ENABLED = 1304,         /* meta {} */
        CP_ACTIVITY_ACCOUNT_MSP_DISABLED = 1305,        /* meta {} */
        /* An MSP deleted one of its tenants (REST). Account = the MSP,
         * target = the tenant account, meta {name, domain}. */
        CP_ACTIVITY_MSP_TENANT_DELETED = 1306,
};

/* The texts agents get (gRPC messages). */
#define CP_STORE_MSG_SUSPENDED "account is suspended"
#define CP_STORE_MSG_DEVICE_LIMIT "couldn't add peer: the account has reached its device limit"

/* Events written by the operator's CLI carry this initiator. */
#define CP_STORE_INITIATOR_OPERATOR "sys"

/* Sets (enabled) or clears accounts.msp_enabled_at, with event 1304 or
 * 1305 in the account when it changed. Enabling an MSP account again
 * keeps its first enable time. *ret_changed (may be NULL): whether it
 * changed. -ENOENT unknown account. Disabling keeps the msp_tenants
 * links; the MSP API refuses while msp_enabled_at is NULL. */
int cp_store_msp_set_enabled(cp_store *s, const char *account_id, bool enabled, const char *initiator_id,
                             bool *ret_changed, cp_error *reterr);

/* Sets (suspend) or clears accounts.suspended_at and bumps the serial,
 * with event 1301 / 1302 when it changed (a repeated suspend keeps the
 * first time and writes no event, but still bumps the serial so the hint
 * is sent again). *ret_serial: the new serial, for the bus hint.
 * *ret_changed may be NULL. -ENOENT unknown account. */
int cp_store_account_set_suspended(cp_store *s, const char *account_id, bool suspended, const char *initiator_id,
                                   int64_t *ret_serial, bool *ret_changed, cp_error *reterr);

/* Sets accounts.device_limit (limit < 0: no limit), event 1303 when it
 * changed. No serial bump: registrations read the row, and existing
 * peers over a lowered limit keep working (only new registrations are
 * refused). -ENOENT unknown account, -EINVAL limit > INT32_MAX. */
int cp_store_account_set_device_limit(cp_store *s, const char *account_id, int64_t limit,
                                      const char *initiator_id, cp_error *reterr);

typedef struct cp_store_account_deleted {
        int64_t serial;         /* the deleted account's last serial + 1: the bus hint */
        int64_t proxy_seq;      /* highest proxy change-log seq written (0: none): the proxies' hint */
        int64_t peers;          /* peers deleted */
} cp_store_account_deleted;

/* Deletes every row of account_id in ONE transaction: the account row
 * locked FOR UPDATE first; REMOVED change-log rows for its enabled
 * reverse-proxy services (cp_store_tx_proxy_services_removed: proxies
 * must drop them; those log rows stay, as for the REST account delete);
 * its events; then the accounts row, whose foreign keys cascade to every
 * other table (msp_tenants included: the tenant's own link). Before
 * committing it checks the catalog: any table with an account_id column
 * (proxy_mapping_changes excepted) that still holds a row of the account
 * fails the whole delete with -EIO naming the table, so a future table
 * without a cascading foreign key cannot be left behind silently. Rows
 * of other accounts are never touched, even those naming this one
 * (events.initiator_account_id of an MSP user's actions elsewhere).
 * -ENOENT unknown account; -EBUSY an MSP that still has tenants (their
 * links are rows of other accounts: delete or unlink them first). */
int cp_store_account_delete_all(cp_store *s, const char *account_id, cp_store_account_deleted *ret,
                                cp_error *reterr);
/* The same inside the caller's transaction (the REST account and
 * tenant deletes): the caller commits, then announces ret->serial and
 * ret->proxy_seq. */
struct cp_store_tx;
int cp_store_tx_account_delete_all(struct cp_store_tx *tx, const char *account_id, cp_store_account_deleted *ret,
                                   cp_error *reterr);

/* An account's peers as the tenant list and the REST usage counter count
 * them (proxy peers left out), in one scan: columns total, connected and
 * seen (the latest last_seen). acct: an SQL expression of the account id.
 * Use as `FROM CP_STORE_SQL_ACCOUNT_PEERS("$1") ps`. */
#define CP_STORE_SQL_ACCOUNT_PEERS(acct)                                                                    \
        "(SELECT count(*) FILTER (WHERE NOT p.proxy_embedded) AS total,"                                     \
        " count(*) FILTER (WHERE NOT p.proxy_embedded AND p.peer_status_connected) AS connected,"            \
        " max(p.peer_status_last_seen) AS seen FROM peers p WHERE p.account_id = " acct ")"

/* An account's lifecycle state and the numbers of the tenant list. */
typedef struct cp_store_tenant_status {
        char account_id[64];
        char name[256];                 /* msp_tenants.name ("" when not a tenant) */
        char domain[256];               /* msp_tenants.domain, else accounts.domain */
        char status[16];                /* msp_tenants.status ("" when not a tenant) */
        char msp_account_id[64];        /* "" when not a tenant */
        bool suspended;
        int64_t suspended_at_ms;        /* Unix ms, 0 when active */
        bool msp_enabled;
        int64_t device_limit;           /* -1: none */
        int64_t peers_total;            /* proxy peers not counted */
        int64_t peers_connected;
        int64_t last_activity_ms;       /* latest peer last_seen or event, Unix ms; 0: none */
        int64_t serial;                 /* network_serial */
        int64_t created_at_ms;
} cp_store_tenant_status;

/* One account's status. -ENOENT unknown account. */
int cp_store_account_status(cp_store *s, const char *account_id, cp_store_tenant_status *ret, cp_error *reterr);

/* The tenants of MSP account msp_account_id (msp_tenants links), ordered
 * by name then id, in ONE statement. *ret (malloc'd array, free() it) and
 * *ret_n; an MSP without tenants gives n = 0 (and *ret NULL). -ENOENT
 * when msp_account_id is not an account (enabled or not). */
int cp_store_tenant_status_list(cp_store *s, const char *msp_account_id, cp_store_tenant_status **ret,
                                size_t *ret_n, cp_error *reterr);
