/*
 * Login (registration or login of a known peer), SyncMeta and Logout:
 * the handlers of the encrypted RPCs that work on the peer record. They
 * run on a worker (mgmt-agent.c opened the envelope already) and turn
 * store errors into NetBird's status codes and messages
 * (netbird-protocol.md section 3.4; the table is in docs/protocol.md).
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/netmap.h"
#include "cp/store-peers.h"
#include "cp/store-sso.h"
#include "cp/store-tenant.h"
#include "cp/util.h"
#include "mgmt-agent-int.h"
#include "mgmt-map.h"
#include "mgmt-sync.h"

#include "management.pb-c.h"

/* NetBird's texts, sent verbatim: agents match on some of them. */
#define MSG_NO_AUTH "no peer auth method provided, please use a setup key or interactive SSO login"
#define MSG_BAD_SETUP_KEY "couldn't add peer: setup key is invalid"
#define MSG_ALREADY_REGISTERED "peer has been already registered"
#define MSG_ADD_LABELS "couldn't add peer: setup key doesn't allow extra DNS labels"
#define MSG_LOGIN_LABELS "couldn't login peer: setup key doesn't allow extra DNS labels"
#define MSG_INTERNAL "failed handling request"
#define MSG_USER_NOT_FOUND "failed adding new peer: user not found"
#define MSG_USER_PENDING "user pending approval cannot add peers"

/* The peer's address as NetBird prints it in messages. */
static const char *remote_addr(const mgmt_agent_op *op) {
        const char *ip = mgmt_call_peer_ip(op->call);

        return *ip ? ip : "invalid IP";
}

/* An unexpected store failure: Internal, NetBird's generic text; the
 * store's own message goes to the log only. */
static void fail_internal(mgmt_agent_op *op, const char *what, int r, const cp_error *err) {
        mgmt_agent_fail(op, GRPC_STATUS_INTERNAL, MSG_INTERNAL);
        (void) snprintf(op->detail, sizeof op->detail, "%s: %s", what,
                        err && err->message[0] ? err->message : strerror(-r));
}

/* ---- PeerSystemMeta -> cp_store_peer_meta -------------------------------------- */

int mgmt_login_meta(mgmt_agent_op *op, const Management__PeerSystemMeta *pm, cp_store_peer_meta *m) {
        mgmt_arena *a = &op->arena;

        /* Far beyond any real agent; the store refuses more anyway. */
        if (pm->n_networkaddresses > CP_STORE_META_MAX_ADDRESSES || pm->n_files > CP_STORE_META_MAX_FILES ||
            pm->n_capabilities > CP_STORE_META_MAX_CAPABILITIES) {
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "peer system meta has too many entries");
                return -1;
        }
        *m = (cp_store_peer_meta) {
                .hostname = pm->hostname,
                .go_os = pm->goos,
                .kernel = pm->kernel,
                .core = pm->core,
                .platform = pm->platform,
                .os = pm->os,
                .os_version = pm->osversion,
                .wt_version = pm->netbirdversion,
                .ui_version = pm->uiversion,
                .kernel_version = pm->kernelversion,
                .system_serial_number = pm->sysserialnumber,
                .system_product_name = pm->sysproductname,
                .system_manufacturer = pm->sysmanufacturer,
                .environment_cloud = pm->environment ? pm->environment->cloud : NULL,
                .environment_platform = pm->environment ? pm->environment->platform : NULL,
                .sync_message_version = pm->syncmessageversion,
        };
        if (pm->n_networkaddresses) {
                cp_store_peer_netaddr *na = mgmt_arena_array(a, pm->n_networkaddresses, sizeof *na);
                for (size_t i = 0; i < pm->n_networkaddresses; i++)
                        na[i] = (cp_store_peer_netaddr) { pm->networkaddresses[i]->netip,
                                                          pm->networkaddresses[i]->mac };
                m->network_addresses = na;
                m->n_network_addresses = pm->n_networkaddresses;
        }
        if (pm->n_files) {
                cp_store_peer_file *f = mgmt_arena_array(a, pm->n_files, sizeof *f);
                for (size_t i = 0; i < pm->n_files; i++)
                        f[i] = (cp_store_peer_file) { pm->files[i]->path, pm->files[i]->exist,
                                                      pm->files[i]->processisrunning };
                m->files = f;
                m->n_files = pm->n_files;
        }
        if (pm->flags) {
                const Management__Flags *fl = pm->flags;
                m->flags = (cp_store_peer_flags) {
                        .rosenpass_enabled = fl->rosenpassenabled,
                        .rosenpass_permissive = fl->rosenpasspermissive,
                        .server_ssh_allowed = fl->serversshallowed,
                        .disable_client_routes = fl->disableclientroutes,
                        .disable_server_routes = fl->disableserverroutes,
                        .disable_dns = fl->disabledns,
                        .disable_firewall = fl->disablefirewall,
                        .block_lan_access = fl->blocklanaccess,
                        .block_inbound = fl->blockinbound,
                        .lazy_connection_enabled = fl->lazyconnectionenabled,
                        .disable_ipv6 = fl->disableipv6,
                };
        }
        if (pm->n_capabilities) {
                int32_t *caps = mgmt_arena_array(a, pm->n_capabilities, sizeof *caps);
                for (size_t i = 0; i < pm->n_capabilities; i++)
                        caps[i] = (int32_t) pm->capabilities[i];
                m->capabilities = caps;
                m->n_capabilities = pm->n_capabilities;
        }
        return 0;
}

/* ---- LoginResponse ------------------------------------------------------------- */

/* An SSO peer whose login has run out must log in again with a JWT
 * (section 3.2); setup-key peers never expire. */
bool mgmt_login_expired(const cp_store_peer *p, const cp_store_account_settings *st, int64_t now_ns) {
        if (!p->user_id[0])
                return false;
        if (p->status.login_expired)
                return true;
        return st->login_expiration_enabled && p->login_expiration_enabled && p->last_login_unix_ns > 0 &&
               p->last_login_unix_ns + st->login_expiration_ns <= now_ns;
}

/* sessionExpiresAt (section 6): the deadline of an SSO peer with
 * expiration on, else present but empty ("no expiry"). Never absent on a
 * LoginResponse. */
static Google__Protobuf__Timestamp *session_expires_at(const cp_store_peer *p, const cp_store_account_settings *st,
                                                       mgmt_arena *a) {
        bool tracked = st->login_expiration_enabled && p->user_id[0] && p->login_expiration_enabled &&
                       p->last_login_unix_ns > 0;

        return mgmt_session_expires(a, tracked ? p->last_login_unix_ns + st->login_expiration_ns : 0);
}

/* A protobuf varint at *p (below end); 0 with *p past end when cut. */
static uint64_t read_varint(const uint8_t **p, const uint8_t *end) {
        uint64_t v = 0;
        for (unsigned shift = 0; *p < end && shift < 64; shift += 7) {
                uint8_t b = *(*p)++;
                v |= (uint64_t) (b & 0x7f) << shift;
                if (!(b & 0x80))
                        return v;
        }
        *p = end + 1;
        return 0;
}

/* LoginResponse.Checks, as NetBird's Login sends them: the same as the
 * peer's Sync map carries, taken from the account's cached snapshot at
 * the serial just read (no database read; without one the agent gets
 * them with its first Sync message). The snapshot's bytes are SyncResponse
 * field-6 entries of Checks messages holding field-1 strings. */
static void login_checks(mgmt_agent_op *op, const cp_store_peer *p, int64_t serial,
                         Management__LoginResponse *resp) {
        cp_netmap_account *a = op->agent->maps ? mgmt_maps_peek(op->agent->maps, p->account_id, serial) : NULL;
        const uint8_t *data, *q, *end;
        size_t len, n = 0;
        int64_t idx;

        if (!a)
                return;
        idx = cp_netmap_account_find_peer(a, p->id);
        cp_netmap_account_peer_checks(a, idx < 0 ? SIZE_MAX : (size_t) idx, &data, &len);
        if (!len) {
                cp_netmap_account_unref(a);
                return;
        }
        for (q = data, end = data + len; q < end;) {
                q++;                                    /* field 6 tag */
                q += read_varint(&q, end);
                n++;
        }
        if (n) {
                resp->checks = mgmt_arena_alloc(&op->arena, n * sizeof *resp->checks);
                resp->n_checks = 0;
                for (q = data; q < end && resp->n_checks < n;) {
                        q++;                            /* field 6 tag */
                        uint64_t m_len = read_varint(&q, end);
                        if (q > end || m_len > (uint64_t) (end - q))
                                break;
                        const uint8_t *m_end = q + m_len;
                        if (m_end > end)
                                break;
                        Management__Checks *c = mgmt_arena_alloc(&op->arena, sizeof *c);
                        management__checks__init(c);
                        size_t nf = 0;
                        for (const uint8_t *f = q; f < m_end; nf++) {
                                f++;
                                f += read_varint(&f, m_end);
                        }
                        c->files = mgmt_arena_alloc(&op->arena, (nf ? nf : 1) * sizeof *c->files);
                        while (q < m_end && c->n_files < nf) {
                                q++;            /* field 1 tag */
                                uint64_t sl = read_varint(&q, m_end);
                                if (q > m_end || sl > (uint64_t) (m_end - q))
                                        break;
                                char *s = mgmt_arena_alloc(&op->arena, sl + 1);
                                memcpy(s, q, sl);
                                s[sl] = '\0';
                                c->files[c->n_files++] = s;
                                q += sl;
                        }
                        q = m_end;
                        resp->checks[resp->n_checks++] = c;
                }
        }
        cp_netmap_account_unref(a);
}

static void build_login_response(mgmt_agent_op *op, const cp_store_peer *p, const cp_store_account_settings *st) {
        mgmt_arena *a = &op->arena;
        const char *domain = st->dns_domain[0] ? st->dns_domain : op->agent->config->dns_domain;
        Management__LoginResponse *resp = mgmt_arena_alloc(a, sizeof *resp);
        Management__PeerConfig *pc = mgmt_arena_alloc(a, sizeof *pc);
        Management__SSHConfig *ssh = mgmt_arena_alloc(a, sizeof *ssh);
        Management__AutoUpdateSettings *au = mgmt_arena_alloc(a, sizeof *au);

        management__login_response__init(resp);
        management__peer_config__init(pc);
        management__sshconfig__init(ssh);
        management__auto_update_settings__init(au);

        pc->address = mgmt_arena_printf(a, "%s/%u", p->ip, st->network_prefix_len);
        pc->fqdn = mgmt_arena_printf(a, "%s.%s", p->dns_label, domain);
        /* NetBird gives a peer waiting for approval no SSH (section 3.2
         * step 9), but its open-source validator never finds one waiting
         * (IsNotValidPeer is always false): peer_status_requires_approval
         * is not consulted (docs/protocol.md "Peer approval"). */
        ssh->sshenabled = p->ssh_enabled;
        if (ssh->sshenabled)
                ssh->jwtconfig = mgmt_netconf_jwt_config(op->agent->netconf, a);
        pc->sshconfig = ssh;
        pc->routingpeerdnsresolutionenabled = st->routing_peer_dns_resolution_enabled;
        pc->lazyconnectionenabled = st->lazy_connection_enabled;
        /* The same value the Sync map carries (the account keeps no
         * auto-update setting yet), so Login and Sync agree. */
        au->version = (char *) CP_NETMAP_AUTO_UPDATE_DEFAULT;
        pc->autoupdate = au;

        resp->netbirdconfig = mgmt_netconf_build(op->agent->netconf, cp_now_unix_ns() / 1000000000, a);
        resp->peerconfig = pc;
        resp->sessionexpiresat = session_expires_at(p, st, a);
        op->response = &resp->base;
}

/* ---- Login ------------------------------------------------------------------------ */

typedef struct login_input {
        cp_store_peer_meta meta;
        const char *ssh_key;            /* NULL when the agent sent none */
        const char *const *labels;
        size_t n_labels;
} login_input;

/* NetBird's hostname tweak for SSO registrations: "iphone" and "ipad"
 * get "-<local part of the user's email>" appended. */
static void tweak_hostname(mgmt_agent_op *op, login_input *in, const mgmt_auth_user *u) {
        const char *h = in->meta.hostname;

        if (!h || !u->email[0] || (strcasecmp(h, "iphone") != 0 && strcasecmp(h, "ipad") != 0))
                return;
        in->meta.hostname = mgmt_arena_printf(&op->arena, "%s-%.*s", h, (int) strcspn(u->email, "@"), u->email);
}

/* Registration with a setup key, or with the JWT's user (section 3.3).
 * Returns the new peer, or NULL with op's outcome set. */
static cp_store_peer *register_peer(mgmt_agent_op *op, const Management__LoginRequest *req, const login_input *in,
                                    const mgmt_auth_user *user, int64_t *ret_serial) {
        const char *ip = mgmt_call_peer_ip(op->call);
        cp_store_peer_location where;
        cp_geo_location loc;
        cp_store_peer_register_req rr = {
                .setup_key = req->setupkey,
                .wg_pub_key = op->peer_key,
                .meta = &in->meta,
                .ssh_key = in->ssh_key,
                .extra_dns_labels = in->labels,
                .n_extra_dns_labels = in->n_labels,
                .connection_ip = *ip ? ip : NULL,
                /* NetBird's AddPeer looks the new peer up too. */
                .location = mgmt_peer_location(op->agent, ip, &loc, &where),
                .dns_domain = op->agent->config->dns_domain,
                .user_id = user ? user->user_id : NULL,
        };
        cp_store_peer *p = NULL;
        cp_error err = { 0 };
        int r;

        if (!user && !req->setupkey[0]) {
                /* The agent's cue that it has to register (bare Login first). */
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, MSG_NO_AUTH);
                return NULL;
        }
        /* For metrics: a bare Login of an unknown peer (the agent's first
         * step) stays kind "login"; only the setup-key attempt counts. */
        op->registration = true;
        if (!user) {
                /* Registrations per setup key (--setup-key-rate), keyed by
                 * the hash the store matches (case-insensitive): the
                 * plaintext goes into no table. A key that has no such
                 * hash matches no row either (the store refuses it). */
                char hash[CP_SHA256_B64_LEN];
                int64_t retry_ms = 0;
                if (cp_crypto_setup_key_hash(req->setupkey, hash) == 0 &&
                    !mgmt_limits_take(op->agent->limits, MGMT_LIMIT_LOGIN_KEY, hash, strlen(hash), &retry_ms)) {
                        mgmt_agent_fail(op, GRPC_STATUS_RESOURCE_EXHAUSTED, MGMT_MSG_RATE_LIMITED);
                        op->rate_limited = true;
                        (void) snprintf(op->detail, sizeof op->detail,
                                        "registration rate limit of the setup key (retry in %lld ms)",
                                        (long long) retry_ms);
                        return NULL;
                }
        }
        r = cp_store_peer_register(op->agent->store, &rr, &p, ret_serial, &err);
        switch (r) {
        case 0:
                return p;
        case -ENOKEY:
                mgmt_agent_fail(op, GRPC_STATUS_NOT_FOUND, MSG_BAD_SETUP_KEY);
                break;
        case -EEXIST:
                mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION, MSG_ALREADY_REGISTERED);
                break;
        case -EPERM:
                mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION, MSG_ADD_LABELS);
                break;
        case -ENOENT:
                mgmt_agent_fail(op, GRPC_STATUS_NOT_FOUND, MSG_USER_NOT_FOUND);
                break;
        case -EACCES:
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, MSG_USER_PENDING);
                break;
        case -EHOSTDOWN:
                /* Not PermissionDenied: the agent would stop and ask for a
                 * login; with FailedPrecondition it retries with backoff. */
                mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION, CP_STORE_MSG_SUSPENDED);
                break;
        case -EDQUOT:
                /* The agent retries with backoff: a raised limit lets it in. */
                mgmt_agent_fail(op, GRPC_STATUS_RESOURCE_EXHAUSTED, CP_STORE_MSG_DEVICE_LIMIT);
                break;
        default:
                /* -EINVAL (a bad extra label, a hostname without a label)
                 * included: NetBird maps invalid arguments to Internal too. */
                fail_internal(op, "cannot register peer", r, &err);
                return NULL;
        }
        (void) snprintf(op->detail, sizeof op->detail, "%s", err.message);
        return NULL;
}

/* A known peer logging in with a JWT (section 3.2 step 4): the owner
 * must be the JWT's user and not blocked; an expired login is renewed
 * (last_login, login_expired, event 49) and the account's peers are told.
 * Returns 0, 1 when the peer was deleted meanwhile (register instead),
 * or -1 with op's outcome set. */
static int sso_login(mgmt_agent_op *op, cp_store_peer *p, const mgmt_auth_user *u) {
        cp_store_sso_login sl = { 0 };
        cp_error err = { 0 };
        int r = cp_store_peer_sso_login(op->agent->store, p->account_id, p->id, u->user_id,
                                        op->agent->config->dns_domain, &sl, &err);

        switch (r) {
        case 0:
                break;
        case -ENOENT:
                return 1;
        case -EACCES:
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, MGMT_MSG_NOT_OWNER);
                return -1;
        case -EPERM:
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, MGMT_MSG_BLOCKED);
                return -1;
        default:
                fail_internal(op, "cannot log the SSO peer in", r, &err);
                return -1;
        }
        if (sl.refreshed) {
                p->last_login_unix_ns = sl.last_login_unix_ns;
                p->status.login_expired = false;
                /* Committed: the peer leaves the others' offlinePeers. */
                mgmt_sync_local_change(op->agent->sync, p->account_id, sl.serial);
        }
        return 0;
}

static void login(mgmt_agent_op *op) {
        const Management__LoginRequest *req = (const Management__LoginRequest *) op->request;
        _cleanup_store_peer_ cp_store_peer *p = NULL;
        cp_store_account_settings st;
        login_input in = { 0 };
        mgmt_auth_user user;
        bool sso = false;
        cp_error err = { 0 };
        unsigned changed = 0;
        int64_t serial = 0;
        int r;

        if (!req->meta) {
                mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION,
                                "peer system meta has to be provided to log in. Peer %s, remote addr %s",
                                op->peer_key, remote_addr(op));
                return;
        }
        if (mgmt_login_meta(op, req->meta, &in.meta) < 0)
                return;
        if (req->jwttoken[0]) {
                /* NetBird validates the JWT before anything else, so this
                 * comes first for known peers too (mgmt-auth.c; without an
                 * identity provider it is refused). */
                if (mgmt_auth_jwt(op, req->jwttoken, &user) < 0)
                        return;
                sso = true;
        }
        if (req->peerkeys && req->peerkeys->sshpubkey.len > 0) {
                char *k = mgmt_arena_alloc(&op->arena, req->peerkeys->sshpubkey.len + 1);
                memcpy(k, req->peerkeys->sshpubkey.data, req->peerkeys->sshpubkey.len);
                in.ssh_key = k;
        }
        in.labels = (const char *const *) req->dnslabels;
        in.n_labels = req->n_dnslabels;

        /* The peer and its account's settings in one round trip. */
        r = cp_store_peer_lookup(op->agent->store, op->peer_key, &p, &st, NULL, &err);
        if (r < 0 && r != -ENOENT) {
                fail_internal(op, "cannot look the peer up", r, &err);
                return;
        }
        if (r == 0) {
                /* A known peer (section 3.2). */
                snprintf(op->account, sizeof op->account, "%s", p->account_id);
                if (st.suspended) {
                        mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION, CP_STORE_MSG_SUSPENDED);
                        return;
                }
                if (sso) {
                        r = sso_login(op, p, &user);
                        if (r < 0)
                                return;
                } else if (mgmt_login_expired(p, &st, cp_now_unix_ns())) {
                        mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, MGMT_MSG_EXPIRED);
                        return;
                }
        }
        if (p && r == 1)
                /* Deleted since the lookup: carry on as for an unknown key. */
                p = cp_store_peer_free(p);
        if (p) {
                cp_store_peer_login_req lr = {
                        .meta = &in.meta,
                        .ssh_key = in.ssh_key,
                        .connection_ip = *mgmt_call_peer_ip(op->call) ? mgmt_call_peer_ip(op->call) : NULL,
                        .n_extra_dns_labels = in.n_labels,
                };
                r = cp_store_peer_login_update(op->agent->store, p->account_id, p->id, &lr, &changed, &serial,
                                               &err);
                if (r == -EPERM) {
                        mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION, MSG_LOGIN_LABELS);
                        return;
                }
                if (r == -ENOENT) {
                        /* Deleted since the lookup (a Logout racing this
                         * Login): carry on as for an unknown key. */
                        p = cp_store_peer_free(p);
                        op->account[0] = '\0';
                } else if (r < 0) {
                        fail_internal(op, "cannot update the peer", r, &err);
                        return;
                } else if (changed & CP_STORE_PEER_CHANGED_SERIAL) {
                        /* Committed, and other peers see it (version, SSH key), or
                         * posture checks read what changed. */
                        mgmt_sync_local_change(op->agent->sync, p->account_id, serial);
                }
        }
        if (!p) {
                if (sso)
                        tweak_hostname(op, &in, &user);
                p = register_peer(op, req, &in, sso ? &user : NULL, &serial);
                if (!p)
                        return;
                /* Committed: the account's other peers see the new one. */
                mgmt_sync_local_change(op->agent->sync, p->account_id, serial);
                snprintf(op->account, sizeof op->account, "%s", p->account_id);
                r = cp_store_account_get_settings(op->agent->store, p->account_id, &st, &err);
                if (r < 0) {
                        fail_internal(op, "cannot read the account settings", r, &err);
                        return;
                }
        }
        build_login_response(op, p, &st);
        login_checks(op, p, serial, (Management__LoginResponse *) op->response);
}

/* The setup key and the JWT are wiped as soon as Login is done with
 * them, and the whole arena (every copy protobuf-c made while unpacking)
 * when the call ends; calls without either skip that pass. */
void mgmt_login(mgmt_agent_op *op) {
        Management__LoginRequest *req = (Management__LoginRequest *) op->request;

        op->wipe = req->setupkey[0] || req->jwttoken[0];
        login(op);
        cp_explicit_bzero(req->setupkey, strlen(req->setupkey));
        cp_explicit_bzero(req->jwttoken, strlen(req->jwttoken));
}

/* ---- SyncMeta and Logout ---------------------------------------------------------- */

/* The peer of the request's key, or NULL with NotFound / Internal set;
 * writers (SyncMeta) also refuse a suspended account as Login does. */
static cp_store_peer *lookup(mgmt_agent_op *op, bool write) {
        cp_store_account_settings st;
        cp_store_peer *p = NULL;
        cp_error err = { 0 };
        int r = cp_store_peer_lookup(op->agent->store, op->peer_key, &p, &st, NULL, &err);

        if (r == -ENOENT) {
                mgmt_agent_fail(op, GRPC_STATUS_NOT_FOUND, "peer not found: %s", op->peer_key);
                return NULL;
        }
        if (r < 0) {
                fail_internal(op, "cannot look the peer up", r, &err);
                return NULL;
        }
        snprintf(op->account, sizeof op->account, "%s", p->account_id);
        if (write && st.suspended) {
                mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION, CP_STORE_MSG_SUSPENDED);
                cp_store_peer_free(p);
                return NULL;
        }
        return p;
}

void mgmt_sync_meta(mgmt_agent_op *op) {
        const Management__SyncMetaRequest *req = (const Management__SyncMetaRequest *) op->request;
        _cleanup_store_peer_ cp_store_peer *p = NULL;
        cp_store_peer_meta meta;
        cp_error err = { 0 };
        int r;

        if (!req->meta) {
                mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION,
                                "peer system meta has to be provided on sync. Peer %s, remote addr %s",
                                op->peer_key, remote_addr(op));
                return;
        }
        if (mgmt_login_meta(op, req->meta, &meta) < 0)
                return;
        p = lookup(op, true);
        if (!p)
                return;
        cp_store_peer_login_req lr = { .meta = &meta };
        unsigned changed = 0;
        int64_t serial = 0;
        r = cp_store_peer_login_update(op->agent->store, p->account_id, p->id, &lr, &changed, &serial, &err);
        if (r == -ENOENT)
                mgmt_agent_fail(op, GRPC_STATUS_NOT_FOUND, "peer not found: %s", op->peer_key);
        else if (r < 0)
                fail_internal(op, "cannot update the peer meta", r, &err);
        else if (changed)
                /* NetBird fans out on every SyncMeta; what our maps show of
                 * a peer changes only with its stored meta, so an
                 * unchanged meta pushes nothing. */
                mgmt_sync_local_change(op->agent->sync, p->account_id, serial);
}

/* The deleted peer's last SyncResponse (§3.5), packed in op's arena; the
 * peer's stream seals it with the key pair it opened with (the agent may
 * hold an older server key than the one this Logout was sealed to). NULL
 * when the map cannot be read (the stream then just ends). */
static uint8_t *deleted_message(mgmt_agent_op *op, const char *account_id, size_t *ret_len) {
        const mgmt_agent *ag = op->agent;
        mgmt_map *map = NULL;
        cp_error err = { 0 };
        uint8_t *plain = NULL;

        if (mgmt_maps_get(ag->maps, account_id, &map, &err) < 0) {
                (void) snprintf(op->detail, sizeof op->detail, "no last map for the stream: %s", err.message);
                return NULL;
        }
        if (mgmt_map_pack_deleted(map, &op->arena, &plain, ret_len) < 0)
                plain = NULL;
        mgmt_map_unref(map);
        return plain;
}

void mgmt_logout(mgmt_agent_op *op) {
        _cleanup_store_peer_ cp_store_peer *p = lookup(op, false);
        cp_error err = { 0 };
        int64_t serial = 0;
        uint8_t *last;
        size_t last_len = 0;
        int r;

        if (!p)
                return;
        r = cp_store_peer_delete(op->agent->store, p->account_id, p->id, NULL, op->agent->config->dns_domain,
                                 &serial, &err);
        if (r == -ENOENT) {
                mgmt_agent_fail(op, GRPC_STATUS_NOT_FOUND, "peer not found: %s", op->peer_key);
                return;
        }
        if (r < 0) {
                fail_internal(op, "cannot delete the peer", r, &err);
                return;
        }
        /* Committed: the peer's stream gets its last map and ends; the
         * others lose the peer. */
        last = deleted_message(op, p->account_id, &last_len);
        mgmt_sync_peer_deleted(op->agent->sync, p->account_id, p->id, last, last ? last_len : 0, serial);
}
