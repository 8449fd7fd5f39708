/*
 * bench-proxy-logs-load: the load generator of bench-proxy-logs.py, in C.
 *
 * Proxies send one SendAccessLog per request they serve. Python's grpcio
 * costs the client about as much CPU per call as the server spends, so
 * on a small machine the Python senders cannot produce 10,000 calls a
 * second without taking the server's cores. This sends the same calls
 * from one thread on a completion queue: CHANNELS connections, WINDOW
 * calls in flight on each, for SECONDS, each entry with its own log id.
 *
 *   bench-proxy-logs-load TARGET TOKEN ACCOUNT SERVICE SECONDS CHANNELS WINDOW [RATE]
 *
 * RATE (calls a second, 0 = as fast as the window allows) paces the
 * starts: a call starts only while the calls started so far are fewer
 * than RATE times the time elapsed (an open-loop load, as proxies
 * serving traffic would send).
 *
 * Prints one line: "accepted N refused M seconds S".
 */
#include "cp/base.h"
#include "cp/nbclient.h"

#include <grpc/grpc.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proxy_service.pb-c.h"

#define METHOD "/management.ProxyService/SendAccessLog"

typedef struct slot {
        cp_nbc_call call;
        size_t channel;
} slot;

static double now_s(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static grpc_byte_buffer *request(const char *account, const char *service, unsigned long n) {
        Management__SendAccessLogRequest req = MANAGEMENT__SEND_ACCESS_LOG_REQUEST__INIT;
        Management__AccessLog log = MANAGEMENT__ACCESS_LOG__INIT;
        Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        char id[64], path[64];

        (void) snprintf(id, sizeof id, "c%ld-%lu", (long) getpid(), n);
        (void) snprintf(path, sizeof path, "/api/items/%lu", n);
        ts.seconds = (int64_t) time(NULL);
        log.timestamp = &ts;
        log.log_id = id;
        log.account_id = (char *) account;
        log.service_id = (char *) service;
        log.host = (char *) "app.bench.test";
        log.path = path;
        log.method = (char *) "GET";
        log.response_code = 200;
        log.duration_ms = 3;
        log.source_ip = (char *) "198.51.100.7";
        log.auth_success = true;
        log.protocol = (char *) "http";
        log.bytes_upload = 100;
        log.bytes_download = 2000;
        req.log = &log;

        size_t len = management__send_access_log_request__get_packed_size(&req);
        uint8_t *buf = cp_xmalloc(len + 1);
        (void) management__send_access_log_request__pack(&req, buf);
        grpc_slice s = grpc_slice_new(buf, len, free);
        grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);
        return bb;
}

int main(int argc, char **argv) {
        if (argc != 8 && argc != 9) {
                fprintf(stderr, "usage: %s TARGET TOKEN ACCOUNT SERVICE SECONDS CHANNELS WINDOW [RATE]\n", argv[0]);
                return 2;
        }
        const char *target = argv[1], *account = argv[3], *service = argv[4];
        double seconds = atof(argv[5]);
        size_t channels = (size_t) atoi(argv[6]), window = (size_t) atoi(argv[7]);
        double rate = argc == 9 ? atof(argv[8]) : 0;
        if (seconds <= 0 || channels < 1 || channels > 64 || window < 1 || window > 4096) {
                fprintf(stderr, "%s: SECONDS > 0, CHANNELS 1..64, WINDOW 1..4096\n", argv[0]);
                return 2;
        }
        char bearer[256];
        (void) snprintf(bearer, sizeof bearer, "Bearer %s", argv[2]);

        grpc_init();
        grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
        grpc_channel **ch = cp_xcalloc(channels, sizeof *ch);
        for (size_t i = 0; i < channels; i++)
                ch[i] = cp_nbc_channel_new(target, true);
        grpc_metadata md = { .key = grpc_slice_from_static_string("authorization"),
                             .value = grpc_slice_from_copied_string(bearer) };
        size_t n_slots = channels * window, inflight = 0;
        slot *slots = cp_xcalloc(n_slots, sizeof *slots);
        unsigned long sent = 0, accepted = 0, refused = 0;
        double t0 = now_s(), end = t0 + seconds;

        /* Idle slots wait here while the pace says "not yet". */
        slot **idle = cp_xcalloc(n_slots, sizeof *idle);
        size_t n_idle = 0;
        for (size_t i = 0; i < n_slots; i++) {
                slots[i].channel = i % channels;
                idle[n_idle++] = &slots[i];
        }
        for (;;) {
                double t = now_s();
                while (n_idle > 0 && t < end && (rate <= 0 || (double) sent < rate * (t - t0))) {
                        slot *sl = idle[--n_idle];
                        if (cp_nbc_call_start_md(&sl->call, ch[sl->channel], cq, METHOD,
                                                 request(account, service, sent++), 30000, false, sl, NULL, &md,
                                                 1) == 0)
                                inflight++;
                        else
                                refused++;
                }
                if (inflight == 0 && (t >= end || n_idle == 0))
                        break;
                gpr_timespec until = n_idle > 0 && t < end
                        ? gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_micros(500, GPR_TIMESPAN))
                        : gpr_inf_future(GPR_CLOCK_MONOTONIC);
                grpc_event ev = grpc_completion_queue_next(cq, until, NULL);
                if (ev.type == GRPC_QUEUE_TIMEOUT)
                        continue;
                if (ev.type != GRPC_OP_COMPLETE)
                        break;
                slot *sl = ev.tag;
                inflight--;
                if (ev.success && sl->call.status == GRPC_STATUS_OK)
                        accepted++;
                else
                        refused++;
                cp_nbc_call_release(&sl->call);
                idle[n_idle++] = sl;
        }
        free(idle);
        double took = now_s() - t0;
        printf("accepted %lu refused %lu seconds %.3f\n", accepted, refused, took);

        for (size_t i = 0; i < channels; i++)
                grpc_channel_destroy(ch[i]);
        grpc_completion_queue_shutdown(cq);
        while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type != GRPC_QUEUE_SHUTDOWN)
                ;
        grpc_completion_queue_destroy(cq);
        grpc_slice_unref(md.value);
        free(slots);
        free(ch);
        grpc_shutdown();
        return 0;
}
