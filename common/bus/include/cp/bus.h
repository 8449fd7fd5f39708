/*
 * cp/bus.h: the "account A is now at serial S" bus between replicas, on
 * Redis pub/sub (hiredis async on a caller-given libevent event_base).
 *
 * The bus is a hint, never the source of truth: a replica that misses a
 * message repairs itself by its periodic serial check against PostgreSQL.
 * So nothing here blocks, retries a publish, or fails because Redis is slow
 * or down:
 *
 *   - Two connections: one SUBSCRIBEd to "<prefix>:account-serial", one for
 *     PUBLISH. Both reconnect by themselves with capped exponential backoff
 *     (100 ms doubling to 5 s, +-20 % jitter), reset after a success.
 *   - on_state(true) after every successful (re)subscribe, on_state(false)
 *     when the subscription is lost. After on_state(true) the caller runs its
 *     serial check for every account it serves ("resynced"): whatever was
 *     published while it was away is gone.
 *   - cp_bus_publish() is fire-and-forget. When the publish connection is
 *     not up, or too many publishes wait for Redis, the publish is dropped
 *     and counted; the receivers' periodic serial check is the safety net.
 *   - A replica also receives its own publishes; the serial check makes
 *     that a no-op (serial <= what it already has).
 *
 * Payload: "<account_id> <serial> <sent_ms>", single spaces, account_id
 * 1..64 bytes of printable ASCII without space, serial and sent_ms
 * decimals 0..INT64_MAX without sign or leading zeros; sent_ms is the
 * publisher's wall clock in Unix milliseconds (for the lag metric only;
 * replica clocks may disagree) and may be left out ("<account_id>
 * <serial>"). Anything else is dropped and counted as malformed.
 *
 * Threads: the bus belongs to the thread running its event_base. Every
 * function except cp_bus_get_stats() must be called on that thread (or
 * before the loop runs). Callbacks run on that thread, from inside hiredis
 * callbacks: they must not call cp_bus_free() (it aborts; defer it with a
 * timer or event_base_loopexit). They may call cp_bus_publish().
 * cp_bus_get_stats() reads relaxed atomics and may be called from any
 * thread while the bus is alive.
 *
 * Name resolution happens inside hiredis's connect and blocks the loop;
 * use an address or a name that resolves locally (/etc/hosts).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"

struct event_base;

typedef struct cp_bus cp_bus;

#define CP_BUS_ACCOUNT_ID_MAX 64

typedef struct cp_bus_callbacks {
        /* A well-formed message. account_id is valid only during the call;
         * sent_ms is the publisher's clock (Unix ms), 0 when absent. */
        void (*on_message)(const char *account_id, int64_t serial, int64_t sent_ms, void *userdata);
        /* true: subscribed (first time or again; resync now). false: the
         * subscription was lost; messages may be missed until true. */
        void (*on_state)(bool connected, void *userdata);
        /* Redis refused us (not merely unreachable): why is e.g. "Redis
         * refused authentication: WRONGPASS invalid username-password pair
         * or user is disabled." (NOAUTH, WRONGPASS, NOPERM, an error to
         * AUTH); never contains the password. NULL: both connections got
         * through again (a NOPERM only once the refused command went
         * through, not on a reconnect's AUTH). Called on changes only; may
         * be NULL. */
        void (*on_refused)(const char *why, void *userdata);
        void *userdata;
} cp_bus_callbacks;

typedef struct cp_bus_stats {
        uint64_t published;        /* PUBLISH answered by Redis */
        uint64_t publish_dropped;  /* not sent (down, backlog) or lost with the connection */
        uint64_t received;         /* well-formed messages delivered to on_message */
        uint64_t malformed;        /* messages dropped by the payload parser */
        uint64_t reconnects;       /* connect attempts after the first, both connections */
        uint64_t auth_failures;    /* AUTH or a command refused (NOAUTH, WRONGPASS, NOPERM) */
} cp_bus_stats;

/*
 * Creates the bus and starts connecting both connections on base (nothing
 * happens until the loop runs). Redis being unreachable is not an error:
 * the bus keeps retrying and calls on_state(true) once subscribed.
 *
 * redis_url: NetBird's (go-redis) form
 * "redis://[[user]:password@]host[:port][/db]" (port 6379 by default; host
 * may be "[v6addr]"; user and password percent-decoded; db is checked and
 * ignored, pub/sub spans databases). With a password both connections send
 * AUTH password (or AUTH user password, an ACL user) on every (re)connect,
 * before SUBSCRIBE or, on the publish connection, PING; that connection
 * can publish only once PING got its PONG (with or without a password, so
 * a NOAUTH shows there and clears on the reconnect that gets through). A
 * user or password holding a raw '/', '?' or '#' is refused (-EINVAL),
 * quoting nothing of it. "rediss://" (TLS) is refused with
 * -EPROTONOSUPPORT: Debian bookworm's hiredis 0.14 has no TLS. Query
 * options are refused. Error messages never quote the user or password.
 * prefix: channel prefix, 1..64 bytes, no whitespace.
 * base, cb->userdata: borrowed; must outlive the bus. Strings are copied.
 *
 * Returns 0 and *ret_bus (free with cp_bus_free()), or -EINVAL with reterr
 * filled for a bad URL or prefix.
 */
int cp_bus_new(struct event_base *base, const char *redis_url, const char *prefix,
               const cp_bus_callbacks *cb, cp_bus **ret_bus, cp_error *reterr);

/*
 * Closes both connections in whatever state they are (connected, connect
 * in flight, waiting to retry) and frees the bus. Pending publishes are
 * lost (counted as dropped just before). No callback of the caller runs
 * during or after it. Not from inside a bus callback. Accepts NULL;
 * returns NULL.
 */
cp_bus *cp_bus_free(cp_bus *bus);

/*
 * Announces account_id at serial. Fire-and-forget: returns 0 when the
 * publish was handed to hiredis, -ENOTCONN when dropped because the publish
 * connection is down, -ENOBUFS when dropped because too many publishes are
 * waiting for Redis (both counted in publish_dropped), -EINVAL for an
 * account_id or serial the payload format cannot carry (not counted).
 * Callers normally ignore the result.
 */
int cp_bus_publish(cp_bus *bus, const char *account_id, int64_t serial);

/* True while subscribed (between on_state(true) and on_state(false)). */
bool cp_bus_is_subscribed(const cp_bus *bus);

/* True while the publish connection is up (a publish now would be sent). */
bool cp_bus_can_publish(const cp_bus *bus);

/* Copies the counters; any thread. */
void cp_bus_get_stats(const cp_bus *bus, cp_bus_stats *ret);

/*
 * The payload parser (exposed for tests and tools). Returns 0 and fills
 * account_id (NUL-terminated), *ret_serial and *ret_sent_ms (may be NULL;
 * 0 when the field is absent), or -EBADMSG.
 */
int cp_bus_parse_payload(const char *payload, size_t len, char account_id[CP_BUS_ACCOUNT_ID_MAX + 1],
                         int64_t *ret_serial, int64_t *ret_sent_ms);

/*
 * For tools (netbird-cp-admin), outside any event loop: connects to
 * redis_url, publishes "<account_id> <serial> <now_ms>" on
 * "<prefix>:account-serial" once, and disconnects; blocks at most about
 * timeout_ms for the connect and for the reply each. Returns the number
 * of subscribers that got it (>= 0), -EINVAL for a bad URL, prefix, id or
 * serial, -ECONNREFUSED when Redis cannot be reached, -EACCES when Redis
 * refused the AUTH or the PUBLISH (ACL), -EIO when the publish failed.
 * Sends AUTH first when the URL has a password. Like every publish it is a hint only.
 */
int cp_bus_publish_once(const char *redis_url, const char *prefix, const char *account_id, int64_t serial,
                        int64_t timeout_ms, cp_error *reterr);
