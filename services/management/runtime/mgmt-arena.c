#include "cp/base.h"
#include "mgmt-arena.h"

#include <stdarg.h>
#include <stdint.h>

#define CHUNK_SIZE 8192
#define ALIGN _Alignof(max_align_t)

struct mgmt_arena_chunk {
        mgmt_arena_chunk *next;
        size_t used, cap;
        _Alignas(max_align_t) unsigned char data[];
};

static void *arena_alloc(mgmt_arena *a, size_t n, bool budgeted);

static void *pb_alloc(void *userdata, size_t n) {
        return arena_alloc(userdata, n, true);
}

static void pb_free(void *userdata, void *p) {
        /* freed with the arena */
}

void mgmt_arena_init(mgmt_arena *a) {
        a->chunks = NULL;
        a->held = 0;
        a->budget = 0;
        a->over_budget = false;
        a->pb = (ProtobufCAllocator) { .alloc = pb_alloc, .free = pb_free, .allocator_data = a };
}

void mgmt_arena_release(mgmt_arena *a) {
        while (a->chunks) {
                mgmt_arena_chunk *c = a->chunks;
                a->chunks = c->next;
                free(c);
        }
        a->held = 0;
}

void mgmt_arena_set_budget(mgmt_arena *a, size_t bytes) {
        a->budget = bytes;
        a->over_budget = false;
}

static void *arena_alloc(mgmt_arena *a, size_t n, bool budgeted) {
        mgmt_arena_chunk *c = a->chunks;
        size_t need = (n + ALIGN - 1) & ~(ALIGN - 1);

        if (need < n)
                abort();
        if (need == 0)
                need = ALIGN;
        if (!c || c->cap - c->used < need) {
                size_t cap = need > CHUNK_SIZE / 2 ? need : CHUNK_SIZE;
                size_t take = sizeof(mgmt_arena_chunk) + cap;
                if (budgeted && a->budget && (take > a->budget || a->held > a->budget - take)) {
                        a->over_budget = true;
                        return NULL;
                }
                mgmt_arena_chunk *nc = cp_xmalloc(sizeof *nc + cap);
                nc->used = 0;
                nc->cap = cap;
                a->held += take;
                if (c && need > CHUNK_SIZE / 2) {
                        /* A big block: keep filling the current chunk after it. */
                        nc->next = c->next;
                        c->next = nc;
                } else {
                        nc->next = c;
                        a->chunks = nc;
                }
                c = nc;
        }
        void *p = c->data + c->used;
        c->used += need;
        memset(p, 0, n);
        return p;
}

void *mgmt_arena_alloc(mgmt_arena *a, size_t n) {
        return arena_alloc(a, n, false);
}

void *mgmt_arena_array(mgmt_arena *a, size_t n, size_t size) {
        if (size && n > SIZE_MAX / size)
                abort();
        return mgmt_arena_alloc(a, n * size);
}

char *mgmt_arena_strdup(mgmt_arena *a, const char *s) {
        size_t n = strlen(s) + 1;
        char *p = mgmt_arena_alloc(a, n);

        memcpy(p, s, n);
        return p;
}

char *mgmt_arena_printf(mgmt_arena *a, const char *fmt, ...) {
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n < 0)
                abort();
        char *p = mgmt_arena_alloc(a, (size_t) n + 1);
        va_start(ap, fmt);
        (void) vsnprintf(p, (size_t) n + 1, fmt, ap);
        va_end(ap);
        return p;
}
