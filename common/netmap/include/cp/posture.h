/*
 * cp/posture.h: NetBird's posture checks on a peer's reported meta
 * (management/server/posture): version rules, and each check's verdict.
 *
 * A posture check is kept as the REST API's JSON "checks" object
 * (nb_version_check, os_version_check, geo_location_check,
 * peer_network_range_check, process_check), which is what the
 * posture_checks.checks column holds. Evaluation takes a plain peer
 * description (cp_posture_peer, all borrowed) so the network map and the
 * unit tests call the same code. Thread-safe, no allocation kept.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Whether s is a version hashicorp/go-version's NewVersion accepts. */
bool cp_posture_version_valid(const char *s);
/* go-version's constraint ">= min" on have: -1 when either does not parse
 * (NetBird counts that as a failed check), else 1 (meets) or 0. A
 * prerelease version meets ">= min" only when min is a prerelease of the
 * same segments, as go-version rules. */
int cp_posture_version_at_least(const char *have, const char *min);

/* What a check reads of a peer; strings may be "" (not NULL). */
typedef struct cp_posture_peer {
        const char *wt_version;         /* the agent's version */
        const char *go_os;              /* "linux", "darwin", "windows", "android", "ios", ... */
        const char *os_version;
        const char *kernel_version;
        const char *const *net_addrs;   /* the agent's interface prefixes ("10.0.0.5/24") */
        size_t n_net_addrs;
        const char *connection_ip;      /* its public IP, "" when unknown */
        const char *const *running;     /* files the agent reported as running processes */
        size_t n_running;
        const char *country_code;       /* location, "" when not known */
        const char *city_name;
} cp_posture_peer;

/* NetBird's verdict of every check in checks (the JSON object above) on
 * peer: true when all pass (a check that errs fails). An empty object
 * passes. */
bool cp_posture_check_peer(const json_t *checks, const cp_posture_peer *peer);

/* Appends to files the process paths of checks (linux, mac, windows, the
 * non-empty ones in that order, per process): the Checks.Files the agent
 * must report on. Returns how many were appended. */
size_t cp_posture_files(const json_t *checks, json_t *files);
