/*
 * bench-bare-grpc: the floor for tests/bench/load part b (RSS per idle
 * Sync stream). A gRPC C core server with no application state: it
 * answers /management.ManagementService/GetServerKey with a fresh X25519
 * public key (so netbird-load can seal its requests) and holds every
 * /management.ManagementService/Sync call: RECV_CLOSE_ON_SERVER, then the
 * initial metadata and one small message (an EncryptedMessage whose body
 * is random bytes: netbird-load counts any first message as an opened
 * stream, it only fails to read a serial from it), then nothing until the
 * client goes. One completion queue, driven by the main thread, the same
 * Debian libgrpc as netbird-mgmt.
 *
 *   bench-bare-grpc --port N [--ready-file PATH] [--message-bytes N]
 *                   [--fanout-file PATH --fanout-bytes N] [--arg KEY=INT]...
 *
 * --arg adds an integer channel argument to the server (the ones
 * netbird-mgmt sets can be tried on the floor too, e.g.
 * --arg grpc.http2.lookahead_bytes=16384). The ready file gets
 * "listening PORT" once the port is bound.
 *
 * The fan-out floor (bench-e2e's "bare gRPC" baseline): with --fanout-file,
 * SIGUSR1 sends one more message of --fanout-bytes random bytes to every
 * Sync stream that has its first message out, all from the one thread as
 * fast as gRPC takes them, the same slice shared by every stream (no
 * sealing, no copy: the floor of the transport), and once the last of
 * those sends completed appends "fanout STREAMS BYTES MS T0" to the file
 * (MS: from the first send started to the last completion; T0: that start,
 * CLOCK_MONOTONIC ms, the clock of netbird-load's report). SIGTERM/SIGINT: shutdown,
 * every call cancelled, exit 0. Listens on 127.0.0.1 only.
 */
#include <errno.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <signal.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOTS 16
#define MAX_ARGS 32

enum { M_KEY, M_SYNC, N_METHODS };
static const char *const method_path[N_METHODS] = {
        "/management.ManagementService/GetServerKey",
        "/management.ManagementService/Sync",
};

/* The tag of a batch is the call's address plus one of these (the struct
 * is at least 8-aligned). */
enum { T_NEW, T_CLOSE, T_SEND, T_STATUS, T_FAN };

typedef struct bcall {
        struct bcall *prev, *next;      /* open Sync calls (the fan-out's list) */
        grpc_call *call;
        gpr_timespec deadline;
        grpc_metadata_array md;
        grpc_byte_buffer *payload;
        grpc_byte_buffer *send;
        int cancelled;
        unsigned char method;
        unsigned char refs;
        bool linked;
        bool fanning;                   /* a fan-out message is in flight */
} bcall;

static volatile sig_atomic_t stop, fanout_req;
static bcall *syncs;                    /* open Sync calls */
static const char *fanout_file;
static grpc_slice fan_msg;
static size_t fan_pending, fan_streams;
static long fan_bytes = 0;
static struct timespec fan_t0;
static grpc_server *server;
static grpc_completion_queue *cq;
static void *registered[N_METHODS];
static grpc_slice key_msg, sync_msg;
static size_t live;

static void on_signal(int sig) {
        (void) sig;
        stop = 1;
}

static void on_usr1(int sig) {
        (void) sig;
        fanout_req = 1;
}

static void link_sync(bcall *c) {
        c->next = syncs;
        if (syncs)
                syncs->prev = c;
        syncs = c;
        c->linked = true;
}

static void unlink_sync(bcall *c) {
        if (!c->linked)
                return;
        if (c->prev)
                c->prev->next = c->next;
        else
                syncs = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->linked = false;
}

static void *tag_of(bcall *c, int kind) {
        return (void *) ((uintptr_t) c | (uintptr_t) kind);
}

static void post_slot(unsigned char method) {
        bcall *c = calloc(1, sizeof *c);

        if (!c) {
                perror("bench-bare-grpc: calloc");
                exit(1);
        }
        c->method = method;
        c->refs = 1;
        grpc_metadata_array_init(&c->md);
        if (grpc_server_request_registered_call(server, registered[method], &c->call, &c->deadline, &c->md,
                                                &c->payload, cq, cq, tag_of(c, T_NEW)) != GRPC_CALL_OK) {
                fprintf(stderr, "bench-bare-grpc: cannot post a request slot\n");
                exit(1);
        }
}

static void unref(bcall *c) {
        if (--c->refs > 0)
                return;
        unlink_sync(c);
        if (c->send)
                grpc_byte_buffer_destroy(c->send);
        if (c->call) {
                grpc_call_unref(c->call);
                live--;
        }
        free(c);
}

static void batch(bcall *c, const grpc_op *ops, size_t n, int kind) {
        c->refs++;
        if (grpc_call_start_batch(c->call, ops, n, tag_of(c, kind), NULL) != GRPC_CALL_OK) {
                fprintf(stderr, "bench-bare-grpc: cannot start a batch\n");
                c->refs--;
        }
}

static void on_new(bcall *c, bool ok) {
        grpc_op ops[3];

        if (!ok) {
                c->call = NULL;         /* slot given back at shutdown */
                return;
        }
        live++;
        if (!stop)
                post_slot(c->method);
        /* No application state: the request and its metadata go at once. */
        if (c->payload) {
                grpc_byte_buffer_destroy(c->payload);
                c->payload = NULL;
        }
        grpc_metadata_array_destroy(&c->md);
        memset(&c->md, 0, sizeof c->md);

        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        ops[0].data.recv_close_on_server.cancelled = &c->cancelled;
        batch(c, ops, 1, T_CLOSE);

        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[1].op = GRPC_OP_SEND_MESSAGE;
        if (c->method == M_KEY) {
                c->send = grpc_raw_byte_buffer_create(&key_msg, 1);
                ops[1].data.send_message.send_message = c->send;
                ops[2].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
                ops[2].data.send_status_from_server.status = GRPC_STATUS_OK;
                batch(c, ops, 3, T_STATUS);
        } else {
                c->send = grpc_raw_byte_buffer_create(&sync_msg, 1);
                ops[1].data.send_message.send_message = c->send;
                batch(c, ops, 2, T_SEND);
                link_sync(c);
        }
}

static void fan_finish(void) {
        struct timespec t1;
        FILE *f;

        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (double) (t1.tv_sec - fan_t0.tv_sec) * 1e3 + (double) (t1.tv_nsec - fan_t0.tv_nsec) / 1e6;
        f = fopen(fanout_file, "a");
        if (!f || fprintf(f, "fanout %zu %ld %.3f %.3f\n", fan_streams, fan_bytes, ms,
                              (double) fan_t0.tv_sec * 1e3 + (double) fan_t0.tv_nsec / 1e6) < 0 || fclose(f) != 0)
                fprintf(stderr, "bench-bare-grpc: cannot write %s\n", fanout_file);
}

/* SIGUSR1: one message to every open Sync stream whose first message is
 * out and which has no fan-out message in flight. */
static void fan_start(void) {
        grpc_op op;

        if (fan_pending)
                return;                 /* the last one is still going */
        fan_streams = 0;
        clock_gettime(CLOCK_MONOTONIC, &fan_t0);
        for (bcall *c = syncs; c; c = c->next) {
                if (c->send || c->fanning || c->cancelled)
                        continue;
                memset(&op, 0, sizeof op);
                op.op = GRPC_OP_SEND_MESSAGE;
                c->send = grpc_raw_byte_buffer_create(&fan_msg, 1);
                op.data.send_message.send_message = c->send;
                c->fanning = true;
                fan_pending++;
                fan_streams++;
                batch(c, &op, 1, T_FAN);
        }
        if (!fan_pending)
                fan_finish();
}

static void on_event(void *tag, bool ok) {
        bcall *c = (bcall *) ((uintptr_t) tag & ~(uintptr_t) 7);
        int kind = (int) ((uintptr_t) tag & 7);

        switch (kind) {
        case T_NEW:
                on_new(c, ok);
                break;
        case T_SEND:
                /* Nothing kept after the message went out. */
                grpc_byte_buffer_destroy(c->send);
                c->send = NULL;
                break;
        case T_FAN:
                grpc_byte_buffer_destroy(c->send);
                c->send = NULL;
                c->fanning = false;
                if (--fan_pending == 0)
                        fan_finish();
                break;
        case T_CLOSE:
                unlink_sync(c);
                break;
        case T_STATUS:
                break;
        }
        unref(c);
}

/* protobuf: field (length-delimited) number f */
static size_t put_bytes(uint8_t *p, unsigned f, const void *data, size_t len) {
        size_t n = 0;

        p[n++] = (uint8_t) (f << 3 | 2);
        for (size_t v = len;; v >>= 7) {
                p[n++] = (uint8_t) ((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
                if (v <= 0x7f)
                        break;
        }
        memcpy(p + n, data, len);
        return n + len;
}

static void make_messages(size_t body_len) {
        uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];
        char b64[sodium_base64_ENCODED_LEN(crypto_box_PUBLICKEYBYTES, sodium_base64_VARIANT_ORIGINAL)];
        uint8_t buf[128], ts[16];
        uint8_t *sbuf, *body;
        size_t n, tn = 0;
        uint64_t secs = (uint64_t) time(NULL) + 86400;

        crypto_box_keypair(pk, sk);
        sodium_memzero(sk, sizeof sk);
        sodium_bin2base64(b64, sizeof b64, pk, sizeof pk, sodium_base64_VARIANT_ORIGINAL);
        /* ServerKeyResponse { key = 1; expiresAt = 2 (Timestamp { seconds = 1 }) } */
        ts[tn++] = 1 << 3 | 0;
        for (uint64_t v = secs;; v >>= 7) {
                ts[tn++] = (uint8_t) ((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
                if (v <= 0x7f)
                        break;
        }
        n = put_bytes(buf, 1, b64, strlen(b64));
        n += put_bytes(buf + n, 2, ts, tn);
        key_msg = grpc_slice_from_copied_buffer((const char *) buf, n);

        /* EncryptedMessage { wgPubKey = 1; body = 2 } with random bytes */
        body = malloc(body_len);
        sbuf = malloc(body_len + 80);
        if (!body || !sbuf) {
                perror("bench-bare-grpc: malloc");
                exit(1);
        }
        randombytes_buf(body, body_len);
        n = put_bytes(sbuf, 1, b64, strlen(b64));
        n += put_bytes(sbuf + n, 2, body, body_len);
        sync_msg = grpc_slice_from_copied_buffer((const char *) sbuf, n);
        free(body);
        free(sbuf);
        if (fan_bytes > 0) {
                body = malloc((size_t) fan_bytes);
                sbuf = malloc((size_t) fan_bytes + 80);
                if (!body || !sbuf) {
                        perror("bench-bare-grpc: malloc");
                        exit(1);
                }
                randombytes_buf(body, (size_t) fan_bytes);
                n = put_bytes(sbuf, 1, b64, strlen(b64));
                n += put_bytes(sbuf + n, 2, body, (size_t) fan_bytes);
                fan_msg = grpc_slice_from_copied_buffer((const char *) sbuf, n);
                free(body);
                free(sbuf);
        }
}

static void usage(void) {
        fprintf(stderr, "usage: bench-bare-grpc --port N [--ready-file PATH] [--message-bytes N]\n"
                        "                       [--fanout-file PATH --fanout-bytes N] [--arg KEY=INT]...\n");
        exit(2);
}

int main(int argc, char **argv) {
        grpc_arg args[MAX_ARGS];
        size_t n_args = 0;
        const char *ready = NULL;
        long port = -1, body_len = 64;
        char addr[64];

        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (!v)
                        usage();
                if (strcmp(a, "--port") == 0)
                        port = strtol(v, NULL, 10);
                else if (strcmp(a, "--ready-file") == 0)
                        ready = v;
                else if (strcmp(a, "--message-bytes") == 0)
                        body_len = strtol(v, NULL, 10);
                else if (strcmp(a, "--fanout-file") == 0)
                        fanout_file = v;
                else if (strcmp(a, "--fanout-bytes") == 0)
                        fan_bytes = strtol(v, NULL, 10);
                else if (strcmp(a, "--arg") == 0) {
                        const char *eq = strchr(v, '=');
                        if (!eq || n_args == MAX_ARGS)
                                usage();
                        args[n_args++] = (grpc_arg) { .type = GRPC_ARG_INTEGER, .key = strndup(v, (size_t) (eq - v)),
                                                      .value.integer = (int) strtol(eq + 1, NULL, 10) };
                } else
                        usage();
                i++;
        }
        if (port < 0 || port > 65535 || body_len < 1 || body_len > 1 << 20)
                usage();
        if (!fanout_file != (fan_bytes == 0) || fan_bytes < 0 || fan_bytes > 4 << 20)
                usage();
        if (sodium_init() < 0)
                return 1;
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
        signal(SIGUSR1, on_usr1);

        grpc_init();
        make_messages((size_t) body_len);
        grpc_channel_args chargs = { .num_args = n_args, .args = args };
        server = grpc_server_create(&chargs, NULL);
        cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(server, cq, NULL);
        for (int m = 0; m < N_METHODS; m++)
                registered[m] = grpc_server_register_method(server, method_path[m], NULL,
                                                            GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        (void) snprintf(addr, sizeof addr, "127.0.0.1:%ld", port);
        grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
        int bound = grpc_server_add_http2_port(server, addr, creds);
        grpc_server_credentials_release(creds);
        if (bound <= 0) {
                fprintf(stderr, "bench-bare-grpc: cannot listen on %s\n", addr);
                return 1;
        }
        grpc_server_start(server);
        for (int m = 0; m < N_METHODS; m++)
                for (int k = 0; k < SLOTS; k++)
                        post_slot((unsigned char) m);
        if (ready) {
                FILE *f = fopen(ready, "w");
                if (!f || fprintf(f, "listening %d\n", bound) < 0 || fclose(f) != 0) {
                        fprintf(stderr, "bench-bare-grpc: cannot write %s\n", ready);
                        return 1;
                }
        }

        bool shutting = false;
        int shutdown_tag;
        for (;;) {
                grpc_event ev = grpc_completion_queue_next(
                        cq, gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(250, GPR_TIMESPAN)),
                        NULL);
                if (ev.type == GRPC_QUEUE_SHUTDOWN)
                        break;
                if (ev.type == GRPC_OP_COMPLETE) {
                        if (ev.tag == &shutdown_tag) {
                                grpc_server_destroy(server);
                                grpc_completion_queue_shutdown(cq);
                                continue;
                        }
                        on_event(ev.tag, ev.success != 0);
                }
                if (fanout_req && fanout_file && !shutting) {
                        fanout_req = 0;
                        fan_start();
                }
                if (stop && !shutting) {
                        shutting = true;
                        grpc_server_shutdown_and_notify(server, cq, &shutdown_tag);
                        grpc_server_cancel_all_calls(server);
                }
        }
        grpc_completion_queue_destroy(cq);
        grpc_slice_unref(key_msg);
        grpc_slice_unref(sync_msg);
        if (fan_bytes > 0)
                grpc_slice_unref(fan_msg);
        grpc_shutdown();
        for (size_t i = 0; i < n_args; i++)
                free(args[i].key);
        (void) live;
        return 0;
}
