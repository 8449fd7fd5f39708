/*
 * netbird-load's command line: one table row per option (kind, field,
 * range, help), so parsing, checking and --help cannot drift apart.
 */
#include "cp/base.h"
#include "cp/util.h"
#include "load.h"

#include <getopt.h>
#include <math.h>

typedef enum opt_kind {
        K_TARGET,       /* repeatable string into targets[] */
        K_SETUP_KEY,    /* repeatable string into setup_keys[] */
        K_INT,          /* int64_t in [min, max] */
        K_SECONDS,      /* double >= min, <= max */
        K_STRING,       /* const char * */
        K_FLAG,         /* bool set to true */
        K_HELP,
} opt_kind;

typedef struct opt_row {
        const char *name;
        opt_kind kind;
        size_t offset;
        double min, max;
        const char *arg;
        const char *help;
} opt_row;

#define F(field) offsetof(load_opts, field)

static const opt_row rows[] = {
        { "target", K_TARGET, 0, 0, 0, "HOST:PORT",
          "management server; repeatable, peers are spread round-robin over targets" },
        { "setup-key", K_SETUP_KEY, 0, 0, 0, "KEY",
          "setup key for registering new peers; repeatable, peer i uses key i mod n" },
        { "setup-keys-file", K_STRING, F(setup_keys_file), 0, 0, "PATH",
          "setup keys, one a line (e.g. one per tenant), used after the --setup-key ones" },
        { "peers-per-key", K_INT, F(peers_per_key), 1, LOAD_MAX_PEERS, "N",
          "peer i registers with key (i / N) mod keys: N consecutive peers share a key; default 1" },
        { "target-mode", K_STRING, F(target_mode), 0, 0, "peer|key|spread",
          "peer i's target: peer: i mod targets (default); key: its setup key's index mod targets (a key's "
          "peers on one); spread: (key index + rank among the key's peers) mod targets" },
        { "peers", K_INT, F(peers), 1, LOAD_MAX_PEERS, "N", "simulated peers (required)" },
        { "connections", K_INT, F(connections), 1, LOAD_MAX_CONNECTIONS, "M",
          "gRPC channels, each its own TCP connection (default: one per target); many streams share one" },
        { "concurrency", K_INT, F(concurrency), 1, LOAD_MAX_PEERS, "K",
          "peers opening at once (GetServerKey, Login, Sync until the first map); default 100" },
        { "hold", K_SECONDS, F(hold_s), 0, 86400, "SECONDS",
          "keep the streams open this long after all opened, then cancel them; default 0" },
        { "timeout", K_SECONDS, F(timeout_s), 1, 86400, "SECONDS",
          "bound of the opening phase; what is still opening then is cancelled; default 300" },
        { "keys-file", K_STRING, F(keys_file), 0, 0, "PATH",
          "peers' private keys: reused when the file exists (re-Login), new peers appended" },
        { "retry", K_FLAG, F(retry), 0, 0, NULL,
          "retry RESOURCE_EXHAUSTED and UNAVAILABLE with exponential backoff (counted)" },
        { "max-retries", K_INT, F(max_retries), 0, 1000, "N", "retries per peer with --retry; default 50" },
        { "reconnect", K_FLAG, F(reconnect), 0, 0, NULL,
          "reopen Sync when the server ends a held stream, with NetBird's backoff (0.8 s x1.7 to 10 s, jitter),"
          " counted" },
        { "sync-only", K_FLAG, F(sync_only), 0, 0, NULL,
          "skip GetServerKey and Login per peer: Sync only (peers must be registered: keys file)" },
        { "no-sync", K_FLAG, F(no_sync), 0, 0, NULL, "GetServerKey and Login only, no Sync stream" },
        { "changes", K_INT, F(changes), 0, 10000, "N",
          "after opening: register N more peers via the first target, one at a time, and time until "
          "every held stream has a newer map" },
        { "change-interval", K_INT, F(change_interval_ms), 0, 600000, "MS", "pause before each change; default 500" },
        { "change-timeout", K_SECONDS, F(change_timeout_s), 1, 3600, "SECONDS",
          "give up waiting for one change after this long; default 30" },
        { "ready-file", K_STRING, F(ready_file), 0, 0, "PATH",
          "written (\"open N\") once the opening phase is over, for scripts that measure the server" },
        { "hostname-prefix", K_STRING, F(hostname_prefix), 0, 0, "TEXT", "new peers' hostnames: TEXT-<i>; default load" },
        { "report-file", K_STRING, F(report_file), 0, 0, "PATH",
          "per-peer report (updates, serial, times of the last updates), written on SIGUSR1 and at the end" },
        { "quiet", K_FLAG, F(quiet), 0, 0, NULL, "no progress lines on stderr" },
        { "help", K_HELP, 0, 0, 0, NULL, "this text" },
};

void load_usage(FILE *f) {
        fprintf(f, "usage: netbird-load --target HOST:PORT [--target ...] --peers N [options]\n\n"
                   "Simulates NetBird agents: GetServerKey, Login (registering new peers with a setup key),\n"
                   "then a Sync stream each, over few gRPC connections; prints one JSON summary line.\n\n");
        for (size_t i = 0; i < ELEMENTSOF(rows); i++) {
                char left[48];
                (void) snprintf(left, sizeof left, "--%s%s%s", rows[i].name, rows[i].arg ? " " : "",
                                rows[i].arg ? rows[i].arg : "");
                fprintf(f, "  %-26s %s\n", left, rows[i].help);
        }
}

_printf_(1, 2) static int usage_error(const char *fmt, ...) {
        va_list ap;

        fputs("netbird-load: error: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputs("\nhint: netbird-load --help lists the options\n", stderr);
        return -EINVAL;
}

static int parse_seconds(const char *s, double min, double max, double *ret) {
        char *end;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (!*s || *end || errno || !isfinite(v) || v < min || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

static int apply(load_opts *o, const opt_row *row, const char *val) {
        char *base = (char *) o;
        int64_t n;
        double d;

        switch (row->kind) {
        case K_TARGET:
                if (o->n_targets == LOAD_MAX_TARGETS)
                        return usage_error("--target: at most %d targets", LOAD_MAX_TARGETS);
                if (!*val || !strchr(val, ':'))
                        return usage_error("--target: expected HOST:PORT, got \"%s\"", val);
                o->targets[o->n_targets++] = val;
                return 0;
        case K_SETUP_KEY:
                if (o->n_setup_keys == LOAD_MAX_SETUP_KEYS)
                        return usage_error("--setup-key: at most %d keys", LOAD_MAX_SETUP_KEYS);
                if (!*val)
                        return usage_error("--setup-key: empty key");
                o->setup_keys[o->n_setup_keys++] = val;
                return 0;
        case K_INT:
                if (cp_parse_int64(val, (int64_t) row->min, (int64_t) row->max, &n) < 0)
                        return usage_error("--%s: expected an integer from %.0f to %.0f, got \"%s\"", row->name,
                                           row->min, row->max, val);
                *(int64_t *) (base + row->offset) = n;
                return 0;
        case K_SECONDS:
                if (parse_seconds(val, row->min, row->max, &d) < 0)
                        return usage_error("--%s: expected seconds from %g to %g, got \"%s\"", row->name, row->min,
                                           row->max, val);
                *(double *) (base + row->offset) = d;
                return 0;
        case K_STRING:
                if (!*val)
                        return usage_error("--%s: empty value", row->name);
                *(const char **) (base + row->offset) = val;
                return 0;
        case K_FLAG:
                *(bool *) (base + row->offset) = true;
                return 0;
        case K_HELP:
                break;
        }
        return 0;
}

static int check(const load_opts *o) {
        if (o->n_targets == 0)
                return usage_error("--target is required");
        if (o->peers == 0)
                return usage_error("--peers is required");
        if (o->connections && (size_t) o->connections < o->n_targets)
                return usage_error("--connections (%" PRId64 ") must be at least the number of targets (%zu)",
                                   o->connections, o->n_targets);
        if (strcmp(o->target_mode, "peer") != 0 && strcmp(o->target_mode, "key") != 0 &&
            strcmp(o->target_mode, "spread") != 0)
                return usage_error("--target-mode: expected peer, key or spread, got \"%s\"", o->target_mode);
        if (o->sync_only && o->no_sync)
                return usage_error("--sync-only and --no-sync exclude each other");
        if (o->sync_only && !o->keys_file)
                return usage_error("--sync-only needs --keys-file with registered peers");
        if (o->changes && o->n_setup_keys == 0 && !o->setup_keys_file)
                return usage_error("--changes registers new peers: it needs --setup-key");
        if (o->changes && o->no_sync)
                return usage_error("--changes measures Sync streams: it cannot go with --no-sync");
        return 0;
}

size_t load_peer_key(const load_opts *o, size_t i, size_t n_keys, size_t *ret_rank) {
        size_t per = (size_t) o->peers_per_key;

        if (n_keys == 0)
                n_keys = 1;
        if (per > 1) {
                *ret_rank = i % per + per * (i / (per * n_keys));
                return (i / per) % n_keys;
        }
        *ret_rank = i / n_keys;
        return i % n_keys;
}

size_t load_peer_target(const load_opts *o, size_t i, size_t n_keys) {
        size_t rank, key = load_peer_key(o, i, n_keys, &rank);

        if (strcmp(o->target_mode, "key") == 0)
                return key % o->n_targets;
        if (strcmp(o->target_mode, "spread") == 0)
                return (key + rank) % o->n_targets;
        return i % o->n_targets;
}

int load_opts_parse(load_opts *o, int argc, char **argv) {
        struct option lo[ELEMENTSOF(rows) + 1];
        int c, idx;

        memset(o, 0, sizeof *o);
        o->concurrency = 100;
        o->timeout_s = 300;
        o->max_retries = 50;
        o->change_interval_ms = 500;
        o->change_timeout_s = 30;
        o->hostname_prefix = "load";
        o->peers_per_key = 1;
        o->target_mode = "peer";
        for (size_t i = 0; i < ELEMENTSOF(rows); i++) {
                bool has_arg = rows[i].kind != K_FLAG && rows[i].kind != K_HELP;
                lo[i] = (struct option) { rows[i].name, has_arg ? required_argument : no_argument, NULL, (int) i };
        }
        lo[ELEMENTSOF(rows)] = (struct option) { 0 };
        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, ":", lo, &idx)) != -1) {
                if (c == '?')
                        return usage_error("unknown option \"%s\"", argv[optind - 1]);
                if (c == ':')
                        return usage_error("option \"%s\" needs a value", argv[optind - 1]);
                if (rows[c].kind == K_HELP) {
                        load_usage(stdout);
                        return 1;
                }
                if (apply(o, &rows[c], optarg) < 0)
                        return -EINVAL;
        }
        if (optind < argc)
                return usage_error("unexpected argument \"%s\"", argv[optind]);
        return check(o);
}
