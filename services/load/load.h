/*
 * netbird-load: simulated NetBird agents against the management protocol
 * (README.md). One process, one thread driving one completion queue.
 *
 *   load-opts.c   command line -> load_opts (usage errors exit 2)
 *   load-keys.c   the keys file: peers kept between runs
 *   load-stats.c  latency samples, counters by status, the JSON summary
 *   load-run.c    the engine: channels, per-peer state machines, retries,
 *                 hold, changes, summary
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cp/nbclient.h"
#include "cp/strbuf.h"

#define LOAD_MAX_TARGETS        64
#define LOAD_MAX_SETUP_KEYS     64
#define LOAD_MAX_PEERS          1000000
#define LOAD_MAX_CONNECTIONS    4096

typedef struct load_opts {
        const char *targets[LOAD_MAX_TARGETS];
        size_t n_targets;
        const char *setup_keys[LOAD_MAX_SETUP_KEYS];
        size_t n_setup_keys;
        const char *setup_keys_file;    /* one key a line, after the --setup-key ones */
        int64_t peers_per_key;          /* peer i uses key (i / this) mod keys; default 1 */
        const char *target_mode;        /* "peer" (i mod T), "key", "spread": load_peer_target() */
        const char *report_file;        /* per-peer report, written on SIGUSR1 and at the end */
        int64_t peers;
        int64_t connections;            /* 0 = one per target */
        int64_t concurrency;
        double hold_s;
        double timeout_s;               /* bound of the opening phase */
        const char *keys_file;
        const char *ready_file;
        const char *hostname_prefix;
        bool retry;
        int64_t max_retries;            /* per peer */
        bool sync_only;                 /* no GetServerKey/Login per peer */
        bool reconnect;                 /* reopen Sync when the server ends a held stream */
        bool no_sync;                   /* GetServerKey + Login only */
        int64_t changes;                /* after opening: register N peers, one at a time */
        int64_t change_interval_ms;
        double change_timeout_s;
        bool quiet;
} load_opts;

/* The setup key peer i registers with (index into the keys: --setup-key
 * ones, then the file's; n_keys of them) and its rank among the peers of
 * that key: N consecutive peers share a key with --peers-per-key N > 1,
 * else peer i uses key i mod n_keys. */
size_t load_peer_key(const load_opts *o, size_t i, size_t n_keys, size_t *ret_rank);
/* The target of peer i: --target-mode peer: i mod T; key: its key's
 * index mod T (all peers of a key on one target); spread: (key index +
 * rank) mod T (each key's peers round-robin over the targets). */
size_t load_peer_target(const load_opts *o, size_t i, size_t n_keys);

/* Parses argv into *o. Returns 0, 1 when --help was printed, or -EINVAL
 * after printing the error and a hint to stderr. */
int load_opts_parse(load_opts *o, int argc, char **argv);
void load_usage(FILE *f);

/* ---- keys file ------------------------------------------------------------ */

typedef struct load_key {
        uint8_t priv[CP_WG_KEY_LEN];
        char hostname[64];
        bool registered;                /* known to the server from an earlier run */
} load_key;

/* Reads path into *ret (malloc'd array, free()) and *ret_n. A missing file
 * gives 0 keys. -EINVAL (with a message on stderr) on a malformed line. */
int load_keys_read(const char *path, load_key **ret, size_t *ret_n);
/* Writes keys to path atomically (a temporary file, then rename). */
int load_keys_write(const char *path, const load_key *keys, size_t n);

/* Reads the setup keys file (one key a line; blank lines and '#' lines
 * skipped) into *ret (malloc'd strings in a malloc'd array) and *ret_n.
 * -EINVAL with a message on stderr when it cannot be read or holds none. */
int load_setup_keys_read(const char *path, char ***ret, size_t *ret_n);

/* ---- statistics -------------------------------------------------------------- */

typedef struct load_series {
        double *v;
        size_t n, cap;
} load_series;

void load_series_add(load_series *s, double v);
void load_series_release(load_series *s);
/* Appends "name":{"n":..,"p50":..,"p99":..,"max":..} (milliseconds). */
void load_series_json(cp_strbuf *sb, const char *name, load_series *s);

/* Counts by gRPC status; "name":{"STATUS":n,...} */
typedef struct load_counts {
        uint64_t by_status[17 + 1];     /* the last slot: unknown codes */
} load_counts;

void load_counts_add(load_counts *c, grpc_status_code st);
uint64_t load_counts_total(const load_counts *c);
void load_counts_json(cp_strbuf *sb, const char *name, const load_counts *c);

/* Runs the load described by o; prints the summary line on stdout.
 * Returns the exit code: 0 all peers reached their goal, 1 otherwise. */
int load_run(const load_opts *o);
