/*
 * bus.c: Redis pub/sub "account serial" bus (see cp/bus.h and README.md).
 *
 * hiredis 0.14.1 rules this file is built around:
 *   - a failed connect calls our connect callback and then frees the
 *     context itself: conn->ac is cleared in that callback and never freed;
 *   - a connection that drops (or that we free once connected) runs every
 *     pending reply callback with a NULL reply, then the disconnect
 *     callback, then frees the context: conn->ac is cleared there;
 *   - a context we free before it connected runs no callback at all, so
 *     whoever frees it clears conn->ac first;
 *   - there is no connect timeout (no redisAsyncSetTimeout): we keep our own
 *     timer per attempt and free the context when it fires.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>

#include "cp/alloc.h"
#include "cp/base.h"
#include "cp/bus.h"
#include "cp/util.h"

#define BUS_BACKOFF_MIN_MS      100
#define BUS_BACKOFF_MAX_MS      5000
/* From connect() until connected (publish) or subscribed (subscribe). */
#define BUS_ATTEMPT_TIMEOUT_MS  3000
/* Publishes handed to hiredis and not yet answered; beyond this Redis is
 * too slow and we drop rather than grow the output buffer without bound. */
#define BUS_MAX_PENDING         4096
#define BUS_PREFIX_MAX          64
#define BUS_CHANNEL_SUFFIX      ":account-serial"

enum { CONN_SUB, CONN_PUB };

/* What Redis refused on a connection, so that only the matching success
 * clears it: the PONG after AUTH clears an authentication refusal; a
 * NOPERM clears only once the refused command itself goes through
 * (SUBSCRIBE confirmed, PUBLISH answered with its count). */
enum { REFUSED_NONE, REFUSED_AUTH, REFUSED_PERM };

typedef struct bus_conn {
        cp_bus *bus;
        int kind;
        redisAsyncContext *ac;  /* NULL: none (waiting to retry, or freed) */
        bool up;                /* publish: connected; subscribe: subscribed */
        bool started;           /* first attempt made (later ones count as reconnects) */
        int refused;            /* REFUSED_*: what Redis refused on this connection */
        int backoff_ms;
        struct event *retry;    /* next attempt */
        struct event *timeout;  /* current attempt took too long */
} bus_conn;

struct cp_bus {
        struct event_base *base;
        char *host;
        int port;
        char *user;             /* NULL: "AUTH password" (the default user) */
        char *password;         /* NULL: no AUTH; zeroed before it is freed */
        char refused[200];      /* last refusal reported to on_refused, "" = none */
        char *channel;
        cp_bus_callbacks cb;
        bus_conn sub, pub;
        unsigned pending;       /* publishes awaiting a reply */
        bool freeing;
        int in_callback;        /* inside a caller's callback */

        _Atomic uint64_t published, publish_dropped, received, malformed, reconnects, auth_failures;
};

#define COUNT(bus, field) atomic_fetch_add_explicit(&(bus)->field, 1, memory_order_relaxed)

static void conn_start(bus_conn *conn);

/* ---- parsing ------------------------------------------------------------ */

static bool account_id_valid(const char *s, size_t n) {
        if (n == 0 || n > CP_BUS_ACCOUNT_ID_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) s[i] < 0x21 || (unsigned char) s[i] > 0x7e)
                        return false;
        return true;
}

/* A decimal 0..INT64_MAX without sign or leading zeros, p[0..n). */
static int parse_decimal(const char *p, size_t n, int64_t *ret) {
        int64_t v = 0;

        if (n == 0 || n > 19 || (n > 1 && p[0] == '0'))
                return -EBADMSG;
        for (size_t i = 0; i < n; i++) {
                int d = p[i] - '0';
                if (d < 0 || d > 9)
                        return -EBADMSG;
                if (v > (INT64_MAX - d) / 10)
                        return -EBADMSG;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

int cp_bus_parse_payload(const char *payload, size_t len, char account_id[CP_BUS_ACCOUNT_ID_MAX + 1],
                         int64_t *ret_serial, int64_t *ret_sent_ms) {
        const char *sp, *num, *sp2;
        size_t idlen, n;
        int64_t serial, sent = 0;

        if (!payload)
                return -EBADMSG;
        sp = memchr(payload, ' ', len);
        if (!sp)
                return -EBADMSG;
        idlen = (size_t) (sp - payload);
        if (!account_id_valid(payload, idlen))
                return -EBADMSG;
        num = sp + 1;
        n = len - idlen - 1;
        sp2 = memchr(num, ' ', n);
        if (sp2) {
                /* The optional third field: the publisher's clock. */
                size_t rest = n - (size_t) (sp2 - num) - 1;
                if (parse_decimal(sp2 + 1, rest, &sent) < 0)
                        return -EBADMSG;
                n = (size_t) (sp2 - num);
        }
        if (parse_decimal(num, n, &serial) < 0)
                return -EBADMSG;
        memcpy(account_id, payload, idlen);
        account_id[idlen] = '\0';
        *ret_serial = serial;
        if (ret_sent_ms)
                *ret_sent_ms = sent;
        return 0;
}

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Percent-decodes s[0..n) into a new string; NULL for a bad escape or a
 * NUL byte (AUTH could not carry it). */
static char *percent_decode(const char *s, size_t n) {
        char *out = cp_xmalloc(n + 1), *o = out;

        for (size_t i = 0; i < n; i++) {
                if (s[i] != '%') {
                        *o++ = s[i];
                        continue;
                }
                int hi = i + 1 < n ? hexval(s[i + 1]) : -1;
                int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
                if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                        cp_explicit_bzero(out, n + 1);
                        free(out);
                        return NULL;
                }
                *o++ = (char) (hi * 16 + lo);
                i += 2;
        }
        *o = '\0';
        return out;
}

typedef struct bus_url {
        char *host;
        int port;
        char *user;             /* NULL = none */
        char *password;         /* NULL = none */
} bus_url;

static void bus_url_release(bus_url *u) {
        free(u->host);
        free(u->user);
        if (u->password) {
                cp_explicit_bzero(u->password, strlen(u->password));
                free(u->password);
        }
        *u = (bus_url) { 0 };
}

/* NetBird's (go-redis) form "redis://[[user]:password@]host[:port][/db]";
 * host may be "[v6]"; user and password are percent-decoded. A user
 * without a password ("redis://name@host") sends no AUTH, as go-redis.
 * No error message ever quotes the userinfo. */
static int parse_url(const char *url, bus_url *ret, cp_error *reterr) {
        static const char scheme[] = "redis://", tls_scheme[] = "rediss://";
        const char *p, *h, *hend, *auth_end, *at = NULL;
        int64_t port = 6379, db;
        bus_url u = { 0 };

        if (url && strncmp(url, tls_scheme, sizeof(tls_scheme) - 1) == 0)
                return cp_error_set(reterr, -EPROTONOSUPPORT,
                                    "redis url: rediss:// (TLS) is not supported: this build's hiredis (0.14) has no "
                                    "TLS; use redis:// on a private network or a local TLS tunnel (docs/database-ha.md)");
        if (!url || strncmp(url, scheme, sizeof(scheme) - 1) != 0)
                return cp_error_set(reterr, -EINVAL, "redis url must start with redis://");
        p = url + sizeof(scheme) - 1;
        /* The authority ends at the first '/', '?' or '#'; the userinfo
         * at its last '@'. */
        auth_end = p + strcspn(p, "/?#");
        for (const char *c = p; c < auth_end; c++)
                if (*c == '@')
                        at = c;
        /* An '@' past the authority: a user or password holding a raw
         * '/', '?' or '#' cut it short.  Quote nothing: the rest is the
         * secret. */
        if (strchr(auth_end, '@'))
                return cp_error_set(reterr, -EINVAL,
                                    "redis url: the user or password contains an unencoded '/', '?' or '#'; "
                                    "percent-encode it");
        if (at) {
                const char *colon = memchr(p, ':', (size_t) (at - p));
                if (colon) {
                        if (colon > p) {
                                u.user = percent_decode(p, (size_t) (colon - p));
                                if (!u.user)
                                        goto bad_userinfo;
                        }
                        if (at > colon + 1) {
                                u.password = percent_decode(colon + 1, (size_t) (at - colon - 1));
                                if (!u.password)
                                        goto bad_userinfo;
                        }
                        if (!u.password && u.user) {
                                free(u.user);
                                u.user = NULL;
                        }
                }
                /* "name@host": a user name alone; no AUTH (as go-redis). */
                p = at + 1;
        }
        if (*p == '[') {
                h = p + 1;
                hend = strchr(h, ']');
                if (!hend) {
                        bus_url_release(&u);
                        return cp_error_set(reterr, -EINVAL, "redis url: unterminated [ in host");
                }
                p = hend + 1;
        } else {
                h = p;
                hend = p + strcspn(p, ":/?#");
                p = hend;
        }
        if (hend == h || hend - h > 255) {
                bus_url_release(&u);
                return cp_error_set(reterr, -EINVAL, "redis url: bad host length");
        }
        for (const char *c = h; c < hend; c++)
                if (*c == '@' || *c == '?' || *c == '#' || (unsigned char) *c <= 0x20) {
                        bus_url_release(&u);
                        return cp_error_set(reterr, -EINVAL, "redis url: bad character in host");
                }
        if (*p == ':') {
                const char *ps = p + 1;
                size_t n = strcspn(ps, "/?#");
                char buf[8];
                if (n == 0 || n >= sizeof(buf)) {
                        bus_url_release(&u);
                        return cp_error_set(reterr, -EINVAL, "redis url: bad port");
                }
                memcpy(buf, ps, n);
                buf[n] = '\0';
                if (cp_parse_int64(buf, 1, 65535, &port) < 0) {
                        bus_url_release(&u);
                        return cp_error_set(reterr, -EINVAL, "redis url: bad port (1-65535)");
                }
                p = ps + n;
        }
        if (*p == '/') {
                p++;
                size_t n = strcspn(p, "?#");
                char buf[16];
                if (n >= sizeof(buf) || (n > 0 && (memcpy(buf, p, n), buf[n] = '\0',
                                                   cp_parse_int64(buf, 0, 1000000, &db) < 0))) {
                        bus_url_release(&u);
                        return cp_error_set(reterr, -EINVAL, "redis url: bad database number");
                }
                p += n;
        }
        if (*p == '?' || *p == '#') {
                bus_url_release(&u);
                return cp_error_set(reterr, -EINVAL, "redis url: options (?...) are not supported");
        }
        if (*p) {
                bus_url_release(&u);
                return cp_error_set(reterr, -EINVAL, "redis url: trailing \"%s\"", p);
        }
        u.host = cp_xstrndup(h, (size_t) (hend - h));
        u.port = (int) port;
        *ret = u;
        return 0;

bad_userinfo:
        bus_url_release(&u);
        return cp_error_set(reterr, -EINVAL, "redis url: bad percent-encoding in the user or password");
}

/* ---- caller callbacks ------------------------------------------------- */

static void notify_state(cp_bus *bus, bool up) {
        if (bus->freeing || !bus->cb.on_state)
                return;
        bus->in_callback++;
        bus->cb.on_state(up, bus->cb.userdata);
        bus->in_callback--;
}

/* Tells the caller when the bus-wide refusal changes: the first refusing
 * connection's reason, or NULL once both connections got through. */
static void refusal_changed(cp_bus *bus, const char *why) {
        if (bus->freeing)
                return;
        if (why) {
                if (strcmp(bus->refused, why) == 0)
                        return;
                (void) snprintf(bus->refused, sizeof bus->refused, "%s", why);
        } else {
                if (!bus->refused[0] || bus->sub.refused || bus->pub.refused)
                        return;
                bus->refused[0] = '\0';
        }
        if (!bus->cb.on_refused)
                return;
        bus->in_callback++;
        bus->cb.on_refused(why, bus->cb.userdata);
        bus->in_callback--;
}

/* Redis answered an error that means our credentials or the ACL user's
 * permissions are wrong (not a passing fault): NOAUTH, WRONGPASS, NOPERM,
 * or any error to AUTH. The text never contains the password. */
static bool is_refusal(const char *err) {
        return strncmp(err, "NOAUTH", 6) == 0 || strncmp(err, "WRONGPASS", 9) == 0 ||
               strncmp(err, "NOPERM", 6) == 0 || strncmp(err, "ERR invalid password", 20) == 0 ||
               strncmp(err, "ERR AUTH", 8) == 0 || strncmp(err, "ERR Client sent AUTH", 20) == 0;
}

static void conn_refused(bus_conn *conn, const char *err) {
        char why[200];

        bool perm = strncmp(err, "NOPERM", 6) == 0;

        COUNT(conn->bus, auth_failures);
        conn->refused = perm ? REFUSED_PERM : REFUSED_AUTH;
        (void) snprintf(why, sizeof why, "Redis refused %s: %s",
                        perm ? "a command (ACL permissions)" : "authentication", err);
        /* Control characters from the server are not for logs. */
        for (char *c = why; *c; c++)
                if ((unsigned char) *c < 0x20 || *c == 0x7f)
                        *c = ' ';
        refusal_changed(conn->bus, why);
        /* The attempt timer, still armed, drops this connection and retries. */
}

/* kind: what got through: REFUSED_AUTH (PING answered after AUTH) clears
 * only an authentication refusal; REFUSED_PERM (the refused command
 * itself) clears either. */
static void conn_accepted(bus_conn *conn, int kind) {
        if (!conn->refused || (kind == REFUSED_AUTH && conn->refused != REFUSED_AUTH))
                return;
        conn->refused = REFUSED_NONE;
        refusal_changed(conn->bus, NULL);
}

/* ---- connection state machine ----------------------------------------- */

static void schedule_retry(bus_conn *conn) {
        cp_bus *bus = conn->bus;
        struct timeval tv;
        int ms;

        if (bus->freeing || conn->ac || evtimer_pending(conn->retry, NULL))
                return;
        evtimer_del(conn->timeout);
        /* +-20 % so replicas that lost Redis together do not return in step. */
        ms = conn->backoff_ms * 8 / 10 + (int) cp_random_uniform((uint64_t) conn->backoff_ms * 4 / 10 + 1);
        conn->backoff_ms = conn->backoff_ms * 2 > BUS_BACKOFF_MAX_MS ? BUS_BACKOFF_MAX_MS : conn->backoff_ms * 2;
        tv.tv_sec = ms / 1000;
        tv.tv_usec = (ms % 1000) * 1000;
        evtimer_add(conn->retry, &tv);
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
        conn_start(arg);
}

/* The attempt took too long (SYN into the void, Redis hung before
 * answering SUBSCRIBE): drop it and retry. */
static void on_attempt_timeout(evutil_socket_t fd, short what, void *arg) {
        bus_conn *conn = arg;
        redisAsyncContext *ac = conn->ac;

        if (!ac)
                return;
        /* Cleared first: an unconnected context gets no disconnect callback. */
        conn->ac = NULL;
        redisAsyncFree(ac);
        schedule_retry(conn);
}

static void on_pub_reply(redisAsyncContext *ac, void *r, void *privdata) {
        cp_bus *bus = privdata;
        redisReply *reply = r;

        assert(bus->pending > 0);
        bus->pending--;
        if (reply && reply->type == REDIS_REPLY_INTEGER) {
                COUNT(bus, published);
                if (!bus->freeing)
                        conn_accepted(&bus->pub, REFUSED_PERM);
                return;
        }
        COUNT(bus, publish_dropped);
        if (reply && reply->type == REDIS_REPLY_ERROR && !bus->freeing && is_refusal(reply->str)) {
                bus_conn *conn = &bus->pub;
                conn_refused(conn, reply->str);
                /* Up no more: publishes are dropped (and counted) until a
                 * new connection gets through; drop this one now. */
                conn->up = false;
                redisAsyncDisconnect(ac);
        }
}

static void handle_message(cp_bus *bus, const redisReply *payload) {
        char id[CP_BUS_ACCOUNT_ID_MAX + 1];
        int64_t serial, sent_ms;

        if (payload->type != REDIS_REPLY_STRING ||
            cp_bus_parse_payload(payload->str, (size_t) payload->len, id, &serial, &sent_ms) < 0) {
                COUNT(bus, malformed);
                return;
        }
        COUNT(bus, received);
        if (bus->cb.on_message) {
                bus->in_callback++;
                bus->cb.on_message(id, serial, sent_ms, bus->cb.userdata);
                bus->in_callback--;
        }
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *privdata) {
        bus_conn *conn = privdata;
        cp_bus *bus = conn->bus;
        redisReply *reply = r;
        const redisReply *kind;

        /* NULL: the connection is going away; on_disconnect handles it. */
        if (!reply || bus->freeing)
                return;
        if (reply->type == REDIS_REPLY_ERROR) {
                if (is_refusal(reply->str))
                        conn_refused(conn, reply->str);
                return;
        }
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
                return;
        kind = reply->element[0];
        if (kind->type != REDIS_REPLY_STRING)
                return;
        if (strcmp(kind->str, "message") == 0) {
                handle_message(bus, reply->element[2]);
        } else if (strcmp(kind->str, "subscribe") == 0 && !conn->up) {
                evtimer_del(conn->timeout);
                conn->up = true;
                conn->backoff_ms = BUS_BACKOFF_MIN_MS;
                conn_accepted(conn, REFUSED_PERM);
                notify_state(bus, true);
        }
}

/* The publish connection's PING (after AUTH when there is one): PONG
 * makes it up. A Redis that wants a password we lack answers NOAUTH here,
 * not at the first PUBLISH, and a refusal clears on the reconnect that
 * gets through, with no PUBLISH needed. */
static void on_ping_reply(redisAsyncContext *ac, void *r, void *privdata) {
        bus_conn *conn = privdata;
        redisReply *reply = r;

        if (!reply || conn->bus->freeing)
                return;
        if (reply->type != REDIS_REPLY_STATUS || strcmp(reply->str, "PONG") != 0) {
                /* Refused, or not ready (LOADING): the attempt timer,
                 * still armed, drops this connection and retries. */
                if (reply->type == REDIS_REPLY_ERROR && is_refusal(reply->str)) {
                        conn_refused(conn, reply->str);
                        /* Even a NOPERM (an ACL without +ping): the next
                         * PONG is the refused command going through. */
                        conn->refused = REFUSED_AUTH;
                }
                return;
        }
        evtimer_del(conn->timeout);
        conn->up = true;
        /* Still refused a command (NOPERM on PUBLISH): the backoff keeps
         * growing, so a user without PUBLISH rights is not retried every
         * 100 ms. */
        if (!conn->refused)
                conn->backoff_ms = BUS_BACKOFF_MIN_MS;
        conn_accepted(conn, REFUSED_AUTH);
}

/* Connected, and authenticated when the URL has a password. */
static void conn_proceed(bus_conn *conn) {
        cp_bus *bus = conn->bus;

        /* Not checked: if PING or SUBSCRIBE cannot be queued, the attempt
         * timer, still armed until Redis answers, cleans up. */
        if (conn->kind == CONN_PUB) {
                (void) redisAsyncCommand(conn->ac, on_ping_reply, conn, "PING");
                return;
        }
        (void) redisAsyncCommand(conn->ac, on_sub_reply, conn, "SUBSCRIBE %s", bus->channel);
}

static void on_auth_reply(redisAsyncContext *ac, void *r, void *privdata) {
        bus_conn *conn = privdata;
        redisReply *reply = r;

        if (!reply || conn->bus->freeing)
                return;
        if (reply->type == REDIS_REPLY_ERROR) {
                conn_refused(conn, reply->str);
                return;
        }
        /* Not cleared yet: only once SUBSCRIBE or PING went through too,
         * so a refusal of those does not toggle on every reconnect. */
        conn_proceed(conn);
}

static void on_connect(const redisAsyncContext *c, int status) {
        bus_conn *conn = c->data;
        cp_bus *bus = conn->bus;

        if (status != REDIS_OK) {
                /* hiredis frees the context after we return. */
                conn->ac = NULL;
                schedule_retry(conn);
                return;
        }
        (void) redisEnableKeepAlive(&conn->ac->c);
        /* Every (re)connect: AUTH first when the URL has a password, and
         * only once Redis accepted it SUBSCRIBE, or PING for PUBLISH. Not
         * disconnected from here (hiredis 0.14 would free the context
         * under its own feet): if AUTH cannot be queued, or is refused,
         * the attempt timer cleans up. */
        if (bus->password && bus->user)
                (void) redisAsyncCommand(conn->ac, on_auth_reply, conn, "AUTH %s %s", bus->user, bus->password);
        else if (bus->password)
                (void) redisAsyncCommand(conn->ac, on_auth_reply, conn, "AUTH %s", bus->password);
        else
                conn_proceed(conn);
}

static void on_disconnect(const redisAsyncContext *c, int status) {
        bus_conn *conn = c->data;
        bool was_up = conn->up;

        /* hiredis frees the context after we return. */
        conn->ac = NULL;
        conn->up = false;
        if (conn->bus->freeing)
                return;
        /* An error reply without a callback waiting for it (SUBSCRIBE
         * refused by an ACL): hiredis disconnects with it as errstr. */
        if (status != REDIS_OK && c->err == REDIS_ERR_OTHER && is_refusal(c->errstr))
                conn_refused(conn, c->errstr);
        if (conn->kind == CONN_SUB && was_up)
                notify_state(conn->bus, false);
        schedule_retry(conn);
}

static void conn_start(bus_conn *conn) {
        cp_bus *bus = conn->bus;
        redisAsyncContext *ac;
        struct timeval tv = { BUS_ATTEMPT_TIMEOUT_MS / 1000, (BUS_ATTEMPT_TIMEOUT_MS % 1000) * 1000 };

        if (bus->freeing || conn->ac)
                return;
        if (conn->started)
                COUNT(bus, reconnects);
        conn->started = true;

        ac = redisAsyncConnect(bus->host, conn->bus->port);
        if (!ac) {
                schedule_retry(conn);
                return;
        }
        if (ac->err || redisLibeventAttach(ac, bus->base) != REDIS_OK) {
                /* Not attached, no callbacks set: ours to free. */
                redisAsyncFree(ac);
                schedule_retry(conn);
                return;
        }
        ac->data = conn;
        redisAsyncSetConnectCallback(ac, on_connect);
        redisAsyncSetDisconnectCallback(ac, on_disconnect);
        conn->ac = ac;
        evtimer_add(conn->timeout, &tv);
}

static int conn_init(cp_bus *bus, bus_conn *conn, int kind) {
        conn->bus = bus;
        conn->kind = kind;
        conn->backoff_ms = BUS_BACKOFF_MIN_MS;
        conn->retry = evtimer_new(bus->base, on_retry, conn);
        conn->timeout = evtimer_new(bus->base, on_attempt_timeout, conn);
        return conn->retry && conn->timeout ? 0 : -ENOMEM;
}

static void conn_release(bus_conn *conn) {
        if (conn->ac) {
                redisAsyncContext *ac = conn->ac;
                /* Cleared first: an unconnected context gets no callback;
                 * a connected one runs on_disconnect, which sees freeing. */
                conn->ac = NULL;
                redisAsyncFree(ac);
        }
        conn->up = false;
        if (conn->retry)
                event_free(conn->retry);
        if (conn->timeout)
                event_free(conn->timeout);
        conn->retry = conn->timeout = NULL;
}

/* ---- public API --------------------------------------------------------- */

int cp_bus_new(struct event_base *base, const char *redis_url, const char *prefix,
               const cp_bus_callbacks *cb, cp_bus **ret_bus, cp_error *reterr) {
        cp_bus *bus;
        size_t plen;
        int r;

        if (!base || !ret_bus)
                return cp_error_set(reterr, -EINVAL, "bus: missing event base or result pointer");
        plen = prefix ? strlen(prefix) : 0;
        if (plen == 0 || plen > BUS_PREFIX_MAX)
                return cp_error_set(reterr, -EINVAL, "bus: channel prefix must be 1..%d bytes", BUS_PREFIX_MAX);
        for (size_t i = 0; i < plen; i++)
                if ((unsigned char) prefix[i] <= 0x20 || (unsigned char) prefix[i] > 0x7e)
                        return cp_error_set(reterr, -EINVAL, "bus: bad character in channel prefix");

        bus = cp_xcalloc(1, sizeof(*bus));
        bus->base = base;
        if (cb)
                bus->cb = *cb;
        {
                bus_url u = { 0 };
                r = parse_url(redis_url, &u, reterr);
                if (r < 0)
                        goto error;
                bus->host = u.host;
                bus->port = u.port;
                bus->user = u.user;
                bus->password = u.password;
        }
        bus->channel = cp_xasprintf("%s%s", prefix, BUS_CHANNEL_SUFFIX);
        if (conn_init(bus, &bus->sub, CONN_SUB) < 0 || conn_init(bus, &bus->pub, CONN_PUB) < 0) {
                r = cp_error_set(reterr, -ENOMEM, "bus: cannot create timers");
                goto error;
        }
        /* Connecting is asynchronous; an unreachable Redis only means retries. */
        conn_start(&bus->sub);
        conn_start(&bus->pub);
        *ret_bus = bus;
        return 0;

error:
        cp_bus_free(bus);
        return r;
}

cp_bus *cp_bus_free(cp_bus *bus) {
        if (!bus)
                return NULL;
        /* From inside a bus callback hiredis would defer the free and then
         * call back into freed memory: refuse loudly. */
        assert(bus->in_callback == 0);
        if (bus->in_callback)
                abort();
        bus->freeing = true;
        conn_release(&bus->sub);
        conn_release(&bus->pub);
        free(bus->host);
        free(bus->user);
        if (bus->password) {
                cp_explicit_bzero(bus->password, strlen(bus->password));
                free(bus->password);
        }
        free(bus->channel);
        free(bus);
        return NULL;
}

int cp_bus_publish(cp_bus *bus, const char *account_id, int64_t serial) {
        char payload[CP_BUS_ACCOUNT_ID_MAX + 48];
        int n;

        if (!bus || !account_id || !account_id_valid(account_id, strlen(account_id)) || serial < 0)
                return -EINVAL;
        if (!bus->pub.up || !bus->pub.ac) {
                COUNT(bus, publish_dropped);
                return -ENOTCONN;
        }
        if (bus->pending >= BUS_MAX_PENDING) {
                COUNT(bus, publish_dropped);
                return -ENOBUFS;
        }
        n = snprintf(payload, sizeof(payload), "%s %" PRId64 " %" PRId64, account_id, serial,
                     cp_now_unix_ns() / 1000000);
        if (redisAsyncCommand(bus->pub.ac, on_pub_reply, bus, "PUBLISH %s %b", bus->channel, payload,
                              (size_t) n) != REDIS_OK) {
                COUNT(bus, publish_dropped);
                return -ENOTCONN;
        }
        bus->pending++;
        return 0;
}

bool cp_bus_is_subscribed(const cp_bus *bus) {
        return bus && bus->sub.up;
}

bool cp_bus_can_publish(const cp_bus *bus) {
        return bus && bus->pub.up && bus->pub.ac;
}

void cp_bus_get_stats(const cp_bus *bus, cp_bus_stats *ret) {
        cp_bus *b = (cp_bus *) bus; /* atomic loads of a const object */

        ret->published = atomic_load_explicit(&b->published, memory_order_relaxed);
        ret->publish_dropped = atomic_load_explicit(&b->publish_dropped, memory_order_relaxed);
        ret->received = atomic_load_explicit(&b->received, memory_order_relaxed);
        ret->malformed = atomic_load_explicit(&b->malformed, memory_order_relaxed);
        ret->reconnects = atomic_load_explicit(&b->reconnects, memory_order_relaxed);
        ret->auth_failures = atomic_load_explicit(&b->auth_failures, memory_order_relaxed);
}

/* ---- one blocking publish (tools) -------------------------------------- */

int cp_bus_publish_once(const char *redis_url, const char *prefix, const char *account_id, int64_t serial,
                        int64_t timeout_ms, cp_error *reterr) {
        bus_url u = { 0 };
        char payload[CP_BUS_ACCOUNT_ID_MAX + 48], channel[128];
        struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
        redisContext *rc;
        redisReply *reply;
        int n, r;

        if (!account_id || !account_id_valid(account_id, strlen(account_id)) || serial < 0)
                return cp_error_set(reterr, -EINVAL, "bad account id or serial for the bus");
        if (!prefix || !*prefix || strlen(prefix) > 64 || strpbrk(prefix, " \t\r\n"))
                return cp_error_set(reterr, -EINVAL, "bad bus channel prefix");
        r = parse_url(redis_url, &u, reterr);
        if (r < 0)
                return r;
        (void) snprintf(channel, sizeof channel, "%s:account-serial", prefix);
        n = snprintf(payload, sizeof payload, "%s %" PRId64 " %" PRId64, account_id, serial,
                     cp_now_unix_ns() / 1000000);
        rc = redisConnectWithTimeout(u.host, u.port, tv);
        if (!rc || rc->err) {
                r = cp_error_set(reterr, -ECONNREFUSED, "cannot connect to redis %s:%d: %s", u.host, u.port,
                                 rc ? rc->errstr : "out of memory");
                if (rc)
                        redisFree(rc);
                bus_url_release(&u);
                return r;
        }
        (void) redisSetTimeout(rc, tv);
        reply = NULL;
        if (u.password) {
                reply = u.user ? redisCommand(rc, "AUTH %s %s", u.user, u.password)
                               : redisCommand(rc, "AUTH %s", u.password);
                if (!reply || reply->type == REDIS_REPLY_ERROR) {
                        r = cp_error_set(reterr, reply ? -EACCES : -EIO, "Redis refused authentication: %s",
                                         reply ? reply->str : rc->errstr);
                        goto out;
                }
                freeReplyObject(reply);
        }
        reply = redisCommand(rc, "PUBLISH %s %b", channel, payload, (size_t) n);
        if (!reply)
                r = cp_error_set(reterr, -EIO, "redis PUBLISH failed: %s", rc->errstr);
        else if (reply->type == REDIS_REPLY_ERROR)
                r = cp_error_set(reterr, is_refusal(reply->str) ? -EACCES : -EIO, "redis PUBLISH failed: %s",
                                 reply->str);
        else
                r = reply->type == REDIS_REPLY_INTEGER ? (int) (reply->integer > INT32_MAX ? INT32_MAX
                                                                                           : reply->integer)
                                                       : 0;
out:
        if (reply)
                freeReplyObject(reply);
        redisFree(rc);
        bus_url_release(&u);
        return r;
}
