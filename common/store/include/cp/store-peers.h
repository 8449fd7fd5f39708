/*
 * cp/store-peers.h: peers as the agent protocol needs them: lookup by
 * WireGuard key, registration with a setup key, the existing-peer login
 * update, logout (delete), and the account settings a LoginResponse is
 * built from (netbird-protocol.md sections 1.4, 3.2, 3.3, 3.5).
 *
 * Threads: like every cp_store function, all of these may be called from
 * any thread at once; each borrows one pooled connection for its duration.
 * Nothing here logs.
 *
 * Scope: everything except the lookups by key takes an account id
 * and filters by it; a right peer id under a wrong account id is -ENOENT
 * and touches nothing. get_by_key and lookup are the unscoped lookups:
 * peer keys are globally unique and the key is how the account is found.
 *
 * Errors (all functions): >= 0 on success, a negative errno-style value on
 * failure, with reterr (optional) filled. Besides the codes each function
 * lists, any call can fail with -ECONNRESET (connection lost), -EIO
 * (anything unexpected; reterr->sqlstate says what) and -EINVAL (bad
 * arguments, e.g. a NULL id). A function never writes its ret_ outputs on
 * failure. reterr->message is written for logs; the texts agents must see
 * are listed below per code so the RPC edge can send them verbatim.
 *
 * Status mapping for the Login/Logout edge (section 3.4):
 *   -ENOKEY        NotFound            "couldn't add peer: setup key is invalid"
 *   -EEXIST        FailedPrecondition  "peer has been already registered"
 *   -EPERM         FailedPrecondition  "couldn't add peer: setup key doesn't allow extra DNS labels"
 *                                      (on login: "couldn't login peer: setup key doesn't allow
 *                                      extra DNS labels")
 *   -ENOENT        NotFound (Logout, an unknown key) / go to registration (Login)
 *   -EDQUOT        ResourceExhausted   CP_STORE_MSG_DEVICE_LIMIT (registration past the
 *                                      account's device limit; the agent retries with backoff)
 *   -EHOSTDOWN     FailedPrecondition  CP_STORE_MSG_SUSPENDED (the account is suspended; also
 *                                      what Login and Sync answer a known peer of such an
 *                                      account: the agent retries with backoff until resumed)
 *   anything else  Internal            "failed handling request"
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/store.h"

/* ---- system meta -----------------------------------------------------------
 * PeerSystemMeta as the server keeps it. One type serves as input (the
 * RPC edge fills it from the decoded LoginRequest, pointing into its own
 * memory; the store copies what it needs and keeps no pointer after the
 * call) and as output (inside a cp_store_peer, where every pointer is
 * owned by that record).
 *
 * Input rules, applied by the store so every writer stores the same form:
 *   - NULL strings mean "".
 *   - os_version falls back to core when empty (section 1.4).
 *   - wt_version is LoginRequest.meta.netbirdVersion.
 *   - network_addresses whose net_ip does not parse as a CIDR prefix
 *     ("100.64.0.5/16", "fe80::1/64"; a bare address without "/len" is
 *     not a prefix) are dropped, as NetBird drops them; the output holds
 *     only the ones kept.
 *   - flags: only the fields the server persists (Flags 1-10 and 16);
 *     the agent's SSH sub-flags 11-15 are not stored.
 *   - capabilities are stored as given (unknown values kept).
 *   - Counts above the limits below are -EINVAL: the edge should refuse
 *     such a request before it gets here.
 *
 * Storage: the list-shaped parts are jsonb with NetBird's Go field names
 * (network_addresses [{"NetIP","Mac"}], environment {"Cloud","Platform"},
 * files [{"Path","Exist","ProcessIsRunning"}], flags {"RosenpassEnabled",
 * ...}), so a REST layer can pass them through. Callers never see JSON. */
#define CP_STORE_META_MAX_ADDRESSES     1024
#define CP_STORE_META_MAX_FILES         1024
#define CP_STORE_META_MAX_CAPABILITIES  64
#define CP_STORE_MAX_EXTRA_DNS_LABELS   32

typedef struct cp_store_peer_netaddr {
        const char *net_ip;             /* CIDR, e.g. "192.168.1.10/24" */
        const char *mac;
} cp_store_peer_netaddr;

typedef struct cp_store_peer_file {
        const char *path;
        bool exist;
        bool process_is_running;
} cp_store_peer_file;

typedef struct cp_store_peer_flags {
        bool rosenpass_enabled;         /* Flags 1 */
        bool rosenpass_permissive;      /* 2 */
        bool server_ssh_allowed;        /* 3 */
        bool disable_client_routes;     /* 4 */
        bool disable_server_routes;     /* 5 */
        bool disable_dns;               /* 6 */
        bool disable_firewall;          /* 7 */
        bool block_lan_access;          /* 8 */
        bool block_inbound;             /* 9 */
        bool lazy_connection_enabled;   /* 10 */
        bool disable_ipv6;              /* 16 */
} cp_store_peer_flags;

typedef struct cp_store_peer_meta {
        const char *hostname;
        const char *go_os;
        const char *kernel;
        const char *core;
        const char *platform;
        const char *os;
        const char *os_version;
        const char *wt_version;         /* netbirdVersion */
        const char *ui_version;
        const char *kernel_version;
        const char *system_serial_number;
        const char *system_product_name;
        const char *system_manufacturer;
        const char *environment_cloud;
        const char *environment_platform;
        const cp_store_peer_netaddr *network_addresses;
        size_t n_network_addresses;
        const cp_store_peer_file *files;
        size_t n_files;
        cp_store_peer_flags flags;
        const int32_t *capabilities;    /* PeerCapability values */
        size_t n_capabilities;
        int32_t sync_message_version;
} cp_store_peer_meta;

/* ---- the peer record -------------------------------------------------------
 * Returned by the getters and by register. Heap object: the caller owns it
 * and frees it with cp_store_peer_free(); every string and array inside
 * lives exactly as long as the record. Strings are never NULL ("" when the
 * column is empty or NULL). Not shared between threads while being freed,
 * otherwise read-only and safe to read from several threads. */
typedef struct cp_store_peer {
        const char *id;
        const char *account_id;
        const char *key;                /* base64 WireGuard public key */
        const char *ip;                 /* overlay IPv4 address, no prefix: "100.77.3.9" */
        const char *dns_label;          /* FQDN = dns_label + "." + DNS domain */
        const char *name;
        const char *user_id;            /* "" for peers added with a setup key */
        const char *ssh_key;            /* "" when the agent sent none */
        bool ssh_enabled;
        bool login_expiration_enabled;
        bool inactivity_expiration_enabled;
        bool ephemeral;
        bool allow_extra_dns_labels;
        const char *const *extra_dns_labels;
        size_t n_extra_dns_labels;
        int64_t last_login_unix_ns;     /* 0 = never (NULL) */
        int64_t created_at_unix_ns;
        const char *connection_ip;      /* location_connection_ip, "" if unknown */
        cp_store_peer_status status;    /* connected, login_expired, session token, ... */
        /* The owner (user_id) is blocked; read by cp_store_peer_lookup
         * only (false from the other getters). */
        bool owner_blocked;
        cp_store_peer_meta meta;
        /* Ids of the groups the peer belongs to (group_peers), sorted,
         * including the All group. */
        const char *const *group_ids;
        size_t n_group_ids;

        void *_mem;                     /* private: the record's allocations */
} cp_store_peer;

/* Frees the record and everything in it. Accepts NULL; returns NULL. */
cp_store_peer *cp_store_peer_free(cp_store_peer *p);
static inline void cp_store_peer_freep(cp_store_peer **p) {
        if (*p)
                (void) cp_store_peer_free(*p);
}
#define _cleanup_store_peer_ _cleanup_(cp_store_peer_freep)

/* Looks a peer up by its base64 WireGuard public key, in any account; the
 * returned record's account_id is the account to serve it from. *ret_peer
 * is owned by the caller (cp_store_peer_free); ret_peer may be NULL to ask
 * only whether the peer exists. -ENOENT when no peer has that key (Login:
 * go to registration; Sync: "peer is not registered"). */
int cp_store_peer_get_by_key(cp_store *s, const char *wg_pub_key, cp_store_peer **ret_peer,
                             cp_error *reterr);

/* The same record by id inside one account (ret_peer as above); -ENOENT
 * when the peer is not in that account. */
int cp_store_peer_get(cp_store *s, const char *account_id, const char *peer_id,
                      cp_store_peer **ret_peer, cp_error *reterr);

/* ---- account settings for a LoginResponse --------------------------------
 * Plain values, no ownership. network_cidr is the account's overlay
 * network (accounts.network_net, e.g. "100.77.0.0/16"); the peer's
 * address in PeerConfig is "<peer ip>/<network_prefix_len>". dns_domain
 * is the account's override of the FQDN suffix ("" = the server's
 * --dns-domain applies). serial is accounts.network_serial as read. */
typedef struct cp_store_account_settings {
        char network_cidr[48];
        unsigned network_prefix_len;
        char dns_domain[256];
        bool login_expiration_enabled;
        int64_t login_expiration_ns;
        bool inactivity_expiration_enabled;
        int64_t inactivity_expiration_ns;
        bool lazy_connection_enabled;
        bool routing_peer_dns_resolution_enabled;
        bool peer_approval_enabled;
        int64_t network_serial;
        bool suspended;                 /* accounts.suspended_at is set (cp/store-tenant.h) */
} cp_store_account_settings;

/* -ENOENT when the account does not exist. */
int cp_store_account_get_settings(cp_store *s, const char *account_id,
                                  cp_store_account_settings *ret, cp_error *reterr);

/* Login and Sync open: the peer with this key (as cp_store_peer_get_by_key),
 * its account's settings, the database clock (cp_store_db_now_ns) and
 * whether its owner is blocked (owner_blocked), in ONE statement. The record holds everything but what is stored as JSON,
 * which Login and Sync do not need: extra_dns_labels and group_ids are
 * empty, and so are the meta's network addresses, files, flags and
 * capabilities (its strings are there). *ret_peer is owned by the caller;
 * ret_db_now_ns may be NULL. -ENOENT when no peer has that key. */
int cp_store_peer_lookup(cp_store *s, const char *wg_pub_key, cp_store_peer **ret_peer,
                         cp_store_account_settings *ret_settings, int64_t *ret_db_now_ns, cp_error *reterr);

/* The network_serial of n accounts in ONE query (a replica re-reading the
 * accounts it holds Sync streams for, to notice changes committed
 * elsewhere). ids[0..n) are borrowed; ret_serials[i] gets the serial of
 * ids[i], or -1 when that account does not exist. n == 0 asks nothing and
 * returns 0. ret_serials is left alone on failure. */
int cp_store_account_serials(cp_store *s, const char *const *ids, size_t n, int64_t *ret_serials,
                             cp_error *reterr);

/* Raises the account's network_serial to at least min_serial (never
 * lowers it) and gives the serial it has now in *ret_serial. For a serial
 * that went back below what agents were already sent (a database
 * restored from a backup): an agent ignores a map whose serial is lower
 * than the one it holds (docs/protocol.md, "Serials"). -ENOENT when the
 * account does not exist. */
int cp_store_account_serial_raise(cp_store *s, const char *account_id, int64_t min_serial, int64_t *ret_serial,
                                  cp_error *reterr);

/* ---- registration with a setup key (section 3.3) -------------------------
 * All inputs are borrowed for the duration of the call. */
typedef struct cp_store_peer_register_req {
        const char *setup_key;          /* plain key as the agent sent it; any case */
        const char *wg_pub_key;         /* base64 WireGuard key from EncryptedMessage */
        const cp_store_peer_meta *meta; /* required; meta->hostname gives name and DNS label */
        const char *ssh_key;            /* PeerKeys.sshPubKey as text; NULL = none */
        /* Extra DNS labels (LoginRequest.dnsLabels), at most
         * CP_STORE_MAX_EXTRA_DNS_LABELS, each a punycode domain name:
         * dot-separated labels of [a-z0-9-]{1,63}, not starting or ending
         * with '-', 253 characters at most (upper case accepted and stored
         * lower-cased); anything else is -EINVAL. */
        const char *const *extra_dns_labels;
        size_t n_extra_dns_labels;
        const char *connection_ip;      /* agent's real IPv4/IPv6 address (no port);
                                         * NULL = unknown; anything else is -EINVAL */
        const struct cp_store_peer_location *location; /* of connection_ip; NULL = unknown */
        const char *dns_domain;         /* server's --dns-domain, for the event's fqdn;
                                         * the account override wins when set */
        /* SSO registration (a Login with a JWT; section 3.3 step 5): the
         * user the JWT resolved to; setup_key is then ignored. NULL = the
         * setup-key registration. */
        const char *user_id;
        /* A reverse proxy's embedded peer (CreateProxyPeer, NetBird's
         * CreateProxyPeer): the account it joins, and the cluster it
         * serves (peers.proxy_cluster, proxy_embedded true). setup_key and
         * user_id are then ignored. NULL = not a proxy peer. */
        const char *proxy_account_id;
        const char *proxy_cluster;
} cp_store_peer_register_req;

/* Registers a new peer with a setup key, in ONE transaction (the caller
 * has found no peer with this key first; see get_by_key):
 *   1. claims one use of the key with a single conditional UPDATE on
 *      base64(SHA-256(UPPERCASE(key))): not revoked, not expired, usage
 *      limit not reached, a one-off key never used. Concurrent
 *      registrations therefore never exceed the key's limits; a failed
 *      registration rolls the claim back with everything else.
 *   2. inserts the peer: id new, name = hostname, DNS label from the
 *      hostname (cp_store_dns_label_from_hostname), or
 *      "<label>-<ip octet 3>-<ip octet 4>" when the plain label is taken
 *      in the account (the label part shortened so the whole stays within
 *      63 characters); a random free host address of the account
 *      network (never the network or broadcast address; collisions are
 *      retried under a SAVEPOINT); ephemeral and allow_extra_dns_labels
 *      from the key; user_id NULL; login and inactivity expiration off
 *      (NetBird enables them only for SSO peers); last_login, created_at
 *      and last_seen = now; not connected, session token 0;
 *      requires_approval false (NetBird's open-source validator never
 *      asks for approval).
 *      Strings must be valid UTF-8 (PostgreSQL refuses others: -EINVAL).
 *   3. group membership: the All group plus every auto-group of the key
 *      that exists in the same account (ids from other accounts or that
 *      no longer exist are skipped silently, as NetBird skips them).
 *   4. event 1 (peer.setupkey.add), initiator = setup key id, target =
 *      peer id, meta {name, fqdn, ip, created_at, setup_key_name}.
 *   5. accounts.network_serial + 1.
 * On success *ret_peer (optional, owned by the caller) is the new peer and
 * *ret_serial (optional) the account's new serial. Errors:
 *   -ENOKEY        the key is unknown, revoked, expired or used up (or
 *                  empty/too long); nothing is written. It is the first
 *                  database check, so it wins over -EEXIST, -EPERM and
 *                  -EADDRNOTAVAIL; malformed arguments (-EINVAL) are
 *                  refused before the database is asked.
 *                  NetBird answers FailedPrecondition when the key turns
 *                  invalid between its check and its transaction; with
 *                  one conditional UPDATE there is no such window, so the
 *                  edge always answers NotFound.
 *   -EEXIST        a peer with wg_pub_key already exists (any account);
 *                  nothing is written, the key use is not counted
 *   -EPERM         extra DNS labels requested but the key does not allow
 *                  them; nothing is written
 *   -EINVAL        missing meta or key, a bad extra label, a hostname that
 *                  yields no DNS label, meta counts over the limits
 *   -EADDRNOTAVAIL no free address found in the account network
 *   -EHOSTDOWN     the account is suspended (accounts.suspended_at);
 *                  nothing is written
 *   -EDQUOT        the account holds device_limit peers already (proxy
 *                  peers not counted); nothing of the registration is
 *                  written, but event 1300 (CP_ACTIVITY_ACCOUNT_PEER_LIMIT_
 *                  REACHED, initiator the key or user, meta {name,
 *                  device_limit}) is, after the rollback. The check runs
 *                  under the account row locked FOR NO KEY UPDATE, so
 *                  concurrent registrations on any number of replicas
 *                  never overshoot the limit; the limit is read from the
 *                  row in the same transaction (no cache). Proxy peers are
 *                  neither checked nor counted.
 *   -EIO           the account has no All group (broken account), or any
 *                  other unexpected database error */
/* With user_id set (NetBird's handleUserAddedPeer), steps 1, 3 and 4
 * differ: 1. the user's account is locked (KEY SHARE) and the user's
 * last_login set to now; 3. the user's auto-groups instead of the key's;
 * 4. event 0 (peer.user.add), initiator = the user, meta without
 * setup_key_name. The peer has user_id set, login and inactivity
 * expiration on, is not ephemeral and allows no extra DNS labels (asking
 * for some is -EPERM, as with a key that does not allow them). Errors
 * besides the ones above: -ENOENT the user does not exist ("failed adding
 * new peer: user not found"), -EACCES the user is pending approval ("user
 * pending approval cannot add peers"); nothing is written then. */
/* With proxy_account_id set, step 1 locks that account (KEY SHARE) and
 * claims nothing; the peer is ephemeral, without user, login and
 * inactivity expiration off, in the All group only; event 1 with an empty
 * initiator (as NetBird's AddPeer without a setup key); proxy_cluster and
 * proxy_embedded set in the same transaction. -ENOENT when the account
 * does not exist. */
int cp_store_peer_register(cp_store *s, const cp_store_peer_register_req *req,
                           cp_store_peer **ret_peer, int64_t *ret_serial, cp_error *reterr);

/* ---- login of an existing peer (section 3.2) ------------------------------
 * What a Login (or SyncMeta) of a known peer writes. NULL fields are left
 * alone. */
typedef struct cp_store_peer_login_req {
        const cp_store_peer_meta *meta; /* replaces the stored meta; NULL = keep */
        const char *ssh_key;            /* NULL or "" = keep (the agent sent none) */
        const char *connection_ip;      /* IPv4/IPv6 address; NULL = keep */
        /* Extra DNS labels the agent asks for: when n > 0 the peer must
         * allow them (else -EPERM, nothing written). Like NetBird, a login
         * never changes the stored labels; they are set at registration. */
        size_t n_extra_dns_labels;
} cp_store_peer_login_req;

/* What cp_store_peer_login_update changed (bits of *ret_changed). */
enum {
        CP_STORE_PEER_CHANGED_META       = 1 << 0,  /* any meta field */
        CP_STORE_PEER_CHANGED_WT_VERSION = 1 << 1,  /* meta.wt_version (agentVersion of remote peers) */
        CP_STORE_PEER_CHANGED_SSH_KEY    = 1 << 2,  /* ssh_key (sshConfig.sshPubKey of remote peers) */
        CP_STORE_PEER_CHANGED_CONN_IP    = 1 << 3,  /* location_connection_ip */
        CP_STORE_PEER_CHANGED_SERIAL     = 1 << 4,  /* network_serial was bumped */
        CP_STORE_PEER_CHANGED_POSTURE    = 1 << 5,  /* an input of posture checks, with checks present */
};

/* A peer's location as the geolocation database gives it (cp/geo.h):
 * location_country_code, location_city_name, location_geo_name_id.
 * Strings borrowed, UTF-8; "" and 0 for unknown. */
typedef struct cp_store_peer_location {
        const char *country_code;
        const char *city_name;
        int64_t geoname_id;
} cp_store_peer_location;

/* Updates a known peer at login, in ONE statement that locks the row.
 * Writes only when something differs. The account's network_serial is
 * bumped (and CHANGED_SERIAL set) when a change is visible to other peers:
 * the ssh key or wt_version; or when the account has posture checks and
 * an input they read changed (CHANGED_POSTURE: meta os, os_version,
 * kernel_version, go_os, network addresses, files, the connection
 * address; see cp_store_peer_connect). Other meta changes are stored and
 * reported with CHANGED_META only.
 * last_login is NOT touched (NetBird refreshes it only when an expired SSO
 * login is renewed). *ret_changed (optional) gets the CHANGED_* bits,
 * *ret_serial (optional) the account's serial after the call (bumped or
 * not). Errors: -ENOENT peer not in that account; -EPERM extra labels
 * requested but not allowed for this peer; -EINVAL meta over the limits.
 * The ssh key rule differs from NetBird's Login, which also clears a
 * stored key when the agent sends none; the stock agent always sends one. */
int cp_store_peer_login_update(cp_store *s, const char *account_id, const char *peer_id,
                               const cp_store_peer_login_req *req, unsigned *ret_changed,
                               int64_t *ret_serial, cp_error *reterr);

/* ---- the fenced connect of a Sync stream ----------------------------------
 * The connect of cp_store_peer_mark_connected() (cp/store.h: lands only
 * when the stored session token is smaller than token; connected,
 * last_seen = CURRENT_TIMESTAMP, the token, login_expired cleared, this
 * replica as owner), and in the SAME statement, so only when it lands and
 * under its row lock: the meta and the connection address replace the
 * stored ones (NULL = keep; the input rules of cp_store_peer_meta apply),
 * and network_serial is bumped when the agent version changed (remote
 * peers show it). A stale connect writes nothing at all, meta and address
 * included. All inputs are borrowed for the call.
 *
 * expect_wt_version is the agent version the caller read (e.g. with
 * cp_store_peer_lookup): when the meta carries that same version, the
 * connect is one plain fenced UPDATE guarded by it. Otherwise, or when
 * that UPDATE did not land (stale, or the version changed meanwhile), a
 * second fenced statement locks the row, compares the version and bumps
 * the serial with the connect; it lands only if the token is still the
 * newest then. NULL: always that statement when there is meta.
 *
 * Posture re-evaluation: when the account has posture checks and the
 * connect changes an input they read (meta os, os_version,
 * kernel_version, go_os, network addresses, files; the connection
 * address; the location's country or city), the plain UPDATE does not land and the second statement bumps
 * network_serial with the connect (CHANGED_POSTURE | CHANGED_SERIAL), so
 * every map of the account is recomputed and pushed. Without posture
 * checks nothing more is done. */
typedef struct cp_store_peer_connect_req {
        int64_t token;                  /* the session token; must be > 0 */
        const cp_store_peer_meta *meta; /* NULL = keep */
        const char *connection_ip;      /* IPv4/IPv6 address; NULL = keep */
        const char *expect_wt_version;  /* see above; NULL = unknown */
        /* The location of connection_ip; NULL = keep (no geolocation
         * database). Written with the connect, in the same statement. */
        const cp_store_peer_location *location;
} cp_store_peer_connect_req;

/* Returns 1 when the connect landed, 0 when it was fenced off (or the peer
 * is not in that account), negative on error (-EINVAL: token <= 0, a bad
 * address, meta over the limits or not UTF-8; nothing written). When the
 * agent version changed, *ret_changed (optional) gets CHANGED_WT_VERSION |
 * CHANGED_SERIAL, when posture inputs changed CHANGED_POSTURE |
 * CHANGED_SERIAL, and *ret_serial (optional) the bumped serial; otherwise
 * both are 0 (the other CHANGED_* bits are not reported here). */
int cp_store_peer_connect(cp_store *s, const char *account_id, const char *peer_id,
                          const cp_store_peer_connect_req *req, unsigned *ret_changed, int64_t *ret_serial,
                          cp_error *reterr);

/* ---- the Sync open in one round trip ---------------------------------------
 * cp_store_peer_lookup() and cp_store_peer_connect() in ONE fenced UPDATE,
 * for the common open: it lands only when the lookup would have let the
 * open go on and the plain connect would have landed -- the account is
 * not suspended; the peer's login_expired flag is clear; an SSO peer's
 * owner is not blocked and its login deadline (by now_unix_ns, the
 * caller's clock, as mgmt_login_expired) has not passed; meta is NULL or
 * carries the agent version stored; no posture input changes while the
 * account has posture checks. Then it writes what cp_store_peer_connect
 * writes, with the session token taken in the statement under the row
 * lock: the database clock, above the stored token (so it lands as the
 * newest session; a stored token of INT64_MAX is never beaten). The fence
 * is the same: a later connect, or a disconnect, sees this token.
 *
 * Returns 1 and fills *ret when it landed; 0 when it wrote nothing (no
 * such key, or one of the conditions above): the caller takes the
 * lookup + connect path, which tells which; negative on error (-EINVAL:
 * a bad address, meta over the limits; nothing written). Inputs are
 * borrowed for the call. */
typedef struct cp_store_peer_open_req {
        const char *wg_pub_key;
        const cp_store_peer_meta *meta; /* NULL = keep */
        const char *connection_ip;      /* NULL = keep */
        const cp_store_peer_location *location; /* NULL = keep */
        int64_t now_unix_ns;            /* the caller's clock, for the login deadline */
} cp_store_peer_open_req;

typedef struct cp_store_peer_opened {
        char peer_id[64];
        char account_id[64];
        int64_t token;                  /* the session token that landed */
        int64_t network_serial;         /* the account's serial (unchanged by the open) */
} cp_store_peer_opened;

int cp_store_peer_open(cp_store *s, const cp_store_peer_open_req *req, cp_store_peer_opened *ret,
                       cp_error *reterr);

/* ---- logout (section 3.5) --------------------------------------------------
 * Deletes the peer (its group memberships go with it by cascade, and so do
 * routes whose routing peer it is: routes.peer is ON DELETE CASCADE), writes
 * event 5 (user.peer.delete) with target = peer id and meta {name, fqdn,
 * ip, created_at}, and bumps network_serial, in one transaction.
 * initiator_id NULL means the peer's user_id, or "sys" for a setup-key
 * peer (what NetBird's Logout passes). dns_domain is the server's
 * --dns-domain for the event's fqdn (account override wins). *ret_serial
 * (optional) is the new serial. -ENOENT when the peer is not in that
 * account; nothing is written then. */
int cp_store_peer_delete(cp_store *s, const char *account_id, const char *peer_id,
                         const char *initiator_id, const char *dns_domain, int64_t *ret_serial,
                         cp_error *reterr);

/* ---- helpers ---------------------------------------------------------------
 * The DNS label NetBird derives from a hostname: the first dot-separated
 * label, every run of characters outside [a-zA-Z0-9-] replaced by one '-',
 * lower-cased, cut to 59 characters. Non-ASCII labels are converted to
 * punycode ("xn--...") first (only the first 255 code points are read;
 * invalid UTF-8 bytes count as U+FFFD, as in Go). Like NetBird, leading or
 * trailing '-' are kept ("_x_" gives "-x-"). Returns the length (> 0) or
 * -EINVAL when the hostname yields no label (NULL, "", or starting with
 * '.'). out holds CP_STORE_DNS_LABEL_MAX + 1 bytes. Pure function. */
#define CP_STORE_DNS_LABEL_MAX 63
int cp_store_dns_label_from_hostname(const char *hostname, char out[CP_STORE_DNS_LABEL_MAX + 1]);

/* The label registration falls back to when label is taken in the
 * account: "<label>-<octet 3>-<octet 4>" of the IPv4 address ipv4, the
 * label part shortened so the whole stays within 63 characters. Returns
 * the length, or -EINVAL for an empty label or an ipv4 that is not an
 * IPv4 address. Pure function. */
int cp_store_dns_label_with_ip(const char *label, const char *ipv4, char out[CP_STORE_DNS_LABEL_MAX + 1]);

/* ---- inside a caller's transaction (cp/store-tx.h) -------------------------
 * The same statements as above, run in a transaction the caller owns (the
 * REST API's request transaction); nothing is committed here and the
 * serial is not bumped (the caller does both). A failed statement aborts
 * the caller's transaction, as cp_store_tx_exec() does. */
typedef struct cp_store_tx cp_store_tx;

/* What cp_store_peer_delete() does, minus the serial bump: the peer row
 * (group memberships and routes it serves go by cascade) and event 5 with
 * the peer meta, initiator_id (required) as its initiator. -ENOENT when
 * the peer is not in the account (the transaction stays usable). */
int cp_store_tx_peer_delete(cp_store_tx *tx, const char *account_id, const char *peer_id,
                            const char *initiator_id, const char *dns_domain, cp_error *reterr);

/* Writes one activity event about a peer with NetBird's peer meta (name,
 * fqdn, ip, created_at, location_*) read from the peer's current row,
 * merged with extra_meta (a JSON object text; NULL = none; its keys win).
 * target_id NULL means the peer id. dns_domain as in cp_store_peer_delete.
 * -ENOENT when the peer is not in the account. */
int cp_store_tx_peer_event(cp_store_tx *tx, int activity, const char *account_id, const char *peer_id,
                           const char *initiator_id, const char *target_id, const char *dns_domain,
                           const char *extra_meta, cp_error *reterr);

/* ---- login and inactivity expiration (netbird-protocol.md 6.3 and 7) -------
 * NetBird arms a timer per account in the process that saw the connect;
 * here no replica holds that state: every replica calls this periodically
 * and the database decides. In ONE statement (one transaction):
 *   - marks peer_status_login_expired = true on every SSO peer (user_id
 *     set) not yet marked whose login has expired: account setting
 *     settings_peer_login_expiration_enabled, peer login_expiration_enabled,
 *     last_login set, and last_login + settings_peer_login_expiration <=
 *     now(); or which has been inactive too long (NetBird's inactivity
 *     job, Peer.SessionExpired): account setting
 *     settings_peer_inactivity_expiration_enabled, peer
 *     inactivity_expiration_enabled, not connected, and last_seen +
 *     settings_peer_inactivity_expiration <= now();
 *   - writes event 50 (peer.login.expire) per peer marked, initiator the
 *     peer's user (as NetBird's expireAndUpdatePeers), meta = the peer
 *     meta of event 5 plus reason "session expiration" (login) or
 *     "inactivity timeout" (dns_domain as in cp_store_peer_delete);
 *   - bumps network_serial once per account with a marked peer.
 * The UPDATE's "not yet marked" condition is re-checked under the row lock,
 * so callers running at the same time (other replicas) never mark a peer
 * twice, and the events and bumps follow from the rows each caller marked:
 * a caller that marked nothing writes nothing.
 * On success *ret_accounts (malloc'ed array, caller frees; NULL when
 * *ret_n == 0) holds each affected account with its new serial, sorted by
 * account id; and, when ret_peers is not NULL, *ret_peers (likewise) the
 * peers this call marked, sorted by account id then peer id. A deadlock
 * with a concurrent caller is retried. */
typedef struct cp_store_expired_account {
        char account_id[64];
        int64_t serial;
} cp_store_expired_account;

typedef struct cp_store_expired_peer {
        char account_id[64];
        char peer_id[64];
} cp_store_expired_peer;

int cp_store_expire_logins(cp_store *s, const char *dns_domain, cp_store_expired_account **ret_accounts,
                           size_t *ret_n, cp_store_expired_peer **ret_peers, size_t *ret_n_peers,
                           cp_error *reterr);
