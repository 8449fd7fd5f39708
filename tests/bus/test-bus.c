/*
 * test-bus.c: cp/bus.h against real Redis servers.
 *
 * The shared Redis of tests/run (CP_TEST_REDIS_URL) carries the plain
 * cases; each test uses its own channel prefix, so tests may run in
 * parallel. Down/up cases start their own redis-server on a free port and
 * stop it by the pid in its pidfile. Every wait is bounded by a deadline
 * on the event loop.
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "cp/alloc.h"
#include "cp/bus.h"
#include "cp/util.h"
#include "cptest.h"

#define REDIS_SERVER "/usr/bin/redis-server"

typedef struct probe {
        int ups, downs, messages, refusals, accepts;
        char refused[256];
        char last_id[CP_BUS_ACCOUNT_ID_MAX + 1];
        int64_t last_serial;
        int64_t last_sent_ms;
} probe;

static void on_message(const char *account_id, int64_t serial, int64_t sent_ms, void *userdata) {
        probe *p = userdata;
        p->messages++;
        snprintf(p->last_id, sizeof(p->last_id), "%s", account_id);
        p->last_serial = serial;
        p->last_sent_ms = sent_ms;
}

static void on_state(bool up, void *userdata) {
        probe *p = userdata;
        if (up)
                p->ups++;
        else
                p->downs++;
}

static void on_refused(const char *why, void *userdata) {
        probe *p = userdata;
        if (why) {
                p->refusals++;
                snprintf(p->refused, sizeof(p->refused), "%s", why);
        } else {
                p->accepts++;
                p->refused[0] = '\0';
        }
}

static cp_bus *bus_open(struct event_base *base, const char *url, const char *prefix, probe *p) {
        cp_bus_callbacks cb = { .on_message = on_message, .on_state = on_state, .on_refused = on_refused,
                                .userdata = p };
        cp_error err = { 0 };
        cp_bus *bus = NULL;

        ASSERT_OK(cp_bus_new(base, url, prefix, &cb, &bus, &err), &err);
        return bus;
}

static const char *shared_url(void) {
        const char *url = getenv("CP_TEST_REDIS_URL");
        if (!url || !*url)
                CPTEST_SKIP("CP_TEST_REDIS_URL not set");
        return url;
}

static void new_prefix(char out[64]) {
        char id[CP_ID_LEN + 1];
        cp_id_new(id);
        snprintf(out, 64, "cptest-%s", id);
}

/* ---- bounded loop ----------------------------------------------------- */

typedef bool (*cond_fn)(void *arg);

typedef struct waiter {
        struct event_base *base;
        cond_fn cond;
        void *arg;
        bool met;
} waiter;

static void on_poll(evutil_socket_t fd, short what, void *arg) {
        waiter *w = arg;
        if (w->cond && w->cond(w->arg)) {
                w->met = true;
                event_base_loopbreak(w->base);
        }
}

/* Runs base until cond(arg) holds or ms pass; cond NULL just runs ms. */
static bool run_until(struct event_base *base, cond_fn cond, void *arg, int ms) {
        waiter w = { base, cond, arg, false };
        struct timeval poll = { 0, 5000 }, deadline = { ms / 1000, (ms % 1000) * 1000 };
        struct event *ev = event_new(base, -1, EV_PERSIST, on_poll, &w);

        if (cond && cond(arg))
                w.met = true;
        if (!w.met) {
                event_add(ev, &poll);
                event_base_loopexit(base, &deadline);
                event_base_dispatch(base);
        }
        event_free(ev);
        /* A loopexit left pending must not cut the next run short. */
        event_base_loopexit(base, &(struct timeval) { 0, 0 });
        event_base_loop(base, EVLOOP_NONBLOCK);
        return w.met;
}

static bool cond_subscribed(void *arg) {
        return cp_bus_is_subscribed(arg);
}

static bool cond_ready(void *arg) {
        return cp_bus_is_subscribed(arg) && cp_bus_can_publish(arg);
}

static bool cond_down(void *arg) {
        return !cp_bus_is_subscribed(arg) && !cp_bus_can_publish(arg);
}

typedef struct { probe *p; int n; } count_arg;

static bool cond_messages(void *arg) {
        count_arg *c = arg;
        return c->p->messages >= c->n;
}

static bool cond_ups(void *arg) {
        count_arg *c = arg;
        return c->p->ups >= c->n;
}

static bool cond_downs(void *arg) {
        count_arg *c = arg;
        return c->p->downs >= c->n;
}

/* ---- own redis-server ---------------------------------------------------- */

typedef struct own_redis {
        int port;
        char dir[128];
        char pidfile[192];
        char url[64];
} own_redis;

static int free_port(void) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM, 0), port;

        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(0, bind(fd, (struct sockaddr *) &a, sizeof(a)));
        ASSERT_EQ(0, getsockname(fd, (struct sockaddr *) &a, &len));
        port = ntohs(a.sin_port);
        close(fd);
        return port;
}

static bool port_open(int port) {
        redisContext *c = redisConnect("127.0.0.1", port);
        bool ok = c && !c->err;
        if (c)
                redisFree(c);
        return ok;
}

static void own_redis_init(own_redis *r) {
        if (access(REDIS_SERVER, X_OK) != 0)
                CPTEST_SKIP(REDIS_SERVER " not installed");
        r->port = free_port();
        snprintf(r->dir, sizeof(r->dir), "/tmp/cp-test-bus-XXXXXX");
        ASSERT_TRUE(mkdtemp(r->dir) != NULL);
        snprintf(r->pidfile, sizeof(r->pidfile), "%s/redis.pid", r->dir);
        snprintf(r->url, sizeof(r->url), "redis://127.0.0.1:%d", r->port);
}

/* Every redis-server this process started, by pidfile: a failed
 * assertion leaves its test early, past own_redis_cleanup, so at exit
 * whatever still runs is stopped (redis removes its pidfile on a clean
 * shutdown, so those are skipped). */
static char started_pidfiles[32][sizeof(((own_redis *) 0)->pidfile)];
static int n_started;

static void stop_leftover_redis(void) {
        for (int i = 0; i < n_started; i++) {
                FILE *f = fopen(started_pidfiles[i], "re");
                long pid = 0;
                if (!f)
                        continue;
                if (fscanf(f, "%ld", &pid) != 1)
                        pid = 0;
                fclose(f);
                if (pid > 0)
                        (void) kill((pid_t) pid, SIGKILL);
        }
}

/* extra: more redis-server arguments (shell words), e.g. --requirepass. */
static void own_redis_start_with(own_redis *r, const char *extra) {
        char cmd[1024];

        if (n_started == 0)
                atexit(stop_leftover_redis);
        if (n_started < (int) ELEMENTSOF(started_pidfiles))
                snprintf(started_pidfiles[n_started++], sizeof started_pidfiles[0], "%s", r->pidfile);

        snprintf(cmd, sizeof(cmd),
                 REDIS_SERVER " --bind 127.0.0.1 --port %d --save '' --appendonly no --daemonize yes"
                 " --pidfile %s --dir %s --logfile %s/redis.log %s </dev/null >/dev/null 2>&1",
                 r->port, r->pidfile, r->dir, r->dir, extra);
        ASSERT_EQ(0, system(cmd));
        for (int i = 0; i < 500; i++) {
                /* With a password PING answers NOAUTH: any answer will do. */
                redisContext *c = redisConnect("127.0.0.1", r->port);
                bool up = false;
                if (c && !c->err) {
                        redisReply *rep = redisCommand(c, "PING");
                        up = rep != NULL;
                        if (rep)
                                freeReplyObject(rep);
                }
                if (c)
                        redisFree(c);
                if (up)
                        return;
                usleep(10000);
        }
        cptest_fail(__FILE__, __LINE__, "redis-server on port %d did not answer", r->port);
}

static void own_redis_start(own_redis *r) {
        own_redis_start_with(r, "");
}

static pid_t own_redis_pid(own_redis *r) {
        FILE *f = fopen(r->pidfile, "re");
        long pid = 0;
        if (f) {
                if (fscanf(f, "%ld", &pid) != 1)
                        pid = 0;
                fclose(f);
        }
        return (pid_t) pid;
}

/* SIGTERM by the pid in the pidfile; waits until the port is closed and
 * the pidfile gone (redis removes it on shutdown). Safe when not running. */
static void own_redis_stop(own_redis *r) {
        pid_t pid = own_redis_pid(r);

        if (pid <= 1)
                return;
        kill(pid, SIGTERM);
        for (int i = 0; i < 500; i++) {
                struct stat st;
                if (stat(r->pidfile, &st) != 0 && !port_open(r->port))
                        return;
                usleep(10000);
        }
        cptest_fail(__FILE__, __LINE__, "redis-server pid %ld did not stop", (long) pid);
}

static void own_redis_cleanup(own_redis *r) {
        char path[256];
        own_redis_stop(r);
        snprintf(path, sizeof(path), "%s/redis.log", r->dir);
        unlink(path);
        rmdir(r->dir);
}

/* ---- tests ------------------------------------------------------------- */

TEST(parse_payload) {
        char id[CP_BUS_ACCOUNT_ID_MAX + 1];
        int64_t s = -1;
        static const char *const bad[] = {
                "", " ", "acct", "acct ", " 5", "acct 01", "acct -1", "acct +1", "acct 1 ",
                "acct 1 2 3", "acct 1 02", "acct 1 -2", "acct  1", "acct 1x", "acct 9223372036854775808",
                "acct 99999999999999999999", "a\tb 1",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 1", /* 65 */
        };

        ASSERT_EQ(0, cp_bus_parse_payload("acct 0", 6, id, &s, NULL));
        ASSERT_STREQ("acct", id);
        ASSERT_EQ(0, s);
        ASSERT_EQ(0, cp_bus_parse_payload("d2k3v1ojrpvllc0emrcg 9223372036854775807", 40, id, &s, NULL));
        ASSERT_STREQ("d2k3v1ojrpvllc0emrcg", id);
        ASSERT_TRUE(s == INT64_MAX);
        /* length is honoured: no NUL needed, embedded NUL refused */
        ASSERT_EQ(0, cp_bus_parse_payload("x 12trailing", 4, id, &s, NULL));
        ASSERT_EQ(12, s);
        ASSERT_EQ(-EBADMSG, cp_bus_parse_payload("x 1\0", 4, id, &s, NULL));
        ASSERT_EQ(-EBADMSG, cp_bus_parse_payload("x\0y 1", 5, id, &s, NULL));
        /* the optional publisher clock */
        int64_t sent = -1;
        ASSERT_EQ(0, cp_bus_parse_payload("acct 7 1700000000123", 20, id, &s, &sent));
        ASSERT_EQ(7, s);
        ASSERT_TRUE(sent == 1700000000123);
        ASSERT_EQ(0, cp_bus_parse_payload("acct 7", 6, id, &s, &sent));
        ASSERT_EQ(0, sent);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                if (cp_bus_parse_payload(bad[i], strlen(bad[i]), id, &s, NULL) != -EBADMSG)
                        cptest_fail(__FILE__, __LINE__, "accepted \"%s\"", bad[i]);
}

TEST(new_rejects_bad_arguments) {
        struct event_base *base = event_base_new();
        static const char *const urls[] = {
                "", "http://h:1", "redis://", "redis://:6379", "redis://h:0", "redis://h:65536",
                "redis://h:x", "redis://h:1/x", "redis://[::1", "redis://h:1?x=1", "redis://:%zz@h:1",
                "redis://:%4@h:1", "redis://:a%00b@h:1", "redis://u:p@", "redis://u:p@:1", "redis://:p@h:1/0?x=1",
        };
        cp_error err = { 0 };
        cp_bus *bus = NULL;

        for (size_t i = 0; i < ELEMENTSOF(urls); i++)
                if (cp_bus_new(base, urls[i], "p", NULL, &bus, &err) != -EINVAL)
                        cptest_fail(__FILE__, __LINE__, "accepted url \"%s\"", urls[i]);
        ASSERT_TRUE(bus == NULL);
        ASSERT_EQ(-EINVAL, cp_bus_new(base, "redis://h", "", NULL, &bus, &err));
        ASSERT_EQ(-EINVAL, cp_bus_new(base, "redis://h", "a b", NULL, &bus, &err));
        ASSERT_TRUE(bus == NULL);
        /* accepted forms; nothing listens, freed before the loop runs */
        ASSERT_OK(cp_bus_new(base, "redis://127.0.0.1", "p", NULL, &bus, &err), &err);
        bus = cp_bus_free(bus);
        ASSERT_OK(cp_bus_new(base, "redis://[::1]:1/3", "p", NULL, &bus, &err), &err);
        bus = cp_bus_free(bus);
        /* NetBird's go-redis forms with credentials */
        static const char *const good[] = {
                "redis://:pw@127.0.0.1:1", "redis://user:p%40ss%2Fw@127.0.0.1:1/0", "redis://u:p@w@[::1]:1",
                "redis://name@127.0.0.1", "redis://:@127.0.0.1:1",
        };
        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                if (cp_bus_new(base, good[i], "p", NULL, &bus, &err) != 0)
                        cptest_fail(__FILE__, __LINE__, "refused url \"%s\": %s", good[i], err.message);
                bus = cp_bus_free(bus);
        }
        /* TLS: refused with its reason; no message quotes the password */
        ASSERT_EQ(-EPROTONOSUPPORT, cp_bus_new(base, "rediss://:sekret@h:1", "p", NULL, &bus, &err));
        ASSERT_TRUE(strstr(err.message, "TLS") != NULL);
        ASSERT_TRUE(strstr(err.message, "sekret") == NULL);
        ASSERT_EQ(-EINVAL, cp_bus_new(base, "redis://:sekret%zz@h:1", "p", NULL, &bus, &err));
        ASSERT_TRUE(strstr(err.message, "sekret") == NULL);
        ASSERT_EQ(-EINVAL, cp_bus_new(base, "redis://u:sekret@h:1/x", "p", NULL, &bus, &err));
        ASSERT_TRUE(strstr(err.message, "sekret") == NULL);
        /* A raw '/', '?' or '#' in the password ends the authority early:
         * refused as such, quoting no part of the password. */
        static const char *const raw[] = {
                "redis://:Qx/Zk@h:1", "redis://:Qx?Zk@h:1", "redis://:Qx#Zk@h:1", "redis://u:Qx:12/Zk@h:1",
                "redis://u:Wv:99999/Yj@h:1/0",
        };
        for (size_t i = 0; i < ELEMENTSOF(raw); i++) {
                ASSERT_EQ(-EINVAL, cp_bus_new(base, raw[i], "p", NULL, &bus, &err));
                ASSERT_TRUE(strstr(err.message, "unencoded") != NULL);
                static const char *const parts[] = { "Qx", "Zk", "12", "Wv", "99999", "Yj" };
                for (size_t j = 0; j < ELEMENTSOF(parts); j++)
                        if (strstr(err.message, parts[j]))
                                cptest_fail(__FILE__, __LINE__, "\"%s\" quotes \"%s\"", err.message, parts[j]);
                ASSERT_EQ(-EINVAL, cp_bus_publish_once(raw[i], "p", "acct", 1, 100, &err));
                ASSERT_TRUE(strstr(err.message, "Qx") == NULL && strstr(err.message, "Wv") == NULL);
        }
        /* The port text is never quoted either. */
        ASSERT_EQ(-EINVAL, cp_bus_new(base, "redis://h:sekre", "p", NULL, &bus, &err));
        ASSERT_TRUE(strstr(err.message, "sekre") == NULL);
        ASSERT_EQ(-EPROTONOSUPPORT, cp_bus_publish_once("rediss://h:1", "p", "acct", 1, 100, &err));
        ASSERT_TRUE(cp_bus_free(NULL) == NULL);
        event_base_free(base);
}

TEST(publish_receive) {
        const char *url = shared_url();
        struct event_base *base = event_base_new();
        char prefix[64];
        probe pa = { 0 }, pb = { 0 };
        cp_bus *a, *b;
        cp_bus_stats st;

        new_prefix(prefix);
        a = bus_open(base, url, prefix, &pa);
        b = bus_open(base, url, prefix, &pb);
        ASSERT_TRUE(run_until(base, cond_ready, a, 5000));
        ASSERT_TRUE(run_until(base, cond_ready, b, 5000));
        ASSERT_EQ(1, pa.ups);
        ASSERT_EQ(1, pb.ups);

        ASSERT_EQ(0, cp_bus_publish(a, "acct-1", 42));
        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pb, 1 }, 5000));
        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pa, 1 }, 5000));
        ASSERT_STREQ("acct-1", pb.last_id);
        ASSERT_EQ(42, pb.last_serial);
        /* the publisher's clock rides along (same host: within a minute) */
        int64_t now_ms = cp_now_unix_ns() / 1000000;
        ASSERT_TRUE(pb.last_sent_ms > now_ms - 60000 && pb.last_sent_ms <= now_ms);
        ASSERT_STREQ("acct-1", pa.last_id); /* a replica hears itself too */

        ASSERT_EQ(-EINVAL, cp_bus_publish(a, "has space", 1));
        ASSERT_EQ(-EINVAL, cp_bus_publish(a, "", 1));
        ASSERT_EQ(-EINVAL, cp_bus_publish(a, "x", -1));

        /* another prefix hears nothing */
        {
                char other[64];
                probe pc = { 0 };
                cp_bus *c;
                new_prefix(other);
                c = bus_open(base, url, other, &pc);
                ASSERT_TRUE(run_until(base, cond_ready, c, 5000));
                ASSERT_EQ(0, cp_bus_publish(b, "acct-2", 7));
                ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pa, 2 }, 5000));
                ASSERT_EQ(0, pc.messages);
                c = cp_bus_free(c);
        }

        cp_bus_get_stats(a, &st);
        ASSERT_EQ(1, st.published);
        ASSERT_EQ(0, st.publish_dropped);
        ASSERT_EQ(2, st.received);
        ASSERT_EQ(0, st.malformed);
        ASSERT_EQ(0, st.reconnects);
        ASSERT_EQ(0, pa.downs);

        /* Freed with publishes still waiting for their replies. */
        ASSERT_EQ(0, cp_bus_publish(b, "acct", 8));
        ASSERT_EQ(0, cp_bus_publish(b, "acct", 9));
        a = cp_bus_free(a);
        b = cp_bus_free(b);
        event_base_free(base);
}

TEST(malformed_payload_counted) {
        const char *url = shared_url();
        struct event_base *base = event_base_new();
        char prefix[64], channel[96];
        static const char *const bad[] = { "", "x", "acct 01", "acct -1", "acct 1 2 3", "acct 1 x", "a b c",
                                           "acct 99999999999999999999", "acct\t1" };
        probe p = { 0 };
        cp_bus *bus;
        cp_bus_stats st;
        redisContext *rc;
        int port = 6379;
        char host[64] = "";

        ASSERT_EQ(2, sscanf(url, "redis://%63[^:]:%d", host, &port));
        new_prefix(prefix);
        snprintf(channel, sizeof(channel), "%s:account-serial", prefix);
        bus = bus_open(base, url, prefix, &p);
        ASSERT_TRUE(run_until(base, cond_subscribed, bus, 5000));

        rc = redisConnect(host, port);
        ASSERT_TRUE(rc && !rc->err);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                freeReplyObject(redisCommand(rc, "PUBLISH %s %s", channel, bad[i]));
        freeReplyObject(redisCommand(rc, "PUBLISH %s %b", channel, "nul\0 1", (size_t) 6));
        freeReplyObject(redisCommand(rc, "PUBLISH %s %s", channel, "good 5"));
        redisFree(rc);

        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &p, 1 }, 5000));
        cp_bus_get_stats(bus, &st);
        ASSERT_EQ(1, st.received);
        ASSERT_EQ(ELEMENTSOF(bad) + 1, st.malformed);
        ASSERT_STREQ("good", p.last_id);
        ASSERT_EQ(5, p.last_serial);
        ASSERT_TRUE(cp_bus_is_subscribed(bus));
        ASSERT_EQ(0, p.downs);

        bus = cp_bus_free(bus);
        event_base_free(base);
}

TEST(redis_absent_at_start) {
        struct event_base *base = event_base_new();
        own_redis r;
        probe pa = { 0 }, pb = { 0 };
        cp_bus *a, *b;
        cp_bus_stats st;

        shared_url();
        own_redis_init(&r);
        a = bus_open(base, r.url, "absent", &pa);
        b = bus_open(base, r.url, "absent", &pb);
        run_until(base, NULL, NULL, 700);
        ASSERT_FALSE(cp_bus_is_subscribed(a));
        ASSERT_FALSE(cp_bus_can_publish(a));
        ASSERT_EQ(0, pa.ups);
        ASSERT_EQ(0, pa.downs);
        ASSERT_EQ(-ENOTCONN, cp_bus_publish(a, "acct", 1));
        cp_bus_get_stats(a, &st);
        ASSERT_EQ(1, st.publish_dropped);
        ASSERT_TRUE(st.reconnects >= 2); /* both connections retried at least once */

        own_redis_start(&r);
        ASSERT_TRUE(run_until(base, cond_ready, a, 10000));
        ASSERT_TRUE(run_until(base, cond_ready, b, 10000));
        ASSERT_EQ(1, pa.ups);
        ASSERT_EQ(1, pb.ups);
        ASSERT_EQ(0, pa.downs);
        ASSERT_EQ(0, cp_bus_publish(a, "acct", 9));
        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pb, 1 }, 5000));
        ASSERT_STREQ("acct", pb.last_id);
        ASSERT_EQ(9, pb.last_serial);

        a = cp_bus_free(a);
        b = cp_bus_free(b);
        event_base_free(base);
        own_redis_cleanup(&r);
}

TEST(redis_restart) {
        struct event_base *base = event_base_new();
        own_redis r;
        probe pa = { 0 }, pb = { 0 };
        cp_bus *a, *b;
        cp_bus_stats st;

        shared_url();
        own_redis_init(&r);
        own_redis_start(&r);
        a = bus_open(base, r.url, "restart", &pa);
        b = bus_open(base, r.url, "restart", &pb);
        ASSERT_TRUE(run_until(base, cond_ready, a, 5000));
        ASSERT_TRUE(run_until(base, cond_ready, b, 5000));

        own_redis_stop(&r);
        ASSERT_TRUE(run_until(base, cond_downs, &(count_arg) { &pa, 1 }, 5000));
        ASSERT_TRUE(run_until(base, cond_downs, &(count_arg) { &pb, 1 }, 5000));
        ASSERT_TRUE(run_until(base, cond_down, a, 5000));
        ASSERT_EQ(-ENOTCONN, cp_bus_publish(a, "acct", 3));
        cp_bus_get_stats(a, &st);
        ASSERT_EQ(1, st.publish_dropped);
        run_until(base, NULL, NULL, 400); /* a few failed attempts while down */

        own_redis_start(&r);
        ASSERT_TRUE(run_until(base, cond_ups, &(count_arg) { &pa, 2 }, 10000));
        ASSERT_TRUE(run_until(base, cond_ups, &(count_arg) { &pb, 2 }, 10000));
        ASSERT_TRUE(run_until(base, cond_ready, a, 10000));
        ASSERT_EQ(0, cp_bus_publish(a, "acct", 4));
        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pb, 1 }, 5000));
        ASSERT_EQ(4, pb.last_serial);
        ASSERT_EQ(1, pa.downs);
        cp_bus_get_stats(a, &st);
        ASSERT_TRUE(st.reconnects >= 2);
        ASSERT_EQ(1, st.published);

        a = cp_bus_free(a);
        b = cp_bus_free(b);
        event_base_free(base);
        own_redis_cleanup(&r);
}

/* A listener that never accepts: TCP connects land in its backlog, so the
 * publish connection comes up and SUBSCRIBE waits for an answer forever. */
static int silent_listener(int *ret_port) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(0, bind(fd, (struct sockaddr *) &a, sizeof(a)));
        ASSERT_EQ(0, listen(fd, 16));
        ASSERT_EQ(0, getsockname(fd, (struct sockaddr *) &a, &len));
        *ret_port = ntohs(a.sin_port);
        return fd;
}

TEST(free_in_any_state) {
        struct event_base *base = event_base_new();
        char url[64];
        probe p = { 0 };
        cp_bus *bus;
        int port, lfd;

        shared_url();
        /* connect in flight: freed before the loop ever ran */
        snprintf(url, sizeof(url), "redis://127.0.0.1:%d", free_port());
        bus = bus_open(base, url, "free", &p);
        bus = cp_bus_free(bus);
        run_until(base, NULL, NULL, 50);

        /* failed connects already freed by hiredis, retry timers pending */
        bus = bus_open(base, url, "free", &p);
        run_until(base, NULL, NULL, 300);
        bus = cp_bus_free(bus);
        run_until(base, NULL, NULL, 50);

        /* connected but SUBSCRIBE and PING unanswered: not up, publishes
         * dropped (publishes pending at free: publish_receive) */
        lfd = silent_listener(&port);
        snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
        bus = bus_open(base, url, "free", &p);
        run_until(base, NULL, NULL, 300);
        ASSERT_FALSE(cp_bus_can_publish(bus));
        ASSERT_FALSE(cp_bus_is_subscribed(bus));
        ASSERT_EQ(-ENOTCONN, cp_bus_publish(bus, "acct", 1));
        bus = cp_bus_free(bus);
        run_until(base, NULL, NULL, 50);
        close(lfd);

        ASSERT_EQ(0, p.ups);
        ASSERT_EQ(0, p.downs);
        ASSERT_EQ(0, p.messages);
        event_base_free(base);
}

/* No answer to SUBSCRIBE nor to the publish connection's PING: both
 * attempts time out (3 s) and are retried. */
TEST(subscribe_attempt_times_out) {
        struct event_base *base = event_base_new();
        char url[64];
        probe p = { 0 };
        cp_bus *bus;
        cp_bus_stats st;
        int port, lfd;

        shared_url();
        lfd = silent_listener(&port);
        snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
        bus = bus_open(base, url, "timeout", &p);
        run_until(base, NULL, NULL, 3700);
        cp_bus_get_stats(bus, &st);
        ASSERT_EQ(2, st.reconnects);
        ASSERT_FALSE(cp_bus_is_subscribed(bus));
        ASSERT_FALSE(cp_bus_can_publish(bus));
        ASSERT_EQ(0, p.ups);
        bus = cp_bus_free(bus);
        close(lfd);
        event_base_free(base);
}

/* ---- Redis with a password or an ACL user ------------------------------ */

static bool cond_refused(void *arg) {
        return ((probe *) arg)->refused[0] != '\0';
}

/* requirepass: the right password fans out; the wrong one and none are
 * refused with Redis's own reason, counted, and never subscribed. */
TEST(redis_password) {
        struct event_base *base = event_base_new();
        own_redis r;
        probe pa = { 0 }, pb = { 0 }, pw = { 0 }, pn = { 0 };
        char good[128], wrong[128];
        cp_bus *a, *b, *w, *n;
        cp_bus_stats st;
        cp_error err = { 0 };

        shared_url();
        own_redis_init(&r);
        /* A password with characters the URL must percent-encode. */
        own_redis_start_with(&r, "--requirepass 'p@ss:w/rd'");
        snprintf(good, sizeof good, "redis://:p%%40ss%%3Aw%%2Frd@127.0.0.1:%d/0", r.port);
        snprintf(wrong, sizeof wrong, "redis://:nope@127.0.0.1:%d", r.port);
        a = bus_open(base, good, "auth", &pa);
        b = bus_open(base, good, "auth", &pb);
        w = bus_open(base, wrong, "auth", &pw);
        n = bus_open(base, r.url, "auth", &pn);
        ASSERT_TRUE(run_until(base, cond_ready, a, 5000));
        ASSERT_TRUE(run_until(base, cond_ready, b, 5000));
        ASSERT_EQ(0, cp_bus_publish(a, "acct", 11));
        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pb, 1 }, 5000));
        ASSERT_EQ(11, pb.last_serial);
        ASSERT_EQ(0, pa.refusals);

        ASSERT_TRUE(run_until(base, cond_refused, &pw, 5000));
        ASSERT_TRUE(strstr(pw.refused, "Redis refused authentication: WRONGPASS") == pw.refused);
        ASSERT_TRUE(strstr(pw.refused, "nope") == NULL);
        ASSERT_TRUE(run_until(base, cond_refused, &pn, 5000));
        ASSERT_TRUE(strstr(pn.refused, "NOAUTH") != NULL);
        run_until(base, NULL, NULL, 300);
        ASSERT_FALSE(cp_bus_is_subscribed(w));
        ASSERT_FALSE(cp_bus_can_publish(w));
        ASSERT_FALSE(cp_bus_is_subscribed(n));
        ASSERT_EQ(0, pw.ups);
        ASSERT_EQ(0, pn.ups);
        cp_bus_get_stats(w, &st);
        ASSERT_TRUE(st.auth_failures >= 2); /* both connections */
        ASSERT_EQ(1, pw.refusals);          /* reported on change only */

        /* The one-shot publish authenticates too. */
        ASSERT_EQ(2, cp_bus_publish_once(good, "auth", "acct", 12, 2000, &err));
        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pb, 2 }, 5000));
        ASSERT_EQ(12, pb.last_serial);
        ASSERT_EQ(-EACCES, cp_bus_publish_once(wrong, "auth", "acct", 13, 2000, &err));
        ASSERT_TRUE(strstr(err.message, "WRONGPASS") != NULL);
        ASSERT_TRUE(strstr(err.message, "nope") == NULL);

        /* Redis restarted: both connections AUTH again on reconnect. */
        own_redis_stop(&r);
        ASSERT_TRUE(run_until(base, cond_downs, &(count_arg) { &pb, 1 }, 5000));
        own_redis_start_with(&r, "--requirepass 'p@ss:w/rd'");
        ASSERT_TRUE(run_until(base, cond_ups, &(count_arg) { &pb, 2 }, 10000));
        ASSERT_TRUE(run_until(base, cond_ready, a, 10000));
        ASSERT_EQ(0, cp_bus_publish(a, "acct", 14));
        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pb, 3 }, 5000));
        ASSERT_EQ(14, pb.last_serial);

        a = cp_bus_free(a);
        b = cp_bus_free(b);
        w = cp_bus_free(w);
        n = cp_bus_free(n);
        event_base_free(base);
        own_redis_cleanup(&r);
}

/* An ACL user with only what the bus needs: its channels, PUBLISH,
 * SUBSCRIBE (and PING/AUTH, always allowed). One without the channel
 * is refused with NOPERM. */
TEST(redis_acl_user) {
        struct event_base *base = event_base_new();
        own_redis r;
        probe pa = { 0 }, pb = { 0 }, px = { 0 };
        char url[128], other[128];
        cp_bus *a, *b, *x;
        cp_error err = { 0 };

        shared_url();
        own_redis_init(&r);
        own_redis_start_with(&r, "--user default off --user netbird on '>bus-pw' resetchannels"
                                 " '&acl:account-serial' -@all +publish +subscribe +ping"
                                 " --user other on '>other-pw' resetchannels '&elsewhere' -@all +publish"
                                 " +subscribe +ping");
        snprintf(url, sizeof url, "redis://netbird:bus-pw@127.0.0.1:%d", r.port);
        snprintf(other, sizeof other, "redis://other:other-pw@127.0.0.1:%d", r.port);
        a = bus_open(base, url, "acl", &pa);
        b = bus_open(base, url, "acl", &pb);
        x = bus_open(base, other, "acl", &px);
        ASSERT_TRUE(run_until(base, cond_ready, a, 5000));
        ASSERT_TRUE(run_until(base, cond_ready, b, 5000));
        ASSERT_EQ(0, cp_bus_publish(a, "acct", 21));
        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pb, 1 }, 5000));
        ASSERT_EQ(21, pb.last_serial);
        ASSERT_EQ(2, cp_bus_publish_once(url, "acl", "acct", 22, 2000, &err));

        ASSERT_TRUE(run_until(base, cond_refused, &px, 5000));
        ASSERT_TRUE(strstr(px.refused, "NOPERM") != NULL);
        ASSERT_FALSE(cp_bus_is_subscribed(x));
        /* Its publish connection is up (AUTH and PING went through);
         * the refused PUBLISH drops it. */
        ASSERT_TRUE(run_until(base, (cond_fn) cp_bus_can_publish, x, 5000));
        /* serial 22 (cp_bus_publish_once above) may still be on its way
         * to a: let it arrive before counting. */
        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pb, 2 }, 5000));
        run_until(base, NULL, NULL, 300);
        cp_bus_stats before, after;
        int seen = pa.messages;
        cp_bus_get_stats(x, &before);
        ASSERT_EQ(0, cp_bus_publish(x, "acct", 24));
        run_until(base, NULL, NULL, 300);
        cp_bus_get_stats(x, &after);
        ASSERT_EQ(before.publish_dropped + 1, after.publish_dropped);
        ASSERT_TRUE(after.auth_failures > before.auth_failures);
        ASSERT_EQ(seen, pa.messages);       /* nothing reached the bus's channel */
        ASSERT_EQ(-EACCES, cp_bus_publish_once(other, "acl", "acct", 23, 2000, &err));

        a = cp_bus_free(a);
        b = cp_bus_free(b);
        x = cp_bus_free(x);
        event_base_free(base);
        own_redis_cleanup(&r);
}

static bool cond_accepted_can_publish(void *arg) {
        void **a = arg;
        probe *p = a[0];
        return p->accepts > 0 && !p->refused[0] && cp_bus_can_publish(a[1]);
}

/* Sets requirepass on r (whose password is now old_pw) to new_pw. */
static void redis_set_requirepass(own_redis *r, const char *old_pw, const char *new_pw) {
        redisContext *c = redisConnect("127.0.0.1", r->port);
        redisReply *rep;

        ASSERT_TRUE(c && !c->err);
        rep = redisCommand(c, "AUTH %s", old_pw);
        ASSERT_TRUE(rep && rep->type == REDIS_REPLY_STATUS);
        freeReplyObject(rep);
        rep = redisCommand(c, "CONFIG SET requirepass %s", new_pw);
        ASSERT_TRUE(rep && rep->type == REDIS_REPLY_STATUS);
        freeReplyObject(rep);
        redisFree(c);
}

/* No password in the URL, Redis wants one: the publish connection's PING
 * is refused (NOAUTH) at once, so nothing is published; once Redis stops
 * wanting a password the refusal clears on reconnect, with no PUBLISH. */
TEST(redis_noauth_clears_on_reconnect) {
        struct event_base *base = event_base_new();
        own_redis r;
        probe pn = { 0 }, pr = { 0 };
        cp_bus *n, *rx;
        cp_bus_stats st;

        shared_url();
        own_redis_init(&r);
        own_redis_start_with(&r, "--requirepass pw-1");
        n = bus_open(base, r.url, "noauth", &pn);
        ASSERT_TRUE(run_until(base, cond_refused, &pn, 5000));
        ASSERT_TRUE(strstr(pn.refused, "NOAUTH") != NULL);
        run_until(base, NULL, NULL, 300);
        ASSERT_FALSE(cp_bus_can_publish(n));
        ASSERT_EQ(-ENOTCONN, cp_bus_publish(n, "acct", 31));  /* refused: dropped */
        cp_bus_get_stats(n, &st);
        ASSERT_TRUE(st.auth_failures >= 2);                   /* SUBSCRIBE and PING */
        ASSERT_EQ(1, st.publish_dropped);

        redis_set_requirepass(&r, "pw-1", "");
        ASSERT_TRUE(run_until(base, cond_accepted_can_publish, (void *[]) { &pn, n }, 20000));
        ASSERT_EQ(1, pn.refusals);
        ASSERT_TRUE(run_until(base, cond_subscribed, n, 10000));
        rx = bus_open(base, r.url, "noauth", &pr);
        ASSERT_TRUE(run_until(base, cond_ready, rx, 5000));
        ASSERT_EQ(0, cp_bus_publish(n, "acct", 32));
        ASSERT_TRUE(run_until(base, cond_messages, &(count_arg) { &pr, 1 }, 5000));
        ASSERT_EQ(32, pr.last_serial);

        n = cp_bus_free(n);
        rx = cp_bus_free(rx);
        event_base_free(base);
        own_redis_cleanup(&r);
}

/* An ACL user that may subscribe but not publish: each reconnect's AUTH
 * and PING succeed, yet the NOPERM refusal stays until a PUBLISH goes
 * through, so on_refused does not toggle per publish. */
TEST(redis_noperm_publish_does_not_flap) {
        struct event_base *base = event_base_new();
        own_redis r;
        probe px = { 0 };
        char url[128];
        cp_bus *x;
        cp_bus_stats st;
        static const int gaps_ms[] = { 100, 250, 400, 150, 300, 100, 350, 200, 400, 120, 280, 100,
                                       330, 180, 400, 100 };
        int sent = 0;

        shared_url();
        own_redis_init(&r);
        own_redis_start_with(&r, "--user default off --user nopub on '>np-pw' allchannels -@all +subscribe +ping");
        snprintf(url, sizeof url, "redis://nopub:np-pw@127.0.0.1:%d", r.port);
        x = bus_open(base, url, "noperm", &px);
        ASSERT_TRUE(run_until(base, cond_ready, x, 5000));
        /* Until three PUBLISHes went out on three connections (each
         * refused, each dropping its connection), at most 60 tries. */
        for (size_t i = 0; i < 60 && sent < 3; i++) {
                if (cp_bus_publish(x, "acct", (int64_t) i) == 0)
                        sent++;
                run_until(base, NULL, NULL, gaps_ms[i % ELEMENTSOF(gaps_ms)]);
        }
        ASSERT_EQ(3, sent);
        ASSERT_TRUE(strstr(px.refused, "NOPERM") != NULL);
        ASSERT_EQ(1, px.refusals);
        ASSERT_EQ(0, px.accepts);
        ASSERT_TRUE(cp_bus_is_subscribed(x));
        cp_bus_get_stats(x, &st);
        ASSERT_EQ(0, (int) st.published);

        x = cp_bus_free(x);
        event_base_free(base);
        own_redis_cleanup(&r);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
