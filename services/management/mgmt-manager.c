#include "cp/base.h"
#include "cp/bus.h"
#include "cp/geo.h"
#include "cp/log.h"
#include "cp/store.h"
#include "cp/util.h"
#include "mgmt-agent.h"
#include "mgmt-datakey.h"
#include "mgmt-grpc.h"
#include "mgmt-http.h"
#include "mgmt-manager.h"
#include "mgmt-map.h"
#include "mgmt-metrics.h"
#include "mgmt-proxy-rpc.h"
#include "mgmt-proxy.h"
#include "mgmt-limits.h"
#include "mgmt-malloc.h"
#include "mgmt-realip.h"
#include "mgmt-ready.h"
#include "mgmt-replica.h"
#include "mgmt-service.h"
#include "mgmt-sync.h"
#include "mgmt-work.h"

#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/eventfd.h>

/* After the grace period, gRPC gets this much longer to finish cancelling
 * before the loop gives up on it. */
#define SHUTDOWN_SLACK_MS 5000
/* How long to wait for a readiness check stuck inside the store. */
#define READY_STOP_MS 2000
/* Jobs that may wait for a worker, per worker, before RPCs are refused
 * with RESOURCE_EXHAUSTED. */
#define QUEUE_PER_WORKER 256
/* NB_MAX_CONCURRENT_SYNCS (NetBird's variable and default): Sync opens in
 * progress at once; a negative value lifts the cap. */
#define DEFAULT_MAX_SYNCS 1000
/* How long shutdown waits for the replica thread to deregister. */
#define REPLICA_STOP_MS 3000
/* How often the server key is re-read when the serial check is off. */
#define KEY_POLL_DEFAULT_MS 5000
/* How often a spread drain ends its next slice of Sync streams. */
#define DRAIN_STEP_MS 50

typedef struct mgmt_post {
        struct mgmt_post *next;
        mgmt_post_fn fn;
        void *userdata;
} mgmt_post;

/* Redis refused our password or ACL (cp_bus on_refused): the readiness
 * checker's "bus" gate reads it from its thread, degraded() from the
 * loop's. Apart from the manager because a checker stuck in the store
 * outlives it (then it leaks). */
typedef struct bus_refusal {
        pthread_mutex_t lock;
        char why[200];                  /* "" = not refused */
        bool subscribed;                /* the bus got through once (on_bus_state(true)) */
        bool was_ready;                 /* every check passed once, on the bus: a refusal only degrades */
} bus_refusal;

struct mgmt_manager {
        const cp_config *config;        /* borrowed */
        mgmt_tls *tls;
        struct event_base *base;
        cp_store *store;
        mgmt_netconf *netconf;
        mgmt_keys *keys;                /* the server key pairs; wiped in mgmt_manager_free */
        atomic_bool key_reload_queued;  /* a poll job is waiting or running */
        atomic_bool malloc_tick_queued; /* an idle-trim job is waiting or running */
        mgmt_workers *workers;
        mgmt_agent agent;               /* borrows store, config, netconf, key, sync, maps */
        mgmt_maps *maps;
        mgmt_sync *sync;
        mgmt_proxy *proxy;              /* management.ProxyService */
        mgmt_ready *ready;
        mgmt_grpc *grpc;
        mgmt_http *http;
        cp_api *api;                    /* the REST API, served by http on the workers */
        mgmt_prpc *prpc;                /* ProxyService's unary RPCs, the proxy OIDC callback, access logs */
        cp_jwt *jwt;                    /* IdP token validator; NULL without an IdP configured */
        cp_geo *geo;                    /* geolocation databases of the datadir (maybe none) */
        mgmt_realip *realip;            /* trusted reverse proxies; NULL = none */
        mgmt_limits *limits;            /* rate limits of this replica (docs/ops.md "Limits") */
        cp_identity_options identity;   /* borrows config */
        mgmt_replica *replica;
        cp_bus *bus;                    /* NULL without --redis-url; loop thread */
        bus_refusal *bus_refusal;       /* read by the readiness checker's "bus" gate */
        char replica_id[CP_ID_LEN + 1];

        struct event *sig_term, *sig_int, *wake, *deadline, *serial_tick, *expiry_tick,
                *refresh_tick, *retry_tick, *key_tick, *proxy_tick, *drain_tick, *malloc_tick;
        int wake_fd;

        pthread_mutex_t posts_lock;
        mgmt_post *posts_head, **posts_tail;

        bool shutting_down;
        bool grpc_stopped;
        bool leak_on_free;              /* a thread is stuck: do not free what it uses */
        int result;
};

static const cp_log_ctx log_ctx = { .component = "manager" };

/* ---- cross-thread hand-off ------------------------------------------------ */

void mgmt_manager_post(mgmt_manager *m, mgmt_post_fn fn, void *userdata) {
        mgmt_post *p = cp_xcalloc(1, sizeof *p);
        uint64_t one = 1;

        p->fn = fn;
        p->userdata = userdata;
        pthread_mutex_lock(&m->posts_lock);
        *m->posts_tail = p;
        m->posts_tail = &p->next;
        pthread_mutex_unlock(&m->posts_lock);
        /* An eventfd counter only fails to take a write when it would
         * overflow, and then the loop is already due to wake up. */
        (void) !write(m->wake_fd, &one, sizeof one);
}

static void on_wake(evutil_socket_t fd, short what, void *userdata) {
        mgmt_manager *m = userdata;
        uint64_t n;
        mgmt_post *list;

        (void) !read(fd, &n, sizeof n);
        pthread_mutex_lock(&m->posts_lock);
        list = m->posts_head;
        m->posts_head = NULL;
        m->posts_tail = &m->posts_head;
        pthread_mutex_unlock(&m->posts_lock);
        while (list) {
                mgmt_post *p = list;
                list = p->next;
                p->fn(m, p->userdata);
                free(p);
        }
}

/* ---- shutdown ------------------------------------------------------------- */

/* The loop ends once gRPC has stopped and every REST request handed to
 * the workers has been answered (none may be left to a freed loop). */
static void maybe_exit(mgmt_manager *m) {
        if (!m->grpc_stopped || mgmt_http_pending(m->http) > 0)
                return;
        if (m->deadline)
                event_del(m->deadline);
        (void) event_base_loopexit(m->base, NULL);
}

static void on_grpc_stopped_loop(mgmt_manager *m, void *userdata) {
        m->grpc_stopped = true;
        if (m->drain_tick)
                event_del(m->drain_tick);
        maybe_exit(m);
}

static void on_http_idle(void *userdata) {
        mgmt_manager *m = userdata;

        if (m->shutting_down)
                maybe_exit(m);
}

/* Runs on the CQ thread: hand over to the loop. */
static void on_grpc_stopped(mgmt_grpc *g, void *userdata) {
        mgmt_manager_post(userdata, on_grpc_stopped_loop, NULL);
}

static void on_deadline(evutil_socket_t fd, short what, void *userdata) {
        mgmt_manager *m = userdata;

        cp_log(&log_ctx, CP_LOG_ERROR, "gRPC server did not stop in time; exiting anyway");
        m->result = -ETIMEDOUT;
        m->leak_on_free = true;
        (void) event_base_loopbreak(m->base);
}

/* Every DRAIN_STEP_MS while a drain is spread over --drain-window. */
static void on_drain_tick(evutil_socket_t fd, short what, void *userdata) {
        mgmt_manager *m = userdata;

        if (m->grpc_stopped || !mgmt_sync_drain_step(m->sync))
                event_del(m->drain_tick);
}

static void begin_shutdown(mgmt_manager *m, const char *why) {
        int64_t grace = m->config->shutdown_timeout_ms;
        int64_t window = m->config->drain_window_ms;
        char buf[32], wbuf[32];

        m->shutting_down = true;
        mgmt_replica_draining(m->replica);
        if (m->serial_tick)
                event_del(m->serial_tick);
        if (m->expiry_tick)
                event_del(m->expiry_tick);
        if (m->refresh_tick)
                event_del(m->refresh_tick);
        if (m->retry_tick)
                event_del(m->retry_tick);
        if (m->key_tick)
                event_del(m->key_tick);
        if (m->proxy_tick)
                event_del(m->proxy_tick);
        if (m->malloc_tick)
                event_del(m->malloc_tick);
        (void) snprintf(buf, sizeof buf, "%" PRId64 "ms", grace);
        (void) snprintf(wbuf, sizeof wbuf, "%" PRId64 "ms", window);
        cp_log_kv(&log_ctx, CP_LOG_INFO, "shutting down", "signal", why, "grace", buf, "drain_window", wbuf,
                  NULL);
        /* The listener stays until we exit: /readyz answers 503
         * "draining" (a probe sees the replica leave, not a refused
         * connection), REST requests 503 (docs/ops.md, "Shutdown and
         * drain"). */
        mgmt_http_draining(m->http);
        /* No new calls (a new Sync gets UNAVAILABLE from gRPC). */
        mgmt_grpc_shutdown(m->grpc, grace);
        /* Streams never end by themselves: end them, spread over the
         * drain window so their agents do not all reconnect at once; the
         * fenced disconnects run before we exit. */
        if (window > 0) {
                struct timeval step = { .tv_sec = 0, .tv_usec = DRAIN_STEP_MS * 1000 };
                m->drain_tick = event_new(m->base, -1, EV_PERSIST, on_drain_tick, m);
                if (!m->drain_tick || event_add(m->drain_tick, &step) < 0)
                        window = 0;     /* no timer: all at once */
        }
        mgmt_sync_drain(m->sync, window);
        mgmt_proxy_drain(m->proxy);

        int64_t limit = grace + SHUTDOWN_SLACK_MS;
        struct timeval tv = { .tv_sec = limit / 1000, .tv_usec = (limit % 1000) * 1000 };
        m->deadline = evtimer_new(m->base, on_deadline, m);
        if (m->deadline)
                (void) evtimer_add(m->deadline, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *userdata) {
        mgmt_manager *m = userdata;
        const char *name = sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "signal";

        if (!m->shutting_down) {
                begin_shutdown(m, name);
                return;
        }
        cp_log_kv(&log_ctx, CP_LOG_WARN, "second signal: cancelling in-flight calls now", "signal", name, NULL);
        mgmt_grpc_cancel_now(m->grpc);
}

/* ---- periodic serial check -------------------------------------------------- */

/* Every --serial-check-interval: the sync hub re-reads its accounts'
 * serials on a worker (never on this thread or the CQ thread). */
static void on_serial_tick(evutil_socket_t fd, short what, void *userdata) {
        mgmt_manager *m = userdata;

        if (!m->shutting_down)
                mgmt_sync_check_serials(m->sync);
}

/* Every --login-expiry-check-interval: expired SSO logins are marked in
 * the database (on a worker); every replica does it, each peer once. */
static void on_expiry_tick(evutil_socket_t fd, short what, void *userdata) {
        mgmt_manager *m = userdata;

        if (!m->shutting_down)
                mgmt_sync_expire_logins(m->sync);
}

/* While time-based TURN credentials or relay tokens are configured: the
 * sync hub sends fresh ones to the streams that are due (one scan on the
 * CQ thread; building and sealing on workers). */
static void on_refresh_tick(evutil_socket_t fd, short what, void *userdata) {
        mgmt_manager *m = userdata;

        if (!m->shutting_down)
                mgmt_sync_refresh_credentials(m->sync);
}

/* ---- the server key --------------------------------------------------------------- */

/* Any thread: a reload retired a server key. */
static void on_key_dropped(const char *pub_b64, void *userdata) {
        mgmt_manager *m = userdata;

        mgmt_sync_end_key(m->sync, pub_b64);
}

/* Worker: re-read the server key (a rotation made by the admin CLI). */
static void key_reload_work(void *userdata) {
        mgmt_manager *m = userdata;

        (void) mgmt_keys_reload(m->keys);
        atomic_store(&m->key_reload_queued, false);
}

/* A periodic job on a worker, one at a time: queued unless the last one
 * is still waiting or running (*queued, cleared by the job at its end). */
static void submit_once(mgmt_manager *m, atomic_bool *queued, mgmt_work_fn fn) {
        if (m->shutting_down || atomic_exchange(queued, true))
                return;
        if (mgmt_workers_submit(m->workers, fn, m, false) < 0)
                atomic_store(queued, false);
}

/* Every serial-check interval (5 s when that is off): a rotation reaches
 * this replica within one interval even when no agent has the new key
 * yet; agents that do have it are served at once (mgmt_agent_open_request
 * reloads on a miss). One poll at a time; never on this thread. */
static void on_key_tick(evutil_socket_t fd, short what, void *userdata) {
        mgmt_manager *m = userdata;

        submit_once(m, &m->key_reload_queued, key_reload_work);
}

/* ---- the bus between replicas -------------------------------------------------- */

typedef struct announce_post {
        int64_t serial;
        char account_id[CP_BUS_ACCOUNT_ID_MAX + 1];
} announce_post;

/* Loop thread: publish (fire-and-forget; the others' serial checks are
 * the safety net when it is dropped). */
static void on_announce_loop(mgmt_manager *m, void *userdata) {
        announce_post *a = userdata;

        if (m->bus)
                (void) cp_bus_publish(m->bus, a->account_id, a->serial);
        free(a);
}

/* Any thread (a worker): a REST change committed; same path as a
 * change committed by the agent protocol. */
static void api_announce(const char *account_id, int64_t serial, void *userdata) {
        mgmt_manager *m = userdata;

        mgmt_sync_local_change(m->sync, account_id, serial);
}

/* Any thread (a worker): the REST API committed proxy mapping changes or
 * revoked a proxy token. */
static void api_proxy_announce(int64_t seq, void *userdata) {
        mgmt_manager_proxy_changed(userdata, seq);
}

/* Any thread (a worker): the agent protocol (CreateExpose, StopExpose,
 * the expiry sweep) committed proxy mapping changes. */
static void agent_proxy_changed(void *userdata, int64_t seq) {
        mgmt_manager_proxy_changed(userdata, seq);
}

static void api_proxy_token_revoked(const char *token_id, void *userdata) {
        mgmt_manager_proxy_token_revoked(userdata, token_id);
}

/* Any thread: the REST API's look into the Sync path's snapshots. */
static struct cp_netmap_account *api_snapshot_peek(const char *account_id, int64_t serial, void *userdata) {
        mgmt_manager *m = userdata;

        return mgmt_maps_peek(m->maps, account_id, serial);
}

/* A worker: GET /api/reverse-proxy/callback (the proxy OIDC flow). */
static void proxy_callback(const char *query, const char *remote, int *ret_status, char **ret_location,
                           char **ret_body, void *userdata) {
        mgmt_manager *m = userdata;

        mgmt_prpc_oidc_callback(m->prpc, query, remote, ret_status, ret_location, ret_body);
}

typedef struct http_post {
        void (*fn)(void *arg);
        void *arg;
} http_post;

static void on_http_post(mgmt_manager *m, void *userdata) {
        http_post *p = userdata;

        p->fn(p->arg);
        free(p);
}

/* The HTTP listener's hand-off to the loop thread. */
static void http_post_fn(void (*fn)(void *arg), void *arg, void *userdata) {
        http_post *p = cp_xcalloc(1, sizeof *p);

        p->fn = fn;
        p->arg = arg;
        mgmt_manager_post(userdata, on_http_post, p);
}

/* Any thread: the sync hub's announce hook for changes committed here. */
static void announce(const char *account_id, int64_t serial, void *userdata) {
        mgmt_manager *m = userdata;
        announce_post *a;

        if (strlen(account_id) > CP_BUS_ACCOUNT_ID_MAX)
                return;
        a = cp_xcalloc(1, sizeof *a);
        a->serial = serial;
        memcpy(a->account_id, account_id, strlen(account_id) + 1);
        mgmt_manager_post(m, on_announce_loop, a);
}

/* Loop thread: another replica (or this one) committed a change. Real
 * account ids never start with '~' (cp_id_new's alphabet; the REST API
 * makes no others): those are the ProxyService's pseudo-accounts. */
static void on_bus_message(const char *account_id, int64_t serial, int64_t sent_ms, void *userdata) {
        mgmt_manager *m = userdata;

        mgmt_metrics_bus_message(sent_ms);
        /* Every message is a hint: the serial or sequence number it
         * carries is never trusted (anyone who can publish on Redis could
         * forge it); what changed is read from the database. */
        (void) serial;
        if (account_id[0] == '~') {
                if (strcmp(account_id, MGMT_PROXY_BUS_CHANGES) == 0)
                        mgmt_proxy_changed(m->proxy, 0);        /* every stream re-reads its change log */
                else if (strcmp(account_id, MGMT_PROXY_BUS_TOKENS) == 0)
                        mgmt_proxy_token_revoked(m->proxy, NULL);
                return;
        }
        mgmt_sync_account_hint_sent(m->sync, account_id, sent_ms);
}

/* Any thread: this replica committed proxy mapping changes up to seq:
 * its own streams now, the other replicas through the bus. */
void mgmt_manager_proxy_changed(mgmt_manager *m, int64_t seq) {
        mgmt_proxy_changed(m->proxy, seq);
        announce(MGMT_PROXY_BUS_CHANGES, seq, m);
}

/* Any thread: a proxy access token was revoked (or deleted) here. The
 * bus hint carries no id (not a number): every replica re-checks the
 * tokens of its streams. */
void mgmt_manager_proxy_token_revoked(mgmt_manager *m, const char *token_id) {
        mgmt_proxy_token_revoked(m->proxy, token_id);
        announce(MGMT_PROXY_BUS_TOKENS, cp_now_unix_ns() / 1000000, m);
}

/* Loop thread. A refusal is a configuration error (wrong password, ACL),
 * not an outage: /readyz says so until Redis accepts us again (503 for a
 * replica never ready yet, "degraded" after). */
static void on_bus_refused(const char *why, void *userdata) {
        mgmt_manager *m = userdata;

        pthread_mutex_lock(&m->bus_refusal->lock);
        (void) snprintf(m->bus_refusal->why, sizeof m->bus_refusal->why, "%s", why ? why : "");
        pthread_mutex_unlock(&m->bus_refusal->lock);
        if (why)
                cp_log_kv(&log_ctx, CP_LOG_ERROR, "the bus cannot work until Redis accepts us", "error",
                          why, "hint", "check the password (and the ACL user) in --redis-url / NB_CACHE_REDIS_ADDRESS",
                          NULL);
        else
                cp_log(&log_ctx, CP_LOG_INFO, "Redis accepts our credentials again");
}

/* Checker thread: the "bus" readiness gate, the last one (reached only
 * when everything else passed). A refusal fails readiness only until this
 * replica has been ready once with the bus working (the first checks run
 * before Redis answered): a new pod with a bad Secret never takes traffic
 * and a rolling update stops at it, but a credential change on a running
 * Redis does not take every replica out at once (serving works without
 * the bus: the serial check); degraded() reports it then. */
static int bus_gate(void *userdata, char *why, size_t why_size) {
        bus_refusal *b = userdata;
        int r = 0;

        pthread_mutex_lock(&b->lock);
        if (b->why[0] && !b->was_ready) {
                (void) snprintf(why, why_size, "%s", b->why);
                r = -EACCES;
        } else if (b->subscribed)
                b->was_ready = true;
        pthread_mutex_unlock(&b->lock);
        return r;
}

static void on_bus_state(bool up, void *userdata) {
        mgmt_manager *m = userdata;

        mgmt_metrics_bus_state(up);
        if (up) {
                pthread_mutex_lock(&m->bus_refusal->lock);
                m->bus_refusal->subscribed = true;
                pthread_mutex_unlock(&m->bus_refusal->lock);
                cp_log(&log_ctx, CP_LOG_INFO, "bus subscribed");
                /* Whatever was published while we were away is gone:
                 * catch up from the database. */
                mgmt_sync_check_serials(m->sync);
                mgmt_proxy_changed(m->proxy, 0);
                mgmt_proxy_token_revoked(m->proxy, NULL);
        } else
                cp_log(&log_ctx, CP_LOG_WARN, "bus lost; changes from other replicas arrive by the serial check "
                       "until it is back");
}

/* /readyz: the bus is optional for serving, so down means degraded. So
 * does an IdP we have no signing keys from: agents with setup keys and
 * existing peers are still served (docs/auth.md, "Key fetching and
 * readiness"), only IdP tokens are refused. Both down: "bus,idp". */
static const char *degraded(char *why, size_t n, void *userdata) {
        mgmt_manager *m = userdata;
        const char *part = NULL;
        char idp[400];
        bool refused = false;

        if (m->bus_refusal) {
                pthread_mutex_lock(&m->bus_refusal->lock);
                if (m->bus_refusal->why[0]) {
                        (void) snprintf(why, n, "%s", m->bus_refusal->why);
                        refused = true;
                }
                pthread_mutex_unlock(&m->bus_refusal->lock);
        }
        if (refused) {
                part = "bus";
        } else if (m->bus && !cp_bus_is_subscribed(m->bus)) {
                (void) snprintf(why, n, "not subscribed to Redis; changes from other replicas arrive by the "
                                "serial check");
                part = "bus";
        } else if (m->bus && !cp_bus_can_publish(m->bus)) {
                (void) snprintf(why, n, "cannot publish to Redis; other replicas see changes made here by "
                                "their serial check");
                part = "bus";
        }
        if (m->jwt && !cp_jwt_status(m->jwt, idp, sizeof idp)) {
                if (part) {
                        size_t len = strnlen(why, n);
                        (void) snprintf(why + len, n - len, "; idp: no signing keys yet: %s", idp);
                        return "bus,idp";
                }
                (void) snprintf(why, n, "idp: no signing keys yet: %s", idp);
                return "idp";
        }
        return part;
}

/* The IdP token validator, when HttpConfig names an IdP: an issuer (or an
 * OIDC config endpoint), an audience and where the keys are. Without one
 * of them, IdP tokens are refused and agents use setup keys only. */
/* The geolocation databases of the datadir (NetBird's file names; never
 * downloaded). Missing files are a state, logged once; a database that
 * cannot be read is logged and left out, as NetBird proceeds without
 * geolocation then. */
static int open_geo(mgmt_manager *m, cp_error *reterr) {
        const char *dir = m->config->datadir ? m->config->datadir : "";
        cp_error err = { 0 };
        int r;

        r = cp_geo_open(&(cp_geo_options) { .dir = dir }, &m->geo, &err);
        if (r < 0) {
                cp_log_kv(&log_ctx, CP_LOG_WARN, "geolocation database unusable; proceeding without it",
                          "error", err.message, NULL);
                r = cp_geo_open(&(cp_geo_options) { .dir = NULL }, &m->geo, reterr);
                if (r < 0)
                        return r;
        }
        const char *mmdb = cp_geo_mmdb_path(m->geo), *names = cp_geo_names_path(m->geo);
        mgmt_metrics_geo(*mmdb != '\0', *names != '\0');
        cp_log_kv(&log_ctx, *mmdb ? CP_LOG_INFO : CP_LOG_WARN,
                  *mmdb ? "geolocation enabled" : "geolocation disabled: no GeoLite2-City_*.mmdb in the datadir;"
                  " peer locations stay unknown",
                  "datadir", dir, "mmdb", *mmdb ? mmdb : "none", "geonames", *names ? names : "none",
                  "countries", cp_geo_countries_source(m->geo), NULL);
        return 0;
}

static int open_jwt(mgmt_manager *m, cp_error *reterr) {
        const mgmt_netconf *n = m->netconf;
        const cp_config *cfg = m->config;
        bool oidc = n->oidc_config_endpoint && *n->oidc_config_endpoint;
        int r;

        m->identity.single_account_domain = cfg->disable_single_account_mode ? NULL :
                                            cfg->single_account_mode_domain;
        if (!oidc && !(n->auth_issuer && *n->auth_issuer))
                return 0;
        if (!oidc && !(n->auth_keys_location && *n->auth_keys_location)) {
                cp_log(&log_ctx, CP_LOG_WARN, "HttpConfig.AuthIssuer is set but neither AuthKeysLocation nor "
                       "OIDCConfigEndpoint: IdP tokens are refused");
                return 0;
        }
        /* NetBird's GetAuthAudiences() (AuthAudience, ExtraAuthAudience,
         * the device flow's audience) plus the PKCE flow's audience: the
         * tokens `netbird up` gets through PKCE carry it, and an operator
         * whose PKCE client differs from the dashboard's expects them to
         * log peers in (docs/auth.md). */
        cp_jwt_config jc = {
                .issuer = n->auth_issuer,
                .audiences = { n->auth_audience, n->extra_auth_audience, n->device.audience, n->pkce.audience },
                .keys_location = n->auth_keys_location,
                .oidc_config_endpoint = oidc ? n->oidc_config_endpoint : NULL,
                .user_id_claim = n->auth_user_id_claim,
                .key_refresh_enabled = cfg->idp_sign_key_refresh_enabled,
        };
        if (!jc.audiences[0] || !*jc.audiences[0]) {
                cp_log(&log_ctx, CP_LOG_WARN, "HttpConfig.AuthAudience is empty: IdP tokens are refused");
                return 0;
        }
        r = cp_jwt_new(&jc, &m->jwt, reterr);
        if (r < 0) {
                cp_error_prefix(reterr, "HttpConfig");
                return r;
        }
        mgmt_metrics_watch_jwt(m->jwt);
        m->netconf->jwt = m->jwt;
        cp_log_kv(&log_ctx, CP_LOG_INFO, "IdP token validation on", "issuer",
                  oidc ? n->oidc_config_endpoint : n->auth_issuer, "key_refresh",
                  cfg->idp_sign_key_refresh_enabled ? "true" : "false", NULL);
        return 0;
}

/* Replica thread: we were reaped while cut off from the database. */
static void on_replica_lost(void *userdata) {
        mgmt_manager *m = userdata;

        mgmt_sync_reconnect_all(m->sync);
}

static void format_address(char *out, size_t n, const char *address, int port) {
        if (strchr(address, ':') && address[0] != '[')
                (void) snprintf(out, n, "[%s]:%d", address, port);
        else
                (void) snprintf(out, n, "%s:%d", address, port);
}

/* Every second: fenced disconnects that failed are retried when due. */
static void on_retry_tick(evutil_socket_t fd, short what, void *userdata) {
        mgmt_manager *m = userdata;

        if (!m->shutting_down)
                mgmt_sync_retry_disconnects(m->sync);
}

/* ---- setup ---------------------------------------------------------------- */

static int open_store(mgmt_manager *m, cp_error *reterr) {
        const cp_config *c = m->config;
        cp_store_migrate_result mr = { 0 };
        char applied[16], current[16], unknown[16];
        int r;

        r = cp_store_open(c->postgres_dsn, (unsigned) c->db_pool_size, &m->store, reterr);
        if (r < 0) {
                cp_error_prefix(reterr, "cannot connect to PostgreSQL");
                return r;
        }
        /* Replicas starting together serialise on the store's advisory lock. */
        r = cp_store_migrate(m->store, &mr, reterr);
        if (r < 0) {
                cp_error_prefix(reterr, "cannot apply database migrations");
                return r;
        }
        (void) snprintf(applied, sizeof applied, "%u", mr.applied);
        (void) snprintf(current, sizeof current, "%u", mr.current);
        (void) snprintf(unknown, sizeof unknown, "%u", mr.unknown);
        cp_log_kv(&log_ctx, CP_LOG_INFO, "database schema ready", "applied", applied, "already_applied", current,
                  "unknown", unknown, NULL);
        return 0;
}

/* The deployment's server key pairs (shared by every replica through the
 * database, sealed with the DataStoreEncryptionKey). */
static int load_server_key(mgmt_manager *m, const uint8_t data_key[32], cp_error *reterr) {
        int r = mgmt_keys_new(m->store, data_key, &m->keys, reterr);

        if (r < 0)
                cp_error_prefix(reterr, "cannot load the server key");
        return r;
}

/* CQ thread, before any call: both services learn the server. */
static void on_grpc_start(mgmt_grpc *g, void *userdata) {
        mgmt_manager *m = userdata;

        mgmt_sync_on_grpc_start(g, m->sync);
        mgmt_proxy_on_grpc_start(g, m->proxy);
}

/* Every second: the ProxyService's periodic work (each task keeps its own
 * interval). */
static void on_proxy_tick(evutil_socket_t fd, short what, void *userdata) {
        mgmt_manager *m = userdata;

        if (!m->shutting_down)
                mgmt_proxy_tick(m->proxy);
}

static void malloc_tick_work(void *userdata) {
        mgmt_manager *m = userdata;

        (void) mgmt_malloc_idle_tick(cp_now_mono_ms());
        atomic_store(&m->malloc_tick_queued, false);
}

/* Every MGMT_MALLOC_TICK_MS: memory kept for fan-outs goes back to the
 * kernel once they stop (mgmt-malloc.h). On a worker: a trim after a
 * large fan-out walks every arena and may take tens of milliseconds,
 * which this loop (HTTP, /readyz) must not wait for. One at a time. */
static void on_malloc_tick(evutil_socket_t fd, short what, void *userdata) {
        mgmt_manager *m = userdata;

        submit_once(m, &m->malloc_tick_queued, malloc_tick_work);
}

/* A positive integer or duration from the environment ("NAME=30s");
 * 0 (the hub's default) when unset or invalid (logged). */
static int64_t env_ms(const char *name) {
        const char *v = getenv(name);
        int64_t ms;

        if (!v || !*v)
                return 0;
        if (cp_parse_duration_ms(v, &ms) < 0 || ms <= 0) {
                cp_log_kv(&log_ctx, CP_LOG_ERROR, "invalid duration; using the default", "name", name, "value", v,
                          NULL);
                return 0;
        }
        return ms;
}

/* The ProxyService hub; its knobs come from the environment like
 * NetBird's NB_PROXY_SNAPSHOT_BATCH_SIZE (docs/proxy.md). */
static int open_proxy(mgmt_manager *m, const uint8_t data_key[32], cp_error *reterr) {
        const char *v = getenv("NB_PROXY_SNAPSHOT_BATCH_SIZE");
        int64_t batch = 0;

        if (v && *v && cp_parse_int64(v, 1, 100000, &batch) < 0) {
                cp_log_kv(&log_ctx, CP_LOG_ERROR, "invalid NB_PROXY_SNAPSHOT_BATCH_SIZE; using the default",
                          "value", v, NULL);
                batch = 0;
        }
        mgmt_proxy_options po = {
                .store = m->store, .data_key = data_key, .replica_id = m->replica_id, .batch_size = (int) batch,
                .ack_timeout_ms = env_ms("NB_PROXY_ACK_TIMEOUT"),
                .token_check_ms = env_ms("NB_PROXY_TOKEN_CHECK_INTERVAL"),
                .heartbeat_ms = env_ms("NB_PROXY_HEARTBEAT_INTERVAL"),
                .stale_ms = env_ms("NB_PROXY_STALE_AFTER"),
                .poll_ms = m->config->serial_check_interval_ms,
        };
        m->proxy = mgmt_proxy_new(&po);
        (void) reterr;
        return 0;
}

static int max_syncs(void) {
        const char *v = getenv("NB_MAX_CONCURRENT_SYNCS");
        int64_t n;

        if (!v || !*v)
                return DEFAULT_MAX_SYNCS;
        if (cp_parse_int64(v, INT32_MIN, INT32_MAX, &n) < 0) {
                cp_log_kv(&log_ctx, CP_LOG_ERROR, "invalid NB_MAX_CONCURRENT_SYNCS; using the default", "value", v,
                          NULL);
                return DEFAULT_MAX_SYNCS;
        }
        return n < 0 ? -1 : (int) n;
}

static void log_listening(const char *protocol, const char *address, int port, const char *tls) {
        char p[16], addr[300];

        (void) snprintf(p, sizeof p, "%d", port);
        format_address(addr, sizeof addr, address, port);
        cp_log_kv(&log_ctx, CP_LOG_INFO, "listening", "protocol", protocol, "address", addr, "port", p,
                  "tls", tls, NULL);
}

int mgmt_manager_new(const cp_config *cfg, mgmt_tls *tls, mgmt_netconf *netconf, const uint8_t data_key[32],
                     mgmt_manager **ret, cp_error *reterr) {
        mgmt_manager *m = cp_xcalloc(1, sizeof *m);
        /* Both services on one server, as NetBird's: the agents' first,
         * then ProxyService's. */
        mgmt_rpc_method methods[MGMT_SERVICE_N_METHODS + MGMT_PROXY_N_METHODS];
        int r;

        m->config = cfg;
        m->tls = tls;
        m->netconf = netconf;
        m->wake_fd = -1;
        m->posts_tail = &m->posts_head;
        pthread_mutex_init(&m->posts_lock, NULL);
        m->bus_refusal = cp_xcalloc(1, sizeof *m->bus_refusal);
        pthread_mutex_init(&m->bus_refusal->lock, NULL);

        m->base = event_base_new();
        if (!m->base) {
                r = cp_error_set(reterr, -ENOMEM, "cannot create the event loop");
                goto fail;
        }
        m->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (m->wake_fd < 0) {
                r = cp_error_set(reterr, -errno, "cannot create an eventfd: %s", strerror(errno));
                goto fail;
        }
        m->wake = event_new(m->base, m->wake_fd, EV_READ | EV_PERSIST, on_wake, m);
        m->sig_term = evsignal_new(m->base, SIGTERM, on_signal, m);
        m->sig_int = evsignal_new(m->base, SIGINT, on_signal, m);
        if (!m->wake || !m->sig_term || !m->sig_int || event_add(m->wake, NULL) < 0 ||
            event_add(m->sig_term, NULL) < 0 || event_add(m->sig_int, NULL) < 0) {
                r = cp_error_set(reterr, -ENOMEM, "cannot register loop events");
                goto fail;
        }

        r = open_store(m, reterr);
        if (r < 0)
                goto fail;
        mgmt_metrics_watch_store(m->store);
        r = load_server_key(m, data_key, reterr);
        if (r < 0)
                goto fail;
        /* A new id for every process start; fenced connects record it as
         * the owner of their session, so register before serving. */
        cp_id_new(m->replica_id);
        cp_store_set_replica_id(m->store, m->replica_id);
        mgmt_replica_options ro = {
                .id = m->replica_id, .dsn = cfg->postgres_dsn, .name = cfg->replica_name,
                .version = MGMT_VERSION, .heartbeat_ms = cfg->heartbeat_interval_ms,
                .expiry_ms = cfg->replica_expiry_ms, .on_lost = on_replica_lost, .userdata = m,
        };
        r = mgmt_replica_new(&ro, &m->replica, reterr);
        if (r < 0)
                goto fail;
        mgmt_metrics_watch_replica(m->replica);
        /* As many workers as database connections: a worker then rarely
         * waits for a connection, and the CQ thread never does. */
        r = mgmt_workers_new((unsigned) cfg->db_pool_size, (size_t) cfg->db_pool_size * QUEUE_PER_WORKER,
                             &m->workers, reterr);
        if (r < 0)
                goto fail;
        r = open_jwt(m, reterr);
        if (r < 0)
                goto fail;
        r = open_geo(m, reterr);
        if (r < 0)
                goto fail;
        r = mgmt_realip_new(cfg->trusted_proxies, &m->realip, reterr);
        if (r < 0)
                goto fail;
        m->limits = mgmt_limits_new(cfg);
        m->maps = mgmt_maps_new(m->store, cfg, m->netconf);
        m->agent = (mgmt_agent) { .store = m->store, .config = cfg, .netconf = m->netconf, .keys = m->keys,
                                  .maps = m->maps, .jwt = m->jwt, .identity = m->identity,
                                  .geo = m->geo, .proxy_changed = agent_proxy_changed,
                                  .proxy_changed_userdata = m, .limits = m->limits };
        m->sync = mgmt_sync_new(&m->agent, m->maps, max_syncs());
        m->agent.sync = m->sync;
        mgmt_sync_set_announce(m->sync, announce, m);
        {
                mgmt_prpc_options po = { .store = m->store, .data_key = data_key, .file = cfg->source.file,
                                         .dns_domain = cfg->dns_domain, .jwt = m->jwt, .geo = m->geo,
                                         .account_changed = api_announce, .userdata = m };
                r = mgmt_prpc_new(&po, &m->prpc, reterr);
                if (r < 0)
                        goto fail;
        }
        mgmt_keys_set_on_dropped(m->keys, on_key_dropped, m);
        if (cfg->redis_url && *cfg->redis_url) {
                /* Redis being down is not fatal: the bus keeps trying. */
                cp_bus_callbacks cb = { .on_message = on_bus_message, .on_state = on_bus_state,
                                        .on_refused = on_bus_refused, .userdata = m };
                r = cp_bus_new(m->base, cfg->redis_url, cfg->bus_channel_prefix, &cb, &m->bus, reterr);
                if (r < 0) {
                        cp_error_prefix(reterr, "--redis-url");
                        goto fail;
                }
                mgmt_metrics_watch_bus(m->bus);
        }
        mgmt_service_methods(methods);
        r = open_proxy(m, data_key, reterr);
        if (r < 0)
                goto fail;
        mgmt_proxy_methods(m->proxy, methods + MGMT_SERVICE_N_METHODS);
        mgmt_proxy_set_unary(m->proxy, m->prpc);
        {
                mgmt_ready_gate gates[] = {
                        { "data_key", mgmt_datakey_gate, m->store },
                        { "bus", bus_gate, m->bus_refusal },   /* last: see bus_gate() */
                };
                r = mgmt_ready_new_gates(m->store, gates, ELEMENTSOF(gates), &m->ready);
        }
        if (r < 0) {
                r = cp_error_set(reterr, r, "cannot start the readiness checker: %s", strerror(-r));
                goto fail;
        }
        mgmt_metrics_watch_ready(m->ready);

        mgmt_grpc_options go = {
                .address = cfg->listen_address,
                .port = (int) cfg->port,
                .tls = m->tls,
                .methods = methods,
                .n_methods = ELEMENTSOF(methods),
                .userdata = &m->agent,
                .workers = m->workers,
                .on_stopped = on_grpc_stopped,
                .stopped_userdata = m,
                .on_start = on_grpc_start,
                .start_userdata = m,
                .realip = m->realip,
                .max_streams_per_connection = cfg->grpc_max_streams_per_connection,
                .max_connections = cfg->grpc_max_connections,
                .threads = (int) cfg->grpc_threads,
        };
        r = mgmt_grpc_new(&go, &m->grpc, reterr);
        if (r < 0)
                goto fail;
        r = mgmt_http_new(m->base, cfg->listen_address, (int) cfg->http_port, m->ready, &m->http, reterr);
        if (r < 0)
                goto fail;
        mgmt_http_set_degraded(m->http, degraded, m);
        mgmt_http_set_limits(m->http, m->limits, m->realip, cfg->http_max_connections);
        {
                cp_api_options ao = { .store = m->store, .dns_domain = cfg->dns_domain, .version = MGMT_VERSION,
                                      .announce = api_announce, .announce_userdata = m,
                                      .snapshot_peek = api_snapshot_peek, .snapshot_userdata = m,
                                      .jwt = m->jwt, .identity = m->identity, .geo = m->geo,
                                      .data_key = data_key,
                                      .proxy_announce = api_proxy_announce, .proxy_announce_userdata = m,
                                      .proxy_token_revoked = api_proxy_token_revoked,
                                      .proxy_callback = proxy_callback, .proxy_callback_userdata = m,
                                      .msp_dns_server = cfg->msp_dns_server,
                                      .rest_token_limit = mgmt_limits_table(m->limits, MGMT_LIMIT_REST_TOKEN),
                                      .rest_addr_limit = mgmt_limits_table(m->limits, MGMT_LIMIT_REST_ADDR) };
                r = cp_api_new(&ao, &m->api, reterr);
                if (r < 0)
                        goto fail;
                mgmt_http_set_api(m->http, m->api, m->workers, http_post_fn, m);
                mgmt_http_on_idle(m->http, on_http_idle, m);
        }
        {
                char ga[300], ha[300];
                format_address(ga, sizeof ga, cfg->listen_address, mgmt_grpc_port(m->grpc));
                format_address(ha, sizeof ha, cfg->listen_address, mgmt_http_port(m->http));
                r = mgmt_replica_set_addresses(m->replica, ga, ha, reterr);
                if (r < 0)
                        goto fail;
        }

        if (cfg->serial_check_interval_ms > 0) {
                int64_t ms = cfg->serial_check_interval_ms;
                struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
                m->serial_tick = event_new(m->base, -1, EV_PERSIST, on_serial_tick, m);
                if (!m->serial_tick || event_add(m->serial_tick, &tv) < 0) {
                        r = cp_error_set(reterr, -ENOMEM, "cannot register the serial check timer");
                        goto fail;
                }
        }
        if (cfg->login_expiry_check_interval_ms > 0) {
                int64_t ms = cfg->login_expiry_check_interval_ms;
                struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
                m->expiry_tick = event_new(m->base, -1, EV_PERSIST, on_expiry_tick, m);
                if (!m->expiry_tick || event_add(m->expiry_tick, &tv) < 0) {
                        r = cp_error_set(reterr, -ENOMEM, "cannot register the login expiry timer");
                        goto fail;
                }
        }
        if (mgmt_sync_refresh_tick_ms(m->sync) > 0) {
                int64_t ms = mgmt_sync_refresh_tick_ms(m->sync);
                struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
                m->refresh_tick = event_new(m->base, -1, EV_PERSIST, on_refresh_tick, m);
                if (!m->refresh_tick || event_add(m->refresh_tick, &tv) < 0) {
                        r = cp_error_set(reterr, -ENOMEM, "cannot register the credential refresh timer");
                        goto fail;
                }
        }

        {
                int64_t ms = cfg->serial_check_interval_ms > 0 ? cfg->serial_check_interval_ms : KEY_POLL_DEFAULT_MS;
                struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
                m->key_tick = event_new(m->base, -1, EV_PERSIST, on_key_tick, m);
                if (!m->key_tick || event_add(m->key_tick, &tv) < 0) {
                        r = cp_error_set(reterr, -ENOMEM, "cannot register the server key timer");
                        goto fail;
                }
        }
        {
                struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };
                m->proxy_tick = event_new(m->base, -1, EV_PERSIST, on_proxy_tick, m);
                if (!m->proxy_tick || event_add(m->proxy_tick, &tv) < 0) {
                        r = cp_error_set(reterr, -ENOMEM, "cannot register the proxy timer");
                        goto fail;
                }
        }
        {
                struct timeval tv = { .tv_sec = MGMT_MALLOC_TICK_MS / 1000, .tv_usec = 0 };
                m->malloc_tick = event_new(m->base, -1, EV_PERSIST, on_malloc_tick, m);
                if (!m->malloc_tick || event_add(m->malloc_tick, &tv) < 0) {
                        r = cp_error_set(reterr, -ENOMEM, "cannot register the memory trim timer");
                        goto fail;
                }
        }
        {
                struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };
                m->retry_tick = event_new(m->base, -1, EV_PERSIST, on_retry_tick, m);
                if (!m->retry_tick || event_add(m->retry_tick, &tv) < 0) {
                        r = cp_error_set(reterr, -ENOMEM, "cannot register the disconnect retry timer");
                        goto fail;
                }
        }

        log_listening("grpc", cfg->listen_address, mgmt_grpc_port(m->grpc), m->tls ? "true" : "false");
        log_listening("http", cfg->listen_address, mgmt_http_port(m->http), "false");
        cp_log_kv(&log_ctx, CP_LOG_INFO, "replica started", "replica_id", m->replica_id, "bus",
                  m->bus ? "redis" : "none", NULL);
        *ret = m;
        return 0;

fail:
        mgmt_manager_free(m);
        return r;
}

int mgmt_manager_run(mgmt_manager *m) {
        if (event_base_dispatch(m->base) < 0)
                return -EIO;
        return m->result;
}

mgmt_manager *mgmt_manager_free(mgmt_manager *m) {
        if (!m)
                return NULL;
        mgmt_http_stop_accepting(m->http);
        if (m->grpc && !m->grpc_stopped && !m->leak_on_free) {
                /* Failed start-up or an unexpected loop exit: stop gRPC now
                 * and wait for its thread (pending posts are dropped). */
                mgmt_grpc_shutdown(m->grpc, 0);
        }
        if (m->leak_on_free) {
                /* gRPC's thread is stuck: leave it, the store and the rest
                 * in place; the process exits right after. */
                cp_log(&log_ctx, CP_LOG_WARN, "skipping cleanup: a thread did not stop");
                mgmt_keys_forget(m->keys);
                return NULL;
        }
        m->grpc = mgmt_grpc_free(m->grpc);
        /* Every stream's fenced disconnect has run: say goodbye (and mark
         * anything still owned disconnected). After a failed start the
         * row is removed the same way. */
        mgmt_metrics_unwatch_replica(m->replica);
        if (m->replica && !mgmt_replica_stop(m->replica, true, REPLICA_STOP_MS))
                m->leak_on_free = true;
        m->replica = NULL;
        mgmt_metrics_unwatch_bus(m->bus);
        m->bus = cp_bus_free(m->bus);
        /* gRPC waited for every offloaded job, so the queue is empty. */
        m->workers = mgmt_workers_free(m->workers);
        /* No worker is left to queue an access log: write what is queued. */
        m->prpc = mgmt_prpc_free(m->prpc);
        /* No worker is left to open a request or poll the key. */
        m->agent.keys = NULL;
        m->keys = mgmt_keys_free(m->keys);
        /* No stream and no job is left. */
        m->sync = mgmt_sync_free(m->sync);
        m->proxy = mgmt_proxy_free(m->proxy);
        m->maps = mgmt_maps_free(m->maps);
        m->http = mgmt_http_free(m->http);
        m->api = cp_api_free(m->api);
        /* No worker, stream or REST request is left to validate a token. */
        mgmt_metrics_unwatch_jwt(m->jwt);
        if (m->netconf)
                m->netconf->jwt = NULL;
        m->jwt = cp_jwt_free(m->jwt);
        m->agent.geo = NULL;
        m->geo = cp_geo_free(m->geo);
        m->realip = mgmt_realip_free(m->realip);
        m->agent.limits = NULL;
        m->limits = mgmt_limits_free(m->limits);
        mgmt_metrics_unwatch_store(m->store);
        mgmt_metrics_unwatch_ready(m->ready);
        bool store_free = mgmt_ready_stop(m->ready, READY_STOP_MS);
        if (store_free) {
                m->store = cp_store_free(m->store);
                if (m->bus_refusal) {
                        pthread_mutex_destroy(&m->bus_refusal->lock);
                        free(m->bus_refusal);
                }
        } else
                cp_log(&log_ctx, CP_LOG_WARN, "readiness check stuck in the store; not closing the store");
        if (m->serial_tick)
                event_free(m->serial_tick);
        if (m->expiry_tick)
                event_free(m->expiry_tick);
        if (m->refresh_tick)
                event_free(m->refresh_tick);
        if (m->retry_tick)
                event_free(m->retry_tick);
        if (m->key_tick)
                event_free(m->key_tick);
        if (m->proxy_tick)
                event_free(m->proxy_tick);
        if (m->malloc_tick)
                event_free(m->malloc_tick);
        if (m->drain_tick)
                event_free(m->drain_tick);
        if (m->deadline)
                event_free(m->deadline);
        if (m->wake)
                event_free(m->wake);
        if (m->sig_term)
                event_free(m->sig_term);
        if (m->sig_int)
                event_free(m->sig_int);
        if (m->base)
                event_base_free(m->base);
        if (m->wake_fd >= 0)
                (void) close(m->wake_fd);
        while (m->posts_head) {
                mgmt_post *p = m->posts_head;
                m->posts_head = p->next;
                free(p);
        }
        pthread_mutex_destroy(&m->posts_lock);
        mgmt_tls_free(m->tls);
        m->netconf = mgmt_netconf_free(m->netconf);
        free(m);
        return NULL;
}
