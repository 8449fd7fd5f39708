/*
 * The engine of netbird-load (load.h): one thread drives one completion
 * queue; every simulated peer is a small state machine whose calls carry
 * tags pointing back at it.
 *
 *   NEW -> KEY (GetServerKey) -> LOGIN -> SYNC (until the first map) -> HOLD
 *                                   \-> OK (--no-sync)
 *   any call failing with RESOURCE_EXHAUSTED / UNAVAILABLE and --retry:
 *       -> RETRY (backoff timer) -> the same phase again
 *   otherwise -> FAIL (counted by status)
 *
 * --sync-only starts at SYNC. A peer holds one of --concurrency slots from
 * NEW until it reaches HOLD, OK or FAIL. Phases of the run: opening (until
 * every peer is held or failed, bounded by --timeout), changes (optional),
 * hold (--hold seconds), closing (every stream cancelled, all calls over).
 *
 * A Sync call has two batches out: the message batch (first the request
 * and the first message, then one RECV_MESSAGE after another) and the
 * status batch; the call is released once both came back (`pending`).
 */
#include "cp-methods.h"
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/util.h"
#include "load.h"

#include <signal.h>
#include <grpc/support/log.h>

#define UNARY_TIMEOUT_MS        30000
#define PROGRESS_MS             5000
#define BACKOFF_BASE_MS         100.0
#define BACKOFF_MAX_MS          3000.0
/* --reconnect: NetBird's agent reopens Sync with an exponential backoff
 * of 800 ms, x1.7, at most 10 s, randomization factor 1 (0x .. 2x). */
#define RECONNECT_BASE_MS       800.0
#define RECONNECT_FACTOR        1.7
#define RECONNECT_MAX_MS        10000.0
#define ERROR_DETAILS_SHOWN     5
#define UPDATE_TIMES            4       /* receive times kept per peer for --report-file */

typedef enum pstate {
        P_NEW, P_KEY, P_LOGIN, P_SYNC, P_HOLD, P_RETRY, P_OK, P_FAIL,
} pstate;

typedef enum tkind { T_MAIN, T_STATUS } tkind;

typedef struct lpeer lpeer;

typedef struct ltag {
        lpeer *p;
        tkind kind;
} ltag;

struct lpeer {
        cp_nbc_peer key;
        cp_nbc_call call;
        ltag tmain, tstatus;
        uint32_t idx;                   /* index in keys[]; UINT32_MAX for the change peer */
        uint16_t chan;
        uint8_t state;
        uint8_t retry_state;            /* phase to run again after the backoff */
        uint8_t pending;                /* batches outstanding */
        bool status_done;
        bool ended_early;               /* the server ended a held stream */
        bool reconnecting;              /* --reconnect: reopening Sync after the server ended it */
        uint16_t retries;
        uint16_t reconnect_tries;       /* attempts since the stream was last held */
        uint32_t generation;            /* streams held so far (the first, then each reopened one) */
        double t_phase;                 /* start of the current call, ms */
        double retry_due;
        double t_ended;                 /* when the server ended its held stream (--reconnect) */
        uint32_t updates;               /* SyncResponses after the first */
        int64_t serial;                 /* of the last map */
        int64_t change_base;            /* serial when the current change began; -1 none */
        double t_updates[UPDATE_TIMES]; /* CLOCK_MONOTONIC ms of the last updates, a ring */
};

typedef enum run_phase { R_OPENING, R_CHANGES, R_HOLD, R_CLOSING } run_phase;

typedef struct load_ctx {
        const load_opts *o;
        grpc_completion_queue *cq;
        grpc_channel **chans;
        size_t n_chans;
        uint8_t server_key[LOAD_MAX_TARGETS][CP_WG_KEY_LEN];

        load_key *keys;
        size_t n_keys;                  /* >= peers */
        const char **skeys;             /* --setup-key ones, then the file's */
        size_t n_skeys;
        char **file_keys;               /* owned: --setup-keys-file */
        size_t n_file_keys;
        lpeer *peers;
        size_t n, next_new, inflight, held, live_calls;

        lpeer **heap;                   /* retries, by retry_due */
        size_t n_heap;

        run_phase phase;
        bool stop_opening;
        double t_start, t_open_done, t_hold_end, t_next_progress;

        /* changes */
        lpeer changer;
        int64_t changes_done;
        int ch_state;                   /* 0 waiting, 1 Login out, 2 waiting for streams */
        bool ch_login_done;
        double ch_t0, ch_t_commit, ch_next_at;
        size_t ch_left;
        uint64_t ch_missed, ch_errors;
        load_series ch_last, ch_last_commit, ch_stream, ch_login;

        /* results */
        uint64_t registered, logged_in, streams_open, sync_responses, updates, ended_early;
        uint64_t reconnects, reconnect_attempts;        /* --reconnect: reopened streams, tries */
        load_series reconnect_ms;       /* server's end -> first map of the reopened stream */
        load_counts errors, retries, ended;
        load_series login_ms, sync_ms;
        unsigned details_shown;
} load_ctx;

static volatile sig_atomic_t stop_requested, report_requested;

static void on_signal(int sig) {
        if (sig == SIGUSR1)
                report_requested = 1;
        else
                stop_requested = 1;
}

static double now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec / 1e6;
}

/* ---- the retry heap ---------------------------------------------------------- */

static void heap_push(load_ctx *x, lpeer *p) {
        size_t i = x->n_heap++;
        while (i > 0) {
                size_t up = (i - 1) / 2;
                if (x->heap[up]->retry_due <= p->retry_due)
                        break;
                x->heap[i] = x->heap[up];
                i = up;
        }
        x->heap[i] = p;
}

static lpeer *heap_pop(load_ctx *x) {
        lpeer *top = x->heap[0], *last = x->heap[--x->n_heap];
        size_t i = 0;

        for (;;) {
                size_t c = 2 * i + 1;
                if (c >= x->n_heap)
                        break;
                if (c + 1 < x->n_heap && x->heap[c + 1]->retry_due < x->heap[c]->retry_due)
                        c++;
                if (last->retry_due <= x->heap[c]->retry_due)
                        break;
                x->heap[i] = x->heap[c];
                i = c;
        }
        if (x->n_heap)
                x->heap[i] = last;
        return top;
}

/* ---- starting calls ------------------------------------------------------------ */

static void peer_failed(load_ctx *x, lpeer *p, grpc_status_code st, const char *why);

static grpc_channel *peer_chan(load_ctx *x, lpeer *p) {
        return x->chans[p->chan];
}

static const char *peer_hostname(load_ctx *x, lpeer *p) {
        return p->idx == UINT32_MAX ? "load-change" : x->keys[p->idx].hostname;
}

static void start_phase(load_ctx *x, lpeer *p, pstate st) {
        if (p->reconnecting)
                x->reconnect_attempts++;
        grpc_byte_buffer *req = NULL;
        const char *method = CP_NBC_GET_SERVER_KEY;
        cp_nbc_meta meta;
        int r;

        p->state = (uint8_t) st;
        p->t_phase = now_ms();
        p->status_done = false;
        if (st == P_LOGIN || st == P_SYNC) {
                const char *sk = NULL;
                if (p->idx == UINT32_MAX)
                        sk = x->skeys[0];
                else if (!x->keys[p->idx].registered) {
                        size_t rank;
                        sk = x->skeys[load_peer_key(x->o, p->idx, x->n_skeys, &rank)];
                }
                cp_nbc_meta_init(&meta, peer_hostname(x, p));
                req = st == P_LOGIN ? cp_nbc_login_request(&p->key, &meta, sk) : cp_nbc_sync_request(&p->key, &meta);
                method = st == P_LOGIN ? CP_NBC_LOGIN : CP_NBC_SYNC;
                if (!req) {
                        peer_failed(x, p, GRPC_STATUS_INTERNAL, "cannot seal the request (no server key)");
                        return;
                }
        }
        r = cp_nbc_call_start(&p->call, peer_chan(x, p), x->cq, method, req, st == P_SYNC ? 0 : UNARY_TIMEOUT_MS,
                              st == P_SYNC, &p->tmain, &p->tstatus);
        if (r < 0 && !p->call.call) {
                peer_failed(x, p, GRPC_STATUS_INTERNAL, "grpc refused the batch");
                return;
        }
        x->live_calls++;
        /* A refused stream status batch leaves only the message batch out. */
        p->pending = st == P_SYNC && r == 0 ? 2 : 1;
        p->status_done = st == P_SYNC && r < 0;
}

static void peer_begin(load_ctx *x, lpeer *p) {
        x->inflight++;
        start_phase(x, p, x->o->sync_only ? P_SYNC : P_KEY);
}

/* A peer leaves the opening set (held, done or failed). */
static void slot_free(load_ctx *x) {
        x->inflight--;
}

static void show_details(load_ctx *x, lpeer *p, grpc_status_code st, const char *why) {
        if (x->o->quiet || x->details_shown >= ERROR_DETAILS_SHOWN)
                return;
        x->details_shown++;
        fprintf(stderr, "netbird-load: %s: %s: %s%s\n",
                p->state == P_KEY ? "GetServerKey" : p->state == P_LOGIN ? "Login" : "Sync", cp_proto_status_name((int) st),
                why, x->details_shown == ERROR_DETAILS_SHOWN ? " (further errors only counted)" : "");
}

static bool retryable(grpc_status_code st) {
        return st == GRPC_STATUS_RESOURCE_EXHAUSTED || st == GRPC_STATUS_UNAVAILABLE;
}

/* The call of p is over (released) and failed with st. */
static void reconnect_later(load_ctx *x, lpeer *p) {
        double backoff = RECONNECT_BASE_MS;

        for (unsigned i = 0; i < p->reconnect_tries && backoff < RECONNECT_MAX_MS; i++)
                backoff *= RECONNECT_FACTOR;
        if (backoff > RECONNECT_MAX_MS)
                backoff = RECONNECT_MAX_MS;
        backoff *= (double) cp_random_uniform(2001) / 1000.0;   /* jitter: 0x .. 2x */
        p->reconnect_tries++;
        p->reconnecting = true;
        p->retry_state = P_SYNC;
        p->state = P_RETRY;
        p->retry_due = now_ms() + backoff;
        heap_push(x, p);
}

static void peer_failed(load_ctx *x, lpeer *p, grpc_status_code st, const char *why) {
        bool changer = p->idx == UINT32_MAX;

        if (p->reconnecting) {
                /* Reopening after the server ended the stream: an agent
                 * keeps trying whatever the status, until the run ends. */
                if (x->phase == R_CLOSING) {
                        p->state = P_OK;
                        return;
                }
                load_counts_add(&x->retries, st);
                reconnect_later(x, p);
                return;
        }

        if (!changer && x->o->retry && retryable(st) && p->retries < x->o->max_retries && !x->stop_opening) {
                double backoff = BACKOFF_BASE_MS * (double) (1u << (p->retries < 5 ? p->retries : 5));
                if (backoff > BACKOFF_MAX_MS)
                        backoff = BACKOFF_MAX_MS;
                backoff *= 0.5 + (double) cp_random_uniform(1000) / 1000.0;     /* jitter: 0.5x .. 1.5x */
                load_counts_add(&x->retries, st);
                p->retries++;
                p->retry_state = p->state;
                p->state = P_RETRY;
                p->retry_due = now_ms() + backoff;
                heap_push(x, p);
                return;
        }
        show_details(x, p, st, why);
        if (changer) {
                x->ch_errors++;
                p->state = P_FAIL;
                return;
        }
        load_counts_add(&x->errors, st);
        p->state = P_FAIL;
        slot_free(x);
}

/* ---- completions --------------------------------------------------------------- */

static void call_done(load_ctx *x, lpeer *p) {
        cp_nbc_call_release(&p->call);
        x->live_calls--;
}

static void change_finish(load_ctx *x, double t);

static void on_unary(load_ctx *x, lpeer *p) {
        grpc_status_code st = p->call.status;
        double took = now_ms() - p->t_phase;
        uint8_t key[CP_WG_KEY_LEN];
        uint8_t *plain = NULL;
        size_t len;

        if (st != GRPC_STATUS_OK) {
                char *d = cp_nbc_call_details(&p->call);
                call_done(x, p);
                peer_failed(x, p, st, d);
                free(d);
                return;
        }
        if (p->state == P_KEY) {
                int r = cp_nbc_server_key_parse(p->call.recv, key);
                call_done(x, p);
                if (r < 0 || cp_nbc_peer_set_server_key(&p->key, key) < 0) {
                        peer_failed(x, p, GRPC_STATUS_INTERNAL, "bad ServerKeyResponse");
                        return;
                }
                start_phase(x, p, P_LOGIN);
                return;
        }
        /* Login */
        int r = cp_nbc_open(&p->key, p->call.recv, &plain, &len);
        call_done(x, p);
        free(plain);
        if (r < 0) {
                peer_failed(x, p, GRPC_STATUS_INTERNAL, "LoginResponse does not open");
                return;
        }
        if (p->idx == UINT32_MAX) {
                x->ch_t_commit = now_ms();
                x->ch_login_done = true;
                load_series_add(&x->ch_login, took);
                p->state = P_OK;
                if (x->ch_state == 2 && x->ch_left == 0)
                        change_finish(x, x->ch_t_commit);
                return;
        }
        x->logged_in++;
        load_series_add(&x->login_ms, took);
        if (!x->keys[p->idx].registered) {
                x->keys[p->idx].registered = true;
                x->registered++;
        }
        if (x->o->no_sync) {
                p->state = P_OK;
                slot_free(x);
                return;
        }
        start_phase(x, p, P_SYNC);
}

static void on_stream_message(load_ctx *x, lpeer *p) {
        grpc_byte_buffer *bb = cp_nbc_call_take(&p->call);
        double t = now_ms();
        uint8_t *plain = NULL;
        size_t len;
        int64_t serial = -1;

        if (cp_nbc_open(&p->key, bb, &plain, &len) == 0)
                serial = cp_nbc_sync_serial(plain, len, NULL);
        free(plain);
        grpc_byte_buffer_destroy(bb);
        x->sync_responses++;
        if (p->state == P_SYNC && p->reconnecting) {
                load_series_add(&x->reconnect_ms, t - p->t_ended);
                x->reconnects++;
                x->held++;
                p->generation++;
                p->reconnecting = false;
                p->reconnect_tries = 0;
                p->state = P_HOLD;
                /* The first map of the new stream is an update for the
                 * report: it shows when this agent was synced again. */
                p->t_updates[p->updates % UPDATE_TIMES] = t;
                p->updates++;
        } else if (p->state == P_SYNC) {
                load_series_add(&x->sync_ms, t - p->t_phase);
                x->streams_open++;
                x->held++;
                p->generation = 1;
                p->state = P_HOLD;
                slot_free(x);
        } else {
                p->t_updates[p->updates % UPDATE_TIMES] = t;
                p->updates++;
                x->updates++;
        }
        if (serial > p->serial)
                p->serial = serial;
        if (x->ch_state == 2 && p->change_base >= 0 && p->serial > p->change_base) {
                p->change_base = -1;
                load_series_add(&x->ch_stream, t - x->ch_t0);
                if (--x->ch_left == 0 && x->ch_login_done)
                        change_finish(x, t);
        }
}

static void on_stream_over(load_ctx *x, lpeer *p) {
        grpc_status_code st = p->call.status;

        if (p->state == P_SYNC) {
                /* Ended before the first map: an error (or a retry, or a
                 * reconnect's next try). */
                char *d = cp_nbc_call_details(&p->call);
                if (st == GRPC_STATUS_OK)
                        st = GRPC_STATUS_UNKNOWN;
                call_done(x, p);
                peer_failed(x, p, st, d);
                free(d);
                return;
        }
        call_done(x, p);
        x->held--;
        p->state = P_OK;
        if (x->phase == R_CLOSING)
                return;
        /* The server ended a held stream (replaced, shutdown). */
        p->ended_early = true;
        x->ended_early++;
        load_counts_add(&x->ended, st);
        if (x->ch_state == 2 && p->change_base >= 0) {
                p->change_base = -1;
                x->ch_missed++;
                if (--x->ch_left == 0 && x->ch_login_done)
                        change_finish(x, now_ms());
        }
        if (x->o->reconnect) {
                p->t_ended = now_ms();
                p->reconnect_tries = 0;
                reconnect_later(x, p);
        }
}

static void on_event(load_ctx *x, ltag *tag) {
        lpeer *p = tag->p;

        p->pending--;
        if (p->state == P_KEY || p->state == P_LOGIN) {
                on_unary(x, p);
                return;
        }
        if (tag->kind == T_STATUS) {
                p->status_done = true;
        } else if (p->call.recv) {
                on_stream_message(x, p);
                if (!p->status_done && cp_nbc_call_recv(&p->call, &p->tmain) == 0)
                        p->pending++;
        }
        if (p->pending == 0 && p->status_done)
                on_stream_over(x, p);
}

/* ---- changes ----------------------------------------------------------------------- */

static void change_begin(load_ctx *x) {
        lpeer *c = &x->changer;

        x->ch_left = 0;
        for (size_t i = 0; i < x->n; i++) {
                lpeer *p = &x->peers[i];
                p->change_base = p->state == P_HOLD ? p->serial : -1;
                if (p->state == P_HOLD)
                        x->ch_left++;
        }
        cp_nbc_peer_release(&c->key);
        memset(c, 0, sizeof *c);
        cp_nbc_peer_generate(&c->key);
        (void) cp_nbc_peer_set_server_key(&c->key, x->server_key[0]);
        c->idx = UINT32_MAX;
        c->chan = 0;
        c->tmain = (ltag) { c, T_MAIN };
        c->tstatus = (ltag) { c, T_STATUS };
        x->ch_state = 2;
        x->ch_login_done = false;
        x->ch_t0 = now_ms();
        start_phase(x, c, P_LOGIN);
        if (c->state == P_FAIL)
                x->ch_login_done = true;
}

static void change_finish(load_ctx *x, double t) {
        if (x->changer.state == P_OK) {
                load_series_add(&x->ch_last, t - x->ch_t0);
                load_series_add(&x->ch_last_commit, t > x->ch_t_commit ? t - x->ch_t_commit : 0);
        }
        x->changes_done++;
        x->ch_state = 0;
        x->ch_next_at = now_ms() + (double) x->o->change_interval_ms;
}

static void change_tick(load_ctx *x, double t) {
        if (x->ch_state == 0 && t >= x->ch_next_at) {
                change_begin(x);
        } else if (x->ch_state == 2 && x->ch_login_done && x->changer.state == P_FAIL) {
                /* The change itself failed: nothing to wait for. */
                for (size_t i = 0; i < x->n; i++)
                        x->peers[i].change_base = -1;
                x->changes_done++;
                x->ch_state = 0;
                x->ch_next_at = t + (double) x->o->change_interval_ms;
        } else if (x->ch_state == 2 && t - x->ch_t0 > x->o->change_timeout_s * 1e3) {
                x->ch_missed += x->ch_left;
                for (size_t i = 0; i < x->n; i++)
                        x->peers[i].change_base = -1;
                x->ch_left = 0;
                if (x->ch_login_done)
                        change_finish(x, t);
        }
}

/* ---- phases -------------------------------------------------------------------------- */

static void write_ready(load_ctx *x) {
        _cleanup_free_ char *tmp = NULL;
        FILE *f;

        if (!x->o->ready_file)
                return;
        tmp = cp_xasprintf("%s.tmp", x->o->ready_file);
        f = fopen(tmp, "w");
        if (!f || fprintf(f, "open %" PRIu64 "\n", x->streams_open) < 0 || fclose(f) != 0 ||
            rename(tmp, x->o->ready_file) != 0)
                fprintf(stderr, "netbird-load: cannot write %s: %s\n", x->o->ready_file, strerror(errno));
}

/* --report-file: one line per peer, "INDEX UPDATES SERIAL STATE T1 T2 T3 T4"
 * with the CLOCK_MONOTONIC milliseconds of its last updates, newest first
 * ('-' for none), so a script can time a change it made itself (the same
 * clock as Python's time.monotonic()). Written atomically. */
static void write_report(load_ctx *x) {
        static const char states[] = "NKLSHROF";
        _cleanup_free_ char *tmp = NULL;
        FILE *f;
        bool bad;

        if (!x->o->report_file)
                return;
        tmp = cp_xasprintf("%s.tmp", x->o->report_file);
        f = fopen(tmp, "w");
        if (!f) {
                fprintf(stderr, "netbird-load: cannot write %s: %s\n", tmp, strerror(errno));
                return;
        }
        fprintf(f, "# netbird-load report v1: index updates serial state(N K L S H R O F) "
                   "last update times (CLOCK_MONOTONIC ms, newest first)%s\n# now %.3f\n",
                x->o->reconnect ? " generation" : "", now_ms());
        for (size_t i = 0; i < x->n; i++) {
                const lpeer *p = &x->peers[i];
                fprintf(f, "%zu %u %" PRId64 " %c", i, p->updates, p->serial, states[p->state]);
                for (uint32_t k = 0; k < UPDATE_TIMES; k++) {
                        if (k < p->updates)
                                fprintf(f, " %.3f", p->t_updates[(p->updates - 1 - k) % UPDATE_TIMES]);
                        else
                                fputs(" -", f);
                }
                /* --reconnect: the stream generation, 1 + reopened streams
                 * (0 until the first map). */
                if (x->o->reconnect)
                        fprintf(f, " %u", p->generation);
                fputc('\n', f);
        }
        bad = ferror(f) != 0;
        if (fclose(f) != 0)
                bad = true;
        if (bad || rename(tmp, x->o->report_file) != 0) {
                fprintf(stderr, "netbird-load: cannot write %s: %s\n", x->o->report_file, strerror(errno));
                (void) unlink(tmp);
        }
}

static void cancel_opening(load_ctx *x) {
        x->stop_opening = true;
        lpeer **keep = cp_xcalloc(x->n_heap ? x->n_heap : 1, sizeof *keep);
        size_t n_keep = 0;

        while (x->n_heap) {
                lpeer *p = heap_pop(x);
                if (p->reconnecting) {
                        keep[n_keep++] = p;     /* a held peer's reconnect: not part of the opening */
                        continue;
                }
                load_counts_add(&x->errors, GRPC_STATUS_DEADLINE_EXCEEDED);
                p->state = P_FAIL;
                slot_free(x);
        }
        for (size_t i = 0; i < n_keep; i++)
                heap_push(x, keep[i]);
        free(keep);
        for (size_t i = 0; i < x->n; i++) {
                lpeer *p = &x->peers[i];
                if ((p->state == P_KEY || p->state == P_LOGIN || p->state == P_SYNC) && !p->reconnecting)
                        cp_nbc_call_cancel(&p->call);
        }
}

static void begin_closing(load_ctx *x) {
        x->phase = R_CLOSING;
        for (size_t i = 0; i < x->n; i++) {
                lpeer *p = &x->peers[i];
                if (p->state == P_HOLD || (p->state == P_SYNC && p->reconnecting))
                        cp_nbc_call_cancel(&p->call);
        }
        /* Reconnects still waiting for their backoff are dropped. */
        while (x->n_heap) {
                lpeer *p = heap_pop(x);
                p->state = P_OK;
        }
        if (x->changer.pending)
                cp_nbc_call_cancel(&x->changer.call);
}

static void progress(load_ctx *x, double t) {
        if (x->o->quiet || t < x->t_next_progress)
                return;
        x->t_next_progress = t + PROGRESS_MS;
        fprintf(stderr,
                "netbird-load: %6.1fs started %zu/%zu opening %zu held %zu logins %" PRIu64 " errors %" PRIu64
                " retries %" PRIu64 " updates %" PRIu64 "\n",
                (t - x->t_start) / 1e3, x->next_new, x->n, x->inflight, x->held, x->logged_in,
                load_counts_total(&x->errors), load_counts_total(&x->retries), x->updates);
}

/* After the opening phase only reconnects wait in the heap. */
static void reconnect_due(load_ctx *x, double t) {
        while (x->n_heap && x->heap[0]->retry_due <= t) {
                lpeer *p = heap_pop(x);
                start_phase(x, p, (pstate) p->retry_state);
        }
}

/* One step of the run's phase machine; returns false when the run is over. */
static bool advance(load_ctx *x, double t) {
        if (stop_requested && x->phase != R_CLOSING) {
                if (x->phase == R_OPENING && !x->stop_opening)
                        cancel_opening(x);
                if (x->phase != R_OPENING || x->inflight == 0)
                        begin_closing(x);
        }
        switch (x->phase) {
        case R_OPENING:
                if (!x->stop_opening && t - x->t_start > x->o->timeout_s * 1e3) {
                        fprintf(stderr, "netbird-load: opening phase timed out after %.0f s\n", x->o->timeout_s);
                        cancel_opening(x);
                }
                while (!x->stop_opening && x->inflight < (size_t) x->o->concurrency && x->next_new < x->n)
                        peer_begin(x, &x->peers[x->next_new++]);
                while (x->n_heap && x->heap[0]->retry_due <= t) {
                        lpeer *p = heap_pop(x);
                        start_phase(x, p, (pstate) p->retry_state);
                }
                if (x->inflight == 0 && (x->next_new == x->n || x->stop_opening)) {
                        x->t_open_done = t;
                        write_ready(x);
                        x->phase = x->o->changes > 0 && !stop_requested ? R_CHANGES : R_HOLD;
                        x->ch_next_at = t + (double) x->o->change_interval_ms;
                        x->t_hold_end = t + x->o->hold_s * 1e3;
                        if (stop_requested)
                                begin_closing(x);
                }
                break;
        case R_CHANGES:
                change_tick(x, t);
                reconnect_due(x, t);
                if (x->changes_done >= x->o->changes) {
                        x->phase = R_HOLD;
                        x->t_hold_end = t + x->o->hold_s * 1e3;
                }
                break;
        case R_HOLD:
                reconnect_due(x, t);
                if (t >= x->t_hold_end)
                        begin_closing(x);
                break;
        case R_CLOSING:
                return x->live_calls > 0;
        }
        return true;
}

static double next_wake(load_ctx *x, double t) {
        double w = t + 100;
        if (x->n_heap && x->heap[0]->retry_due < w)
                w = x->heap[0]->retry_due;
        if (x->phase == R_HOLD && x->t_hold_end < w)
                w = x->t_hold_end;
        return w > t ? w : t;
}

/* ---- set-up and summary ------------------------------------------------------------------- */

static int prepare_keys(load_ctx *x) {
        const load_opts *o = x->o;
        size_t n_file = 0, need = (size_t) o->peers, unregistered = 0;
        load_key *keys = NULL;

        if (o->setup_keys_file && load_setup_keys_read(o->setup_keys_file, &x->file_keys, &x->n_file_keys) < 0)
                return -EINVAL;
        if (o->keys_file && load_keys_read(o->keys_file, &keys, &n_file) < 0)
                return -EINVAL;
        if (o->sync_only && n_file < need) {
                fprintf(stderr, "netbird-load: error: --sync-only with --peers %zu, but %s holds %zu peers\n", need,
                        o->keys_file, n_file);
                free(keys);
                return -EINVAL;
        }
        x->n_keys = n_file > need ? n_file : need;
        x->keys = cp_xrealloc(keys, x->n_keys * sizeof *x->keys);
        if (n_file < need) {
                /* Hostnames unique across runs: a random tag per batch of new peers. */
                uint32_t tag = (uint32_t) cp_random_uniform(1u << 24);
                for (size_t i = n_file; i < need; i++) {
                        uint8_t pub[CP_WG_KEY_LEN];
                        cp_crypto_wg_keypair_new(x->keys[i].priv, pub);
                        (void) snprintf(x->keys[i].hostname, sizeof x->keys[i].hostname, "%s-%06x-%zu",
                                        o->hostname_prefix, tag, i);
                        x->keys[i].registered = false;
                }
        }
        for (size_t i = 0; i < need; i++)
                unregistered += !x->keys[i].registered;
        x->n_skeys = o->n_setup_keys + x->n_file_keys;
        x->skeys = cp_xcalloc(x->n_skeys ? x->n_skeys : 1, sizeof *x->skeys);
        for (size_t i = 0; i < o->n_setup_keys; i++)
                x->skeys[i] = o->setup_keys[i];
        for (size_t i = 0; i < x->n_file_keys; i++)
                x->skeys[o->n_setup_keys + i] = x->file_keys[i];
        if (unregistered && !o->sync_only && x->n_skeys == 0) {
                fprintf(stderr, "netbird-load: error: %zu of the peers are new and need --setup-key\n"
                                "hint: give --setup-key, or a --keys-file of registered peers\n", unregistered);
                return -EINVAL;
        }
        return 0;
}

static int connect_all(load_ctx *x) {
        const load_opts *o = x->o;
        grpc_completion_queue *pq = grpc_completion_queue_create_for_pluck(NULL);
        int r = 0;

        x->n_chans = o->connections ? (size_t) o->connections : o->n_targets;
        x->chans = cp_xcalloc(x->n_chans, sizeof *x->chans);
        for (size_t j = 0; j < x->n_chans; j++) {
                size_t t = j % o->n_targets;
                uint8_t key[CP_WG_KEY_LEN];
                x->chans[j] = cp_nbc_channel_new(o->targets[t], true);
                /* One GetServerKey per channel: connects it and checks that
                 * every target serves (the same) key. */
                r = cp_nbc_get_server_key(x->chans[j], pq, 10000, key);
                if (r < 0) {
                        fprintf(stderr, "netbird-load: error: GetServerKey on %s failed (%s)\n", o->targets[t],
                                r == -EPROTO ? "error status" : r == -EBADMSG ? "bad response" : "no answer");
                        break;
                }
                if (j < o->n_targets)
                        memcpy(x->server_key[t], key, CP_WG_KEY_LEN);
                else if (memcmp(x->server_key[t], key, CP_WG_KEY_LEN) != 0)
                        fprintf(stderr, "netbird-load: warning: %s changed its server key\n", o->targets[t]);
        }
        grpc_completion_queue_shutdown(pq);
        while (grpc_completion_queue_pluck(pq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
               GRPC_QUEUE_SHUTDOWN)
                ;
        grpc_completion_queue_destroy(pq);
        return r < 0 ? -EIO : 0;
}

static int prepare_peers(load_ctx *x) {
        const load_opts *o = x->o;
        size_t T = o->n_targets;

        x->n = (size_t) o->peers;
        x->peers = cp_xcalloc(x->n, sizeof *x->peers);
        x->heap = cp_xcalloc(x->n, sizeof *x->heap);
        for (size_t i = 0; i < x->n; i++) {
                lpeer *p = &x->peers[i];
                size_t t = load_peer_target(o, i, x->n_skeys);
                size_t per_target = (x->n_chans - t + T - 1) / T;
                p->idx = (uint32_t) i;
                p->chan = (uint16_t) (t + T * ((i / T) % per_target));
                p->tmain = (ltag) { p, T_MAIN };
                p->tstatus = (ltag) { p, T_STATUS };
                p->change_base = -1;
                p->serial = -1;
                /* Both X25519s up front, so the client's own crypto stays out
                 * of the timed phases. */
                if (cp_nbc_peer_from_private(&p->key, x->keys[i].priv) < 0 ||
                    cp_nbc_peer_set_server_key(&p->key, x->server_key[t]) < 0) {
                        fprintf(stderr, "netbird-load: error: peer %zu has an unusable key\n", i);
                        return -EINVAL;
                }
        }
        return 0;
}

static void summary(load_ctx *x, double t_end) {
        const load_opts *o = x->o;
        double open_s = (x->t_open_done > 0 ? x->t_open_done : t_end) - x->t_start;
        uint32_t umin = UINT32_MAX, umax = 0;
        cp_strbuf sb;

        for (size_t i = 0; i < x->n; i++) {
                lpeer *p = &x->peers[i];
                if (p->state != P_OK || p->serial < 0)
                        continue;
                umin = p->updates < umin ? p->updates : umin;
                umax = p->updates > umax ? p->updates : umax;
        }
        if (umin == UINT32_MAX)
                umin = 0;
        cp_strbuf_init(&sb);
        cp_strbuf_addf(&sb,
                       "{\"peers\":%zu,\"targets\":%zu,\"connections\":%zu,\"concurrency\":%" PRId64
                       ",\"mode\":\"%s\",\"registered\":%" PRIu64 ",\"logged_in\":%" PRIu64
                       ",\"streams_open\":%" PRIu64 ",\"streams_ended_by_server\":%" PRIu64
                       ",\"sync_responses\":%" PRIu64 ",\"updates_received\":%" PRIu64
                       ",\"updates_per_peer_min\":%u,\"updates_per_peer_max\":%u,",
                       x->n, o->n_targets, x->n_chans, o->concurrency,
                       o->sync_only ? "sync-only" : o->no_sync ? "login-only" : "login+sync", x->registered,
                       x->logged_in, x->streams_open, x->ended_early, x->sync_responses, x->updates, umin, umax);
        load_counts_json(&sb, "errors", &x->errors);
        cp_strbuf_addf(&sb, ",\"errors_total\":%" PRIu64 ",", load_counts_total(&x->errors));
        load_counts_json(&sb, "retries", &x->retries);
        cp_strbuf_addf(&sb, ",\"retries_total\":%" PRIu64 ",", load_counts_total(&x->retries));
        load_counts_json(&sb, "ended_by_server", &x->ended);
        if (o->reconnect) {
                cp_strbuf_addf(&sb, ",\"reconnects\":%" PRIu64 ",\"reconnect_attempts\":%" PRIu64 ",",
                               x->reconnects, x->reconnect_attempts);
                load_series_json(&sb, "reconnect_ms", &x->reconnect_ms);
        }
        cp_strbuf_addch(&sb, ',');
        load_series_json(&sb, "login_ms", &x->login_ms);
        cp_strbuf_addch(&sb, ',');
        load_series_json(&sb, "sync_open_ms", &x->sync_ms);
        cp_strbuf_addf(&sb, ",\"open_phase_s\":%.3f,\"logins_per_s\":%.1f,\"sync_opens_per_s\":%.1f", open_s / 1e3,
                       open_s > 0 ? (double) x->logged_in * 1e3 / open_s : 0,
                       open_s > 0 ? (double) x->streams_open * 1e3 / open_s : 0);
        if (o->changes) {
                cp_strbuf_addf(&sb, ",\"changes\":{\"done\":%" PRId64 ",\"failed\":%" PRIu64
                                    ",\"streams_missed\":%" PRIu64 ",",
                               x->changes_done, x->ch_errors, x->ch_missed);
                load_series_json(&sb, "last_stream_ms", &x->ch_last);
                cp_strbuf_addch(&sb, ',');
                load_series_json(&sb, "last_stream_after_commit_ms", &x->ch_last_commit);
                cp_strbuf_addch(&sb, ',');
                load_series_json(&sb, "every_stream_ms", &x->ch_stream);
                cp_strbuf_addch(&sb, ',');
                load_series_json(&sb, "change_login_ms", &x->ch_login);
                cp_strbuf_addch(&sb, '}');
        }
        cp_strbuf_addf(&sb, ",\"interrupted\":%s,\"elapsed_s\":%.3f}\n", stop_requested ? "true" : "false",
                       (t_end - x->t_start) / 1e3);
        fputs(sb.buf, stdout);
        fflush(stdout);
        cp_strbuf_release(&sb);
}

static void ctx_release(load_ctx *x) {
        for (size_t i = 0; i < x->n; i++)
                cp_nbc_peer_release(&x->peers[i].key);
        cp_nbc_peer_release(&x->changer.key);
        if (x->keys)
                cp_explicit_bzero(x->keys, x->n_keys * sizeof *x->keys);
        free(x->keys);
        free(x->peers);
        free(x->heap);
        for (size_t i = 0; i < x->n_file_keys; i++) {
                cp_explicit_bzero(x->file_keys[i], strlen(x->file_keys[i]));
                free(x->file_keys[i]);
        }
        free(x->file_keys);
        free(x->skeys);
        for (size_t j = 0; j < x->n_chans; j++)
                if (x->chans[j])
                        grpc_channel_destroy(x->chans[j]);
        free(x->chans);
        if (x->cq) {
                grpc_completion_queue_shutdown(x->cq);
                while (grpc_completion_queue_next(x->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
                       GRPC_QUEUE_SHUTDOWN)
                        ;
                grpc_completion_queue_destroy(x->cq);
        }
        load_series *series[] = { &x->login_ms, &x->sync_ms, &x->ch_last, &x->ch_last_commit, &x->ch_stream,
                                  &x->ch_login, &x->reconnect_ms };
        for (size_t i = 0; i < ELEMENTSOF(series); i++)
                load_series_release(series[i]);
}

int load_run(const load_opts *o) {
        load_ctx x = { .o = o };
        struct sigaction sa = { .sa_handler = on_signal };
        int rc = 1;

        if (cp_crypto_init() < 0) {
                fprintf(stderr, "netbird-load: error: libsodium did not initialise\n");
                return 1;
        }
        sigemptyset(&sa.sa_mask);
        (void) sigaction(SIGUSR1, &sa, NULL);
        if (prepare_keys(&x) < 0) {
                ctx_release(&x);
                return 2;
        }
        gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
        grpc_init();
        x.cq = grpc_completion_queue_create_for_next(NULL);
        if (connect_all(&x) < 0 || prepare_peers(&x) < 0)
                goto out;
        (void) sigaction(SIGINT, &sa, NULL);
        (void) sigaction(SIGTERM, &sa, NULL);
        if (!o->quiet)
                fprintf(stderr, "netbird-load: %zu peers over %zu connections to %zu target(s), concurrency %" PRId64
                                "\n", x.n, x.n_chans, o->n_targets, o->concurrency);

        x.t_start = now_ms();
        x.t_next_progress = x.t_start + PROGRESS_MS;
        for (;;) {
                double t = now_ms();
                if (report_requested) {
                        report_requested = 0;
                        write_report(&x);
                }
                if (!advance(&x, t))
                        break;
                progress(&x, t);
                double w = next_wake(&x, t);
                gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                               gpr_time_from_micros((int64_t) ((w - t) * 1e3), GPR_TIMESPAN));
                grpc_event ev = grpc_completion_queue_next(x.cq, dl, NULL);
                if (ev.type == GRPC_OP_COMPLETE)
                        on_event(&x, ev.tag);
        }
        summary(&x, now_ms());
        write_report(&x);
        rc = (o->no_sync ? x.logged_in : x.streams_open) == x.n && load_counts_total(&x.errors) == 0 ? 0 : 1;
        if (o->keys_file && load_keys_write(o->keys_file, x.keys, x.n_keys) < 0)
                rc = 1;
out:
        ctx_release(&x);
        grpc_shutdown();
        return rc;
}
