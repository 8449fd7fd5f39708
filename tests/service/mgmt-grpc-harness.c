/*
 * A test harness around mgmt-core's gRPC server (mgmt-grpc.c) with two
 * registered methods, so the service tests can drive what the management
 * binary cannot show yet (it has no methods of its own):
 *
 *   /cptest.Harness/Empty  server-streaming, finishes OK with no messages
 *   /cptest.Harness/Hold   server-streaming, never finishes by itself
 *
 * Usage: mgmt-grpc-harness GRACE_MS. Logs JSON lines on stdout ("listening"
 * with the port first); on SIGTERM it calls mgmt_grpc_shutdown(GRACE_MS),
 * waits for on_stopped, frees everything and exits 0.
 */
#include "cp/base.h"
#include "cp/log.h"
#include "cp/util.h"
#include "mgmt-grpc.h"

#include <pthread.h>
#include <signal.h>

typedef struct harness {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool stopped;
} harness;

static void empty_call(mgmt_call *c, void *userdata) {
        cp_log(mgmt_call_log(c), CP_LOG_INFO, "empty call");
        mgmt_call_finish(c, GRPC_STATUS_OK, NULL);
}

static void hold_call(mgmt_call *c, void *userdata) {
        cp_log(mgmt_call_log(c), CP_LOG_INFO, "holding call");
}

static void log_close(mgmt_call *c, bool cancelled, void *userdata) {
        cp_log_kv(mgmt_call_log(c), CP_LOG_INFO, "call closed", "cancelled", cancelled ? "true" : "false", NULL);
}

static const mgmt_rpc_method methods[] = {
        { "/cptest.Harness/Empty", MGMT_RPC_SERVER_STREAM, empty_call, log_close },
        { "/cptest.Harness/Hold", MGMT_RPC_SERVER_STREAM, hold_call, log_close },
};

static void on_stopped(mgmt_grpc *g, void *userdata) {
        harness *h = userdata;

        pthread_mutex_lock(&h->lock);
        h->stopped = true;
        pthread_cond_signal(&h->cond);
        pthread_mutex_unlock(&h->lock);
}

int main(int argc, char **argv) {
        static const cp_log_ctx ctx = { .component = "harness" };
        harness h = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
        int64_t grace = 1000;
        mgmt_grpc *g = NULL;
        cp_error err = { 0 };
        sigset_t set;
        char port[16];
        int sig;

        if (argc > 1 && cp_parse_int64(argv[1], 0, 600000, &grace) < 0) {
                fprintf(stderr, "usage: %s [GRACE_MS]\n", argv[0]);
                return 2;
        }
        /* Block the signals before gRPC starts threads, then sigwait. */
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        (void) cp_log_open("console", CP_LOG_DEBUG, NULL);

        mgmt_grpc_options o = {
                .address = "127.0.0.1",
                .port = 0,
                .methods = methods,
                .n_methods = ELEMENTSOF(methods),
                .on_stopped = on_stopped,
                .stopped_userdata = &h,
        };
        if (mgmt_grpc_new(&o, &g, &err) < 0) {
                (void) cp_log_error(&ctx, err.code, &err, "cannot start");
                return 1;
        }
        (void) snprintf(port, sizeof port, "%d", mgmt_grpc_port(g));
        cp_log_kv(&ctx, CP_LOG_INFO, "listening", "protocol", "grpc", "port", port, NULL);

        (void) sigwait(&set, &sig);
        cp_log(&ctx, CP_LOG_INFO, "shutting down");
        mgmt_grpc_shutdown(g, grace);
        pthread_mutex_lock(&h.lock);
        while (!h.stopped)
                pthread_cond_wait(&h.cond, &h.lock);
        pthread_mutex_unlock(&h.lock);
        mgmt_grpc_free(g);
        cp_log(&ctx, CP_LOG_INFO, "stopped");
        cp_log_close();
        return 0;
}
