/*
 * bench-envelope: the agent envelope read by protobuf-c's general
 * unpacker into a per-call arena (how mgmt_agent_open_request read it
 * before issue 15) against mgmt_envelope_parse (in place), on a normal
 * envelope (a 2 KiB sealed body) and on 1 MiB of one-byte unknown varint
 * fields. Prints time per read and the arena bytes held. No server.
 *
 *   build/tests/bench/bench-envelope [iterations]
 */
#include "cp/base.h"
#include "management.pb-c.h"
#include "mgmt-arena.h"
#include "mgmt-envelope.h"

#include <stdio.h>
#include <time.h>

static double now_s(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static uint8_t *normal(size_t *ret_len) {
        static uint8_t body[2048];
        Management__EncryptedMessage em = MANAGEMENT__ENCRYPTED_MESSAGE__INIT;

        em.wgpubkey = (char *) "j3CchWWmF6VNlA8ZJd1+UgAPBRGMCjN3yl4YtPlODz8=";
        em.body = (ProtobufCBinaryData) { .len = sizeof body, .data = body };
        uint8_t *out = cp_xmalloc(protobuf_c_message_get_packed_size(&em.base));
        *ret_len = protobuf_c_message_pack(&em.base, out);
        return out;
}

static uint8_t *unknown(size_t *ret_len) {
        size_t n = 1024 * 1024;
        uint8_t *m = cp_xmalloc(n);

        for (size_t i = 0; i < n; i += 2) {
                m[i] = 9 << 3;
                m[i + 1] = 0;
        }
        *ret_len = n;
        return m;
}

static void run(const char *name, const uint8_t *m, size_t n, int iters) {
        mgmt_arena a;
        size_t held = 0;
        double t0 = now_s();

        for (int i = 0; i < iters; i++) {
                mgmt_arena_init(&a);
                Management__EncryptedMessage *em = management__encrypted_message__unpack(mgmt_arena_pb(&a), n, m);
                if (!em)
                        abort();
                held = mgmt_arena_held(&a);
                mgmt_arena_release(&a);
        }
        double t1 = now_s();
        for (int i = 0; i < iters; i++) {
                mgmt_envelope env;
                const char *why;
                if (mgmt_envelope_parse(m, n, &env, &why) < 0)
                        abort();
        }
        double t2 = now_s();
        printf("%-22s %8zu B  protobuf-c: %10.1f us/read, %9zu B of arena   in place: %8.1f us/read, 0 B\n",
               name, n, (t1 - t0) / iters * 1e6, held, (t2 - t1) / iters * 1e6);
}

int main(int argc, char **argv) {
        int iters = argc > 1 ? atoi(argv[1]) : 20;
        size_t n1, n2;
        _cleanup_free_ uint8_t *m1 = normal(&n1);
        _cleanup_free_ uint8_t *m2 = unknown(&n2);

        if (iters < 1)
                iters = 1;
        run("normal envelope", m1, n1, iters * 1000);
        run("1 MiB unknown varints", m2, n2, iters);
        return 0;
}
