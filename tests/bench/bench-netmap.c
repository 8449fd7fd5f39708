/*
 * bench-netmap: a full fan-out of common/netmap on NetBird's benchmark
 * shapes (docs/targets.md), timed next to the bare libsodium box of the
 * same bytes in the same run.
 *
 * Shapes (setupTestAccountManager(peers, groups)): `peers` peers split
 * into `groups` groups of consecutive peers, each group plus one extra
 * routing peer; one bidirectional ALL policy per group on itself; the
 * default All policy removed (the All group stays, holding everyone);
 * then either (previous shape) one route per group served by its
 * routing peer and distributed to the group, or (NetBird's full shape)
 * per group a network with that routing peer as its router, a host
 * resource and a resource policy from the group; both are printed. One
 * posture check ("All", NetBird version >= 0.0.1) that no policy names,
 * as NetBird's. Every agent is 0.60.0
 * with the source-prefix capability, as stock agents are. 2000/2000 is
 * 4,000 peers in 2,000 pairs (one peer and its routing peer), with 2,000
 * group policies and 2,000 routes, or, in the full shape, 4,000 policies
 * as NetBird counts them (2,000 of them resource policies).
 *
 * Printed per shape (best of N runs):
 *   fill         builder calls (stands in for the load)
 *   precompute   cp_netmap_builder_finish: the shared work
 *   encode 1t/2t every peer's SyncResponse on 1 and on 2 threads
 *   box          crypto_box_easy of the same messages (X25519 each time)
 *   box afternm  the same with a per-stream precomputed key
 *   fan-out      precompute + encode + box_afternm on 2 threads, the
 *                number to hold against the target
 * Next to the fan-out figures: the project's target (docs/targets.md) and
 * NetBird's UpdateAccountPeers band for the same shape (local and CI;
 * NetBird's figure also includes loading the account and a 100 ms
 * buffer wait, so it is the whole change, not only the build).
 *
 * Usage: bench-netmap [runs [SHAPE]]   (e.g. 3 5000/15; registered with meson benchmark(), not a test)
 */
#include "cp/base.h"
#include "cp/netmap.h"
#include "mgmt-agent-int.h"
#include "mgmt-malloc.h"
#include "mgmt-map.h"

#include <malloc.h>
#include <pthread.h>
#include <sodium.h>
#include <sys/resource.h>

typedef struct shape {
        const char *name;
        int peers;
        int groups;
        double target_ms;       /* 0 = none stated */
        double ratio_target;    /* fan-out / bare box, 0 = none stated */
        /* NetBird's UpdateAccountPeers bands, ms (docs/targets.md). */
        double nb_local_lo, nb_local_hi, nb_ci_lo, nb_ci_hi;
} shape;

/* "(target N ms; NetBird 800-1700 ms local, 2500-5000 ms CI; its low end is 9.5x this)" */
static const char *against(const shape *s, double ms, char *buf, size_t n) {
        char target[48] = "no target stated";

        if (s->target_ms > 0)
                (void) snprintf(target, sizeof target, "target %.0f ms", s->target_ms);
        (void) snprintf(buf, n, "(%s; NetBird %.0f-%.0f ms local, %.0f-%.0f ms CI; its low end is %.1fx this)",
                        target, s->nb_local_lo, s->nb_local_hi, s->nb_ci_lo, s->nb_ci_hi,
                        ms > 0 ? s->nb_local_lo / ms : 0.0);
        return buf;
}

static double now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec / 1e6;
}

static void die(const char *what, int r, const cp_error *e) {
        fprintf(stderr, "bench-netmap: %s: %d %s\n", what, r, e ? e->message : "");
        exit(1);
}

/* networks false: the previous shape, a route per group standing in for
 * NetBird's network resource. networks true: NetBird's full
 * setupTestAccountManager shape, per group a network, its routing peer as
 * the network's router (metric 9999, no masquerade), one host resource
 * and a bidirectional ALL policy from the group to the resource (its
 * destination resource), next to the group's own policy; no routes. */
static cp_netmap_builder *fill(const shape *s, bool networks, int *ret_total) {
        cp_netmap_account_spec spec = {
                .id = "bench-account", .serial = 42, .network_cidr = "100.64.0.0/10",
                .dns_domain = "netbird.selfhosted", .routing_peer_dns_resolution_enabled = true,
        };
        cp_netmap_builder *b;
        cp_error err = { 0 };
        int r, total = s->peers + s->groups;
        char id[32], key[64], label[32], ip[32], gid[32], pid[32], rid[32];
        uint8_t raw[32];

        if ((r = cp_netmap_builder_new(&spec, &b, &err)) < 0)
                die("builder", r, &err);
        for (int i = 0; i < total; i++) {
                (void) snprintf(id, sizeof id, "peer%06d", i);
                randombytes_buf(raw, sizeof raw);
                sodium_bin2base64(key, sizeof key, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
                (void) snprintf(label, sizeof label, "host-%d", i);
                (void) snprintf(ip, sizeof ip, "100.%d.%d.%d", 64 + (i >> 16), (i >> 8) & 255, i & 255);
                cp_netmap_peer_spec p = {
                        .id = id, .key = key, .ip = ip, .dns_label = label,
                        .ssh_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5dGVzdGtleXRlc3RrZXl0ZXN0a2V5",
                        .wt_version = "0.60.0", .cap_source_prefixes = true,
                };
                if ((r = cp_netmap_builder_add_peer(b, &p, &err)) < 0)
                        die("peer", r, &err);
        }
        if ((r = cp_netmap_builder_add_group(b, "all", "All", &err)) < 0)
                die("group", r, &err);
        for (int i = 0; i < total; i++) {
                (void) snprintf(id, sizeof id, "peer%06d", i);
                (void) cp_netmap_builder_add_group_peer(b, "all", id, &err);
        }
        for (int g = 0; g < s->groups; g++) {
                int lo = (int) ((long) g * s->peers / s->groups), hi = (int) ((long) (g + 1) * s->peers / s->groups);
                int router = s->peers + g;
                (void) snprintf(gid, sizeof gid, "group%04d", g);
                (void) cp_netmap_builder_add_group(b, gid, gid, &err);
                for (int i = lo; i <= hi; i++) {
                        (void) snprintf(id, sizeof id, "peer%06d", i == hi ? router : i);
                        (void) cp_netmap_builder_add_group_peer(b, gid, id, &err);
                }
                (void) snprintf(pid, sizeof pid, "policy%04d", g);
                (void) snprintf(rid, sizeof rid, "rule%04d", g);
                const char *grp[1] = { gid };
                cp_netmap_rule_spec rule = {
                        .id = rid, .policy_id = pid, .enabled = true, .protocol = CP_NETMAP_PROTO_ALL,
                        .bidirectional = true, .sources = grp, .n_sources = 1, .destinations = grp,
                        .n_destinations = 1,
                };
                (void) cp_netmap_builder_add_policy(b, pid, true, &err);
                if ((r = cp_netmap_builder_add_rule(b, &rule, &err)) < 0)
                        die("rule", r, &err);
                (void) snprintf(id, sizeof id, "peer%06d", router);
                if (networks) {
                        char nid[32], resid[32], rtid[32], addr[32], name[48];
                        (void) snprintf(nid, sizeof nid, "network%04d", g);
                        (void) snprintf(resid, sizeof resid, "resource%04d", g);
                        (void) snprintf(rtid, sizeof rtid, "router%04d", g);
                        (void) snprintf(name, sizeof name, "Network resource for Group %d", g);
                        (void) snprintf(addr, sizeof addr, "10.%d.%d.1/32", g >> 8, g & 255);
                        cp_netmap_network_resource_spec res = {
                                .id = resid, .network_id = nid, .name = name, .type = CP_NETMAP_RESOURCE_HOST,
                                .prefix = addr, .enabled = true,
                        };
                        cp_netmap_network_router_spec rt = {
                                .id = rtid, .network_id = nid, .peer = id, .metric = 9999, .enabled = true,
                        };
                        if ((r = cp_netmap_builder_add_network_resource(b, &res, &err)) < 0 ||
                            (r = cp_netmap_builder_add_network_router(b, &rt, &err)) < 0)
                                die("network", r, &err);
                        (void) snprintf(pid, sizeof pid, "policy-nr%04d", g);
                        (void) snprintf(rid, sizeof rid, "rule-nr%04d", g);
                        cp_netmap_rule_spec nr = {
                                .id = rid, .policy_id = pid, .enabled = true, .protocol = CP_NETMAP_PROTO_ALL,
                                .bidirectional = true, .sources = grp, .n_sources = 1,
                                .destination_resource = resid,
                        };
                        (void) cp_netmap_builder_add_policy(b, pid, true, &err);
                        if ((r = cp_netmap_builder_add_rule(b, &nr, &err)) < 0)
                                die("resource rule", r, &err);
                        continue;
                }
                (void) snprintf(rid, sizeof rid, "route%04d", g);
                char net[32];
                (void) snprintf(net, sizeof net, "10.%d.%d.0/24", g >> 8, g & 255);
                cp_netmap_route_spec route = {
                        .id = rid, .network = net, .network_type = 1, .net_id = rid, .peer = id,
                        .groups = grp, .n_groups = 1, .metric = 9999, .masquerade = true, .enabled = true,
                };
                if ((r = cp_netmap_builder_add_route(b, &route, &err)) < 0)
                        die("route", r, &err);
        }
        /* NetBird's shape also holds one posture check, which no policy
         * names. */
        if ((r = cp_netmap_builder_add_posture_check(b, "PostureChecksAll",
                                                     "{\"nb_version_check\": {\"min_version\": \"0.0.1\"}}", &err)) < 0)
                die("posture check", r, &err);
        *ret_total = total;
        return b;
}

/* ---- encode (and optionally seal) every peer on n threads ------------------------- */

typedef struct job {
        const cp_netmap_account *a;
        int first, step, total;
        bool seal;
        const uint8_t (*shared)[crypto_box_BEFORENMBYTES];
        size_t bytes;
        size_t max_len;
        size_t *lens;           /* per peer, filled when not NULL */
} job;

static void *run_job(void *arg) {
        job *j = arg;
        cp_netmap_worker *w = cp_netmap_worker_new();
        uint8_t *box = NULL, nonce[crypto_box_NONCEBYTES] = { 0 };
        size_t box_cap = 0;

        for (int i = j->first; i < j->total; i += j->step) {
                const uint8_t *data;
                size_t len;
                int r = cp_netmap_encode_sync(w, j->a, (size_t) i, NULL, &data, &len, NULL);
                if (r < 0)
                        die("encode", r, NULL);
                j->bytes += len;
                if (len > j->max_len)
                        j->max_len = len;
                if (j->lens)
                        j->lens[i] = len;
                if (j->seal) {
                        if (box_cap < len + crypto_box_MACBYTES) {
                                box_cap = (len + crypto_box_MACBYTES) * 2;
                                box = cp_xrealloc(box, box_cap);
                        }
                        nonce[0]++;
                        if (crypto_box_easy_afternm(box, data, len, nonce, j->shared[i]) != 0)
                                die("crypto_box_easy_afternm", -1, NULL);
                }
        }
        free(box);
        cp_netmap_worker_free(w);
        return NULL;
}

static double encode_all(const cp_netmap_account *a, int total, int threads, bool seal,
                         const uint8_t (*shared)[crypto_box_BEFORENMBYTES], size_t *lens, size_t *ret_bytes,
                         size_t *ret_max) {
        pthread_t th[8];
        job jobs[8];
        double t0 = now_ms();

        for (int k = 0; k < threads; k++) {
                jobs[k] = (job) { .a = a, .first = k, .step = threads, .total = total, .seal = seal,
                                  .shared = shared, .lens = lens };
                if (threads == 1)
                        run_job(&jobs[k]);
                else if (pthread_create(&th[k], NULL, run_job, &jobs[k]) != 0)
                        die("pthread_create", -errno, NULL);
        }
        size_t bytes = 0, mx = 0;
        for (int k = 0; k < threads; k++) {
                if (threads > 1)
                        (void) pthread_join(th[k], NULL);
                bytes += jobs[k].bytes;
                if (jobs[k].max_len > mx)
                        mx = jobs[k].max_len;
        }
        if (ret_bytes)
                *ret_bytes = bytes;
        if (ret_max)
                *ret_max = mx;
        return now_ms() - t0;
}

/* ---- the crypto baseline ------------------------------------------------------------- */

typedef struct box_job {
        int first, step, total;
        const size_t *lens;
        size_t max_len;
        bool afternm;
        const uint8_t (*shared)[crypto_box_BEFORENMBYTES];
        const uint8_t *pk, *sk;
} box_job;

static void *run_box(void *arg) {
        box_job *j = arg;
        uint8_t *msg = cp_xcalloc(1, j->max_len + 1), *out = cp_xmalloc(j->max_len + crypto_box_MACBYTES + 1);
        uint8_t nonce[crypto_box_NONCEBYTES] = { 0 };

        for (int i = j->first; i < j->total; i += j->step) {
                nonce[0]++;
                int r = j->afternm ? crypto_box_easy_afternm(out, msg, j->lens[i], nonce, j->shared[i])
                                   : crypto_box_easy(out, msg, j->lens[i], nonce, j->pk + (size_t) i * 32, j->sk);
                if (r != 0)
                        die("crypto_box", r, NULL);
        }
        free(msg);
        free(out);
        return NULL;
}

static double box_all(int total, int threads, const size_t *lens, size_t max_len, bool afternm,
                      const uint8_t (*shared)[crypto_box_BEFORENMBYTES], const uint8_t *pk, const uint8_t *sk) {
        pthread_t th[8];
        box_job jobs[8];
        double t0 = now_ms();

        for (int k = 0; k < threads; k++) {
                jobs[k] = (box_job) { k, threads, total, lens, max_len, afternm, shared, pk, sk };
                if (threads == 1)
                        run_box(&jobs[k]);
                else if (pthread_create(&th[k], NULL, run_box, &jobs[k]) != 0)
                        die("pthread_create", -errno, NULL);
        }
        for (int k = 0; threads > 1 && k < threads; k++)
                (void) pthread_join(th[k], NULL);
        return now_ms() - t0;
}

/* ---- the server's per-map path (mgmt-sync.c chunk_work), every message kept ---------- */

/* The server keeps each sealed message until its stream has sent it, so
 * these runs keep all of them until the fan-out is done (then free them,
 * untimed), on 2 threads like the workers:
 *   kept box     crypto_box_easy_afternm into a fresh malloc per message
 *                (the floor with the server's memory pattern)
 *   before       f1187ae's chunk_work: mgmt_map_pack (encode, copy into the
 *                arena), mgmt_agent_seal_msg, wipe the plaintext, release
 *   now          chunk_work's mgmt_map_seal (encode, seal from the encode
 *                buffer into the message) */
enum { SRV_BOX, SRV_BEFORE, SRV_NOW };

typedef struct srv_job {
        mgmt_maps *maps;
        const cp_netmap_account *a;
        int first, step, total, mode;
        const cp_crypto_box_shared *shared;
        const size_t *lens;
        size_t max_len;
        uint8_t **msgs;
} srv_job;

static const char *SERVER_KEY = "mRmR9bRBG7Xi7lMsr5tQfPfP8Z7J1PSP2dAUaeb2EXI=";

static void *run_srv(void *arg) {
        srv_job *j = arg;
        uint8_t *zeros = j->mode == SRV_BOX ? cp_xcalloc(1, j->max_len + 1) : NULL;
        mgmt_arena arena;

        mgmt_arena_init(&arena);
        for (int i = j->first; i < j->total; i += j->step) {
                const mgmt_map *map = (const mgmt_map *) j->a;
                char id[32];
                uint8_t *plain;
                size_t plain_len, n;
                cp_error err = { 0 };
                int r = 0;

                (void) snprintf(id, sizeof id, "peer%06d", i);
                switch (j->mode) {
                case SRV_BOX:
                        j->msgs[i] = cp_xmalloc(cp_crypto_box_sealed_len(j->lens[i]));
                        r = cp_crypto_box_seal_shared(&j->shared[i], zeros, j->lens[i], j->msgs[i],
                                                      cp_crypto_box_sealed_len(j->lens[i]), &err);
                        break;
                case SRV_BEFORE:
                        r = mgmt_map_pack(j->maps, map, id, NULL, &arena, &plain, &plain_len, &err);
                        if (r < 0)
                                break;
                        j->msgs[i] = mgmt_agent_seal_msg(SERVER_KEY, &j->shared[i], plain, plain_len, &n, &err);
                        cp_explicit_bzero(plain, plain_len);
                        mgmt_arena_release(&arena);
                        r = j->msgs[i] ? 0 : -EIO;
                        break;
                default:
                        r = mgmt_map_seal(j->maps, map, id, NULL, 0, SERVER_KEY, &j->shared[i], &j->msgs[i], &n,
                                          &err);
                }
                if (r < 0)
                        die("server path", r, &err);
        }
        mgmt_arena_release(&arena);
        free(zeros);
        return NULL;
}

typedef struct srv_fig {
        double ms;
        double cpu_ms;          /* user + system CPU of the process during the run */
        long faults;            /* minor page faults of the process during the run */
} srv_fig;

static long minflt(double *cpu_ms) {
        struct rusage ru;
        (void) getrusage(RUSAGE_SELF, &ru);
        *cpu_ms = (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
                  (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
        return ru.ru_minflt;
}

static srv_fig srv_all(mgmt_maps *maps, const cp_netmap_account *a, int total, int mode,
                       const cp_crypto_box_shared *shared, const size_t *lens, size_t max_len) {
        uint8_t **msgs = cp_xcalloc((size_t) total, sizeof *msgs);
        pthread_t th[2];
        srv_job jobs[2];
        double c0, c1;
        long f0 = minflt(&c0);
        double t0 = now_ms();

        for (int k = 0; k < 2; k++) {
                jobs[k] = (srv_job) { maps, a, k, 2, total, mode, shared, lens, max_len, msgs };
                if (pthread_create(&th[k], NULL, run_srv, &jobs[k]) != 0)
                        die("pthread_create", -errno, NULL);
        }
        for (int k = 0; k < 2; k++)
                (void) pthread_join(th[k], NULL);
        double t1 = now_ms();
        long f1 = minflt(&c1);
        srv_fig fig = { t1 - t0, c1 - c0, f1 - f0 };
        for (int i = 0; i < total; i++)
                free(msgs[i]);
        free(msgs);
        return fig;
}

static srv_fig min_fig(srv_fig a, srv_fig b) {
        return a.cpu_ms <= b.cpu_ms ? a : b;
}

static double min_d(double a, double b) {
        return a < b ? a : b;
}

static void bench(const shape *s, bool networks, int runs) {
        double t_fill = 1e30, t_pre = 1e30, t_enc1 = 1e30, t_enc2 = 1e30, t_box = 1e30, t_boxnm = 1e30,
               t_boxnm2 = 1e30, t_fan = 1e30, f_pre_min = 1e30;
        srv_fig s_box = { 1e30, 1e30, 0 }, s_before = { 1e30, 1e30, 0 }, s_now = { 1e30, 1e30, 0 },
                s_box_t = { 1e30, 1e30, 0 }, s_now_t = { 1e30, 1e30, 0 };
        bool tuned = false;
        mgmt_maps *maps = mgmt_maps_new(NULL, NULL, NULL);
        size_t bytes = 0, max_len = 0;
        int total = 0;
        cp_netmap_stats st = { 0 }, st_router = { 0 };

        /* keys for the crypto runs: one server key, one peer key each */
        int n_keys = s->peers + s->groups;
        uint8_t *pk = cp_xmalloc((size_t) n_keys * 32), sk[32], server_pk[32];
        uint8_t (*shared)[crypto_box_BEFORENMBYTES] = cp_xmalloc((size_t) n_keys * sizeof *shared);
        size_t *lens = cp_xcalloc((size_t) n_keys, sizeof *lens);
        cp_crypto_box_shared *cshared = cp_xmalloc((size_t) n_keys * sizeof *cshared);
        crypto_box_keypair(server_pk, sk);
        for (int i = 0; i < n_keys; i++) {
                uint8_t psk[32];
                crypto_box_keypair(pk + (size_t) i * 32, psk);
                if (crypto_box_beforenm(shared[i], pk + (size_t) i * 32, sk) != 0)
                        die("beforenm", -1, NULL);
                memcpy(cshared[i].key, shared[i], sizeof cshared[i].key);
        }

        for (int run = 0; run < runs; run++) {
                double t0 = now_ms();
                cp_netmap_builder *b = fill(s, networks, &total);
                double t1 = now_ms();
                cp_netmap_account *a;
                cp_error err = { 0 };
                int r = cp_netmap_builder_finish(b, &a, &err);
                if (r < 0)
                        die("finish", r, &err);
                double t2 = now_ms();
                t_fill = min_d(t_fill, t1 - t0);
                t_pre = min_d(t_pre, t2 - t1);
                t_enc1 = min_d(t_enc1, encode_all(a, total, 1, false, NULL, lens, &bytes, &max_len));
                t_enc2 = min_d(t_enc2, encode_all(a, total, 2, false, NULL, NULL, NULL, NULL));
                if (run == 0) {
                        cp_netmap_worker *w = cp_netmap_worker_new();
                        const uint8_t *d;
                        size_t n;
                        (void) cp_netmap_encode_sync(w, a, 0, NULL, &d, &n, &st);
                        (void) cp_netmap_encode_sync(w, a, (size_t) s->peers, NULL, &d, &n, &st_router);
                        cp_netmap_worker_free(w);
                }
                cp_netmap_account_unref(a);

                /* the whole fan-out on 2 threads: precompute, then encode+seal */
                b = fill(s, networks, &total);
                double f0 = now_ms();
                if ((r = cp_netmap_builder_finish(b, &a, &err)) < 0)
                        die("finish", r, &err);
                double f_pre = now_ms() - f0;
                t_fan = min_d(t_fan, f_pre + encode_all(a, total, 2, true, shared, NULL, NULL, NULL));
                f_pre_min = min_d(f_pre_min, f_pre);
                s_box = min_fig(s_box, srv_all(maps, a, total, SRV_BOX, cshared, lens, max_len));
                s_before = min_fig(s_before, srv_all(maps, a, total, SRV_BEFORE, cshared, lens, max_len));
                s_now = min_fig(s_now, srv_all(maps, a, total, SRV_NOW, cshared, lens, max_len));
                /* netbird-mgmt's malloc policy (mgmt-malloc.h), then back
                 * to glibc's default values for the next run's rows (its
                 * dynamic mmap threshold stays off: no difference for
                 * maps below 128 KiB) */
                tuned = mgmt_malloc_tune();
                if (tuned) {
                        (void) srv_all(maps, a, total, SRV_BOX, cshared, lens, max_len);  /* the memory, once */
                        s_box_t = min_fig(s_box_t, srv_all(maps, a, total, SRV_BOX, cshared, lens, max_len));
                        s_now_t = min_fig(s_now_t, srv_all(maps, a, total, SRV_NOW, cshared, lens, max_len));
                        (void) mallopt(M_MMAP_THRESHOLD, 128 * 1024);
                        (void) mallopt(M_TRIM_THRESHOLD, 128 * 1024);
                        (void) mallopt(M_TOP_PAD, 0);
                        (void) malloc_trim(0);
                }
                cp_netmap_account_unref(a);

                t_box = min_d(t_box, box_all(total, 1, lens, max_len, false, shared, pk, sk));
                t_boxnm = min_d(t_boxnm, box_all(total, 1, lens, max_len, true, shared, pk, sk));
                t_boxnm2 = min_d(t_boxnm2, box_all(total, 2, lens, max_len, true, shared, pk, sk));
        }

        char cmp[200];

        printf("\n== %s %s: %d peers, %d groups (best of %d runs); NetBird UpdateAccountPeers band:"
               " %.0f-%.0f ms local, %.0f-%.0f ms CI (4 vCPU)\n", s->name,
               networks ? "networks (NetBird's full shape)" : "routes (previous shape)", total, s->groups, runs,
               s->nb_local_lo, s->nb_local_hi, s->nb_ci_lo, s->nb_ci_hi);
        printf("  map of peer 0: %zu remote peers, %zu firewall rules, %zu routes, %zu DNS records\n",
               st.remote_peers, st.firewall_rules, st.routes, st.dns_records);
        printf("  map of routing peer 0: %zu remote peers, %zu firewall rules, %zu routes,"
               " %zu route firewall rules\n",
               st_router.remote_peers, st_router.firewall_rules, st_router.routes, st_router.route_firewall_rules);
        printf("  bytes: %.1f MB total, %.1f KB per peer, largest %.1f KB\n", (double) bytes / 1e6,
               (double) bytes / 1e3 / total, (double) max_len / 1e3);
        printf("  fill (builder calls)          %8.2f ms\n", t_fill);
        printf("  precompute (finish)           %8.2f ms\n", t_pre);
        printf("  encode, 1 thread              %8.2f ms  %6.2f us/peer  %6.0f MB/s\n", t_enc1,
               t_enc1 * 1e3 / total, (double) bytes / 1e3 / t_enc1);
        printf("  encode, 2 threads             %8.2f ms  %6.2f us/peer\n", t_enc2, t_enc2 * 1e3 / total);
        printf("  precompute + encode (2t)      %8.2f ms  %s\n", t_pre + t_enc2,
               against(s, t_pre + t_enc2, cmp, sizeof cmp));
        printf("  crypto_box_easy, 1 thread     %8.2f ms  (X25519 per message)\n", t_box);
        printf("  crypto_box_easy_afternm, 1t   %8.2f ms  (shared key per stream)\n", t_boxnm);
        printf("  crypto_box_easy_afternm, 2t   %8.2f ms\n", t_boxnm2);
        printf("  fan-out: precompute + encode + seal (afternm), 2 threads  %8.2f ms  %s\n", t_fan,
               against(s, t_fan, cmp, sizeof cmp));
        printf("  ratios: encode(1t)/box_easy(1t) = %.2f, encode(1t)/box_afternm(1t) = %.2f,"
               " fan-out(2t)/box_afternm(2t) = %.2f",
               t_enc1 / t_box, t_enc1 / t_boxnm, t_fan / t_boxnm2);
        if (s->ratio_target > 0)
                printf(" (target <= %.1f)", s->ratio_target);
        printf("\n");
        printf("  server's per-map path, 2 threads, every message kept until the end (as queued; best CPU of the runs):\n");
        printf("    box afternm into a malloc each %8.2f ms  %8.2f CPU-ms  %7ld page faults\n", s_box.ms,
               s_box.cpu_ms, s_box.faults);
        printf("    before (pack, copy, seal, wipe)%8.2f ms  %8.2f CPU-ms  %7ld page faults  CPU %.2fx kept box\n",
               s_before.ms, s_before.cpu_ms, s_before.faults, s_before.cpu_ms / s_box.cpu_ms);
        printf("    now (mgmt_map_seal)            %8.2f ms  %8.2f CPU-ms  %7ld page faults  CPU %.2fx kept box\n",
               s_now.ms, s_now.cpu_ms, s_now.faults, s_now.cpu_ms / s_box.cpu_ms);
        if (tuned) {
                printf("    with netbird-mgmt's malloc policy (freed memory kept between fan-outs):\n");
                printf("    box afternm into a malloc each %8.2f ms  %8.2f CPU-ms  %7ld page faults\n", s_box_t.ms,
                       s_box_t.cpu_ms, s_box_t.faults);
                printf("    now (mgmt_map_seal)            %8.2f ms  %8.2f CPU-ms  %7ld page faults  CPU %.2fx kept box,"
                       " %.2fx glibc defaults' before\n", s_now_t.ms, s_now_t.cpu_ms, s_now_t.faults,
                       s_now_t.cpu_ms / s_box_t.cpu_ms, s_now_t.cpu_ms / s_before.cpu_ms);
        } else
                printf("    (malloc policy not applied: GLIBC_TUNABLES or MALLOC_* set)\n");
        printf("    box afternm, reused buffer (2t)%8.2f ms  (the floor above: no page faults)\n", t_boxnm2);
        if (tuned)
                printf("    precompute + now (policy)      %8.2f ms  %s\n", f_pre_min + s_now_t.ms,
                       against(s, f_pre_min + s_now_t.ms, cmp, sizeof cmp));
        free(cshared);
        maps = mgmt_maps_free(maps);
        free(pk);
        free(shared);
        free(lens);
}

int main(int argc, char **argv) {
        int runs = argc > 1 ? atoi(argv[1]) : 5;
        static const shape shapes[] = {
                { "5000/200", 5000, 200, 50, 0, 800, 1700, 2500, 5000 },
                { "5000/15", 5000, 15, 250, 1.5, 1300, 2100, 4900, 7000 },
                { "2000/2000", 2000, 2000, 0, 0, 1300, 2400, 3000, 6400 },
        };

        if (runs < 1)
                runs = 1;
        if (sodium_init() < 0)
                die("sodium_init", -1, NULL);
        printf("bench-netmap: %ld CPUs online\n", sysconf(_SC_NPROCESSORS_ONLN));
        for (size_t i = 0; i < ELEMENTSOF(shapes); i++) {
                if (argc > 2 && strcmp(argv[2], shapes[i].name) != 0)
                        continue;
                bench(&shapes[i], false, runs);
                bench(&shapes[i], true, runs);
        }
        return 0;
}
