/*
 * netmap-util.c: the small containers and parsers the snapshot is built
 * with: a bump arena, byte buffers, a string map, IPv4/CIDR and agent
 * version parsing, sort-unique.
 */
#include "cp/base.h"

#include <arpa/inet.h>

#include "cp/util.h"

#include "netmap-int.h"

/* ---- arena ---------------------------------------------------------------------- */

struct nm_chunk {
        struct nm_chunk *next;
        size_t used;
        size_t cap;
        _Alignas(16) uint8_t data[];
};

/* Chunks grow from NM_CHUNK_FIRST, doubling up to NM_CHUNK_MAX: a small
 * account's snapshot (an MSP's tenant: a handful of peers) stays a few KB,
 * where one 64 KiB first chunk made every cached snapshot cost its size
 * once the allocator's pages had been touched. */
#define NM_CHUNK_FIRST (4u * 1024 - 64)
#define NM_CHUNK_MAX (64u * 1024)

void *cp_netmap__arena_alloc(nm_arena *ar, size_t n) {
        struct nm_chunk *c = ar->head;

        n = (n + 7) & ~(size_t) 7;
        if (!c || c->cap - c->used < n) {
                size_t step = !c ? NM_CHUNK_FIRST : c->cap * 2 < NM_CHUNK_MAX ? c->cap * 2 : NM_CHUNK_MAX;
                size_t cap = n > step ? n : step;
                c = cp_xmalloc(sizeof *c + cap);
                c->used = 0;
                c->cap = cap;
                /* A big block gets its own chunk behind the current one, so
                 * the current chunk's free space is not abandoned. */
                if (ar->head && n > step) {
                        c->next = ar->head->next;
                        ar->head->next = c;
                } else {
                        c->next = ar->head;
                        ar->head = c;
                }
        }
        void *p = c->data + c->used;
        c->used += n;
        return p;
}

char *cp_netmap__arena_strdup(nm_arena *ar, const char *s) {
        if (!s)
                s = "";
        size_t n = strlen(s) + 1;
        char *d = cp_netmap__arena_alloc(ar, n);
        memcpy(d, s, n);
        return d;
}

void cp_netmap__arena_release(nm_arena *ar) {
        struct nm_chunk *c = ar->head;
        while (c) {
                struct nm_chunk *next = c->next;
                free(c);
                c = next;
        }
        ar->head = NULL;
}

/* ---- byte buffer --------------------------------------------------------------- */

void cp_netmap__buf_reserve(nm_buf *b, size_t extra) {
        if (b->cap - b->len >= extra)
                return;
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < extra)
                cap *= 2;
        b->data = cp_xrealloc(b->data, cap);
        b->cap = cap;
}

void cp_netmap__buf_release(nm_buf *b) {
        free(b->data);
        *b = (nm_buf) { 0 };
}

/* ---- string map ---------------------------------------------------------------- */

static uint64_t hash_str(const char *s) {
        /* FNV-1a, 64 bit: ids are short; good enough and branch-free. */
        uint64_t h = 1469598103934665603ull;
        for (; *s; s++) {
                h ^= (uint8_t) *s;
                h *= 1099511628211ull;
        }
        return h ^ (h >> 29);
}

int64_t cp_netmap__map_get(const nm_map *m, const char *key) {
        if (!m->cap || !key)
                return -1;
        size_t mask = m->cap - 1;
        for (size_t i = hash_str(key) & mask;; i = (i + 1) & mask) {
                if (!m->keys[i])
                        return -1;
                if (strcmp(m->keys[i], key) == 0)
                        return m->vals[i];
        }
}

static void map_grow(nm_map *m) {
        nm_map n = { .cap = m->cap ? m->cap * 2 : 64 };
        n.keys = cp_xcalloc(n.cap, sizeof *n.keys);
        n.vals = cp_xmalloc(n.cap * sizeof *n.vals);
        for (size_t i = 0; i < m->cap; i++)
                if (m->keys[i])
                        (void) cp_netmap__map_put(&n, m->keys[i], m->vals[i]);
        free(m->keys);
        free(m->vals);
        *m = n;
}

int cp_netmap__map_put(nm_map *m, const char *key, uint32_t val) {
        if ((m->n + 1) * 4 > m->cap * 3)
                map_grow(m);
        size_t mask = m->cap - 1;
        for (size_t i = hash_str(key) & mask;; i = (i + 1) & mask) {
                if (!m->keys[i]) {
                        m->keys[i] = key;
                        m->vals[i] = val;
                        m->n++;
                        return 0;
                }
                if (strcmp(m->keys[i], key) == 0)
                        return -EEXIST;
        }
}

void cp_netmap__map_release(nm_map *m) {
        free(m->keys);
        free(m->vals);
        *m = (nm_map) { 0 };
}

/* ---- versions ------------------------------------------------------------------- */

static bool parse_num(const char **s, uint32_t *ret) {
        const char *p = *s;
        uint32_t v = 0;
        if (*p < '0' || *p > '9')
                return false;
        for (; *p >= '0' && *p <= '9'; p++) {
                v = v * 10 + (uint32_t) (*p - '0');
                if (v > 1023)
                        v = 1023;       /* clamp: only ordering matters */
        }
        *s = p;
        *ret = v;
        return true;
}

void cp_netmap__version_parse(const char *s, nm_version *ret) {
        nm_version v = { 0 };
        uint32_t part[3] = { 0 };

        *ret = v;
        if (!s)
                return;
        if (strncmp(s, "development", 11) == 0 || strncmp(s, "dev-", 4) == 0 || strncmp(s, "ci-", 3) == 0) {
                ret->dev = true;
                return;
        }
        const char *p = s;
        if (*p == 'v') {
                v.v_prefix = true;
                p++;
        }
        if (!parse_num(&p, &part[0]))
                return;
        for (size_t i = 1; i < 3 && *p == '.'; i++) {
                p++;
                if (!parse_num(&p, &part[i]))
                        return;
        }
        if (*p == '-') {
                size_t n = strcspn(p + 1, "+");
                if (!n)
                        return;
                v.prerelease = true;
                p += 1 + n;
        }
        if (*p == '+') {
                if (!p[1])
                        return;
                p += strlen(p);
        }
        if (*p)
                return;
        v.ok = true;
        v.core = NM_VER(part[0], part[1], part[2]);
        *ret = v;
}

/* ---- addresses -------------------------------------------------------------------- */

int cp_netmap__ipv4_parse(const char *s, uint32_t *ret) {
        struct in_addr in;
        if (!s || inet_pton(AF_INET, s, &in) != 1)
                return -EINVAL;
        *ret = ntohl(in.s_addr);
        return 0;
}

int cp_netmap__cidr_parse(const char *s, bool *ret_v6, uint32_t *ret_addr, unsigned *ret_prefix) {
        char buf[64];
        const char *slash;
        int64_t prefix;

        if (!s || !(slash = strchr(s, '/')) || (size_t) (slash - s) >= sizeof buf)
                return -EINVAL;
        memcpy(buf, s, (size_t) (slash - s));
        buf[slash - s] = 0;
        if (strchr(buf, ':')) {
                struct in6_addr in6;
                if (inet_pton(AF_INET6, buf, &in6) != 1 || cp_parse_int64(slash + 1, 0, 128, &prefix) < 0)
                        return -EINVAL;
                *ret_v6 = true;
                *ret_addr = 0;
                *ret_prefix = (unsigned) prefix;
                return 0;
        }
        uint32_t a;
        if (cp_netmap__ipv4_parse(buf, &a) < 0 || cp_parse_int64(slash + 1, 0, 32, &prefix) < 0)
                return -EINVAL;
        *ret_v6 = false;
        *ret_addr = prefix ? a & (uint32_t) (0xffffffffu << (32 - prefix)) : 0;
        *ret_prefix = (unsigned) prefix;
        return 0;
}

/* ---- sorting ------------------------------------------------------------------------ */

static int cmp_u32(const void *x, const void *y) {
        uint32_t a = *(const uint32_t *) x, b = *(const uint32_t *) y;
        return (a > b) - (a < b);
}

size_t cp_netmap__sort_unique(uint32_t *v, size_t n) {
        if (n < 2)
                return n;
        qsort(v, n, sizeof *v, cmp_u32);
        size_t o = 1;
        for (size_t i = 1; i < n; i++)
                if (v[i] != v[o - 1])
                        v[o++] = v[i];
        return o;
}
