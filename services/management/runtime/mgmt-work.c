#include "cp/base.h"
#include "mgmt-work.h"

#include <pthread.h>

typedef struct job {
        struct job *next;
        mgmt_work_fn fn;
        void *userdata;
} job;

struct mgmt_workers {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        job *head, **tail;              /* under lock */
        size_t queued;                  /* under lock */
        size_t max_queued;
        bool stopping;                  /* under lock */
        pthread_t *threads;
        unsigned n_threads;             /* started */
};

static void *worker_main(void *userdata) {
        mgmt_workers *w = userdata;

        pthread_mutex_lock(&w->lock);
        for (;;) {
                while (!w->head && !w->stopping)
                        pthread_cond_wait(&w->cond, &w->lock);
                job *j = w->head;
                if (!j)
                        break;          /* stopping and nothing left */
                w->head = j->next;
                if (!w->head)
                        w->tail = &w->head;
                w->queued--;
                pthread_mutex_unlock(&w->lock);
                j->fn(j->userdata);
                free(j);
                pthread_mutex_lock(&w->lock);
        }
        pthread_mutex_unlock(&w->lock);
        return NULL;
}

int mgmt_workers_new(unsigned n_threads, size_t max_queued, mgmt_workers **ret, cp_error *reterr) {
        mgmt_workers *w;

        if (n_threads < 1 || n_threads > 256 || max_queued < 1)
                return cp_error_set(reterr, -EINVAL, "invalid worker pool size %u", n_threads);
        w = cp_xcalloc(1, sizeof *w);
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        w->tail = &w->head;
        w->max_queued = max_queued;
        w->threads = cp_xcalloc(n_threads, sizeof *w->threads);
        for (unsigned i = 0; i < n_threads; i++) {
                int e = pthread_create(&w->threads[i], NULL, worker_main, w);
                if (e != 0) {
                        mgmt_workers_free(w);
                        return cp_error_set(reterr, -e, "cannot start a worker thread: %s", strerror(e));
                }
                char name[16];
                (void) snprintf(name, sizeof name, "worker-%u", i);
                (void) pthread_setname_np(w->threads[i], name);
                w->n_threads++;
        }
        *ret = w;
        return 0;
}

int mgmt_workers_submit(mgmt_workers *w, mgmt_work_fn fn, void *userdata, bool force) {
        job *j = cp_xcalloc(1, sizeof *j);
        int r = 0;

        j->fn = fn;
        j->userdata = userdata;
        pthread_mutex_lock(&w->lock);
        if (w->stopping)
                r = -ESHUTDOWN;
        else if (w->queued >= w->max_queued && !force)
                r = -EAGAIN;
        else {
                *w->tail = j;
                w->tail = &j->next;
                w->queued++;
                pthread_cond_signal(&w->cond);
        }
        pthread_mutex_unlock(&w->lock);
        if (r < 0)
                free(j);
        return r;
}

size_t mgmt_workers_queued(mgmt_workers *w) {
        size_t n;

        pthread_mutex_lock(&w->lock);
        n = w->queued;
        pthread_mutex_unlock(&w->lock);
        return n;
}

mgmt_workers *mgmt_workers_free(mgmt_workers *w) {
        if (!w)
                return NULL;
        pthread_mutex_lock(&w->lock);
        w->stopping = true;
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
        for (unsigned i = 0; i < w->n_threads; i++)
                (void) pthread_join(w->threads[i], NULL);
        /* Threads drain the queue before they exit; anything left means no
         * thread ever started, and then nothing was ever accepted. */
        while (w->head) {
                job *j = w->head;
                w->head = j->next;
                free(j);
        }
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        free(w->threads);
        free(w);
        return NULL;
}
