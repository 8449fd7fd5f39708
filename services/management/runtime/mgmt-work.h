/*
 * mgmt-work.h: the worker pool, where work that may block runs.
 *
 * The gRPC completion-queue thread must never wait for PostgreSQL (or
 * spend long on crypto): one slow query there would stall every call of
 * the process. Such work is handed to this pool instead: a fixed number
 * of threads (the manager makes as many as the store has connections, so
 * a worker rarely waits for a connection) take jobs from one FIFO queue.
 *
 * A job is a function and its userdata; the pool knows nothing else about
 * it. How a result travels back (for gRPC: mgmt_call_offload() posts it to
 * the CQ thread) is the submitter's business.
 *
 * Limits: at most max_queued jobs wait at a time; beyond that
 * mgmt_workers_submit() refuses (-EAGAIN) and the caller sheds the load
 * (the agent edge answers RESOURCE_EXHAUSTED), so a stalled database
 * cannot make the queue grow without bound.
 *
 * Threads: mgmt_workers_submit() may be called from any thread. Jobs run
 * on the pool's threads, in submission order, several at once.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "cp/error.h"

typedef struct mgmt_workers mgmt_workers;

typedef void (*mgmt_work_fn)(void *userdata);

/* Starts n_threads (1..256) threads. On failure nothing is left running
 * and reterr says why. */
int mgmt_workers_new(unsigned n_threads, size_t max_queued, mgmt_workers **ret, cp_error *reterr);

/* Any thread: queues fn(userdata). Returns 0, -EAGAIN when max_queued jobs
 * are already waiting (never with force: for jobs that must run, such as
 * the fenced disconnect of a stream that ended, whose number is bounded by
 * the streams open), or -ESHUTDOWN once mgmt_workers_free() has begun; on
 * failure fn will not run and userdata stays the caller's. */
int mgmt_workers_submit(mgmt_workers *w, mgmt_work_fn fn, void *userdata, bool force);

/* Jobs waiting right now (for logs and tests). */
size_t mgmt_workers_queued(mgmt_workers *w);

/* Refuses new jobs, lets the threads finish every job already queued, and
 * joins them. Call it only when nothing can still submit. Accepts NULL;
 * returns NULL. */
mgmt_workers *mgmt_workers_free(mgmt_workers *w);
