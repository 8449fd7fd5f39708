#include "cp/base.h"
#include "mgmt-strmap.h"

typedef struct entry {
        struct entry *next;
        size_t hash;
        void *value;
        char key[];
} entry;

struct mgmt_strmap {
        entry **buckets;
        size_t n_buckets;               /* a power of two */
        size_t size;
};

static size_t hash_of(const char *s) {
        uint64_t h = 1469598103934665603ULL;    /* FNV-1a */

        for (; *s; s++) {
                h ^= (unsigned char) *s;
                h *= 1099511628211ULL;
        }
        return (size_t) h;
}

mgmt_strmap *mgmt_strmap_new(void) {
        mgmt_strmap *m = cp_xcalloc(1, sizeof *m);

        m->n_buckets = 16;
        m->buckets = cp_xcalloc(m->n_buckets, sizeof *m->buckets);
        return m;
}

mgmt_strmap *mgmt_strmap_free(mgmt_strmap *m) {
        if (!m)
                return NULL;
        for (size_t i = 0; i < m->n_buckets; i++)
                while (m->buckets[i]) {
                        entry *e = m->buckets[i];
                        m->buckets[i] = e->next;
                        free(e);
                }
        free(m->buckets);
        free(m);
        return NULL;
}

static entry **find(const mgmt_strmap *m, const char *key, size_t h) {
        entry **p = &m->buckets[h & (m->n_buckets - 1)];

        for (; *p; p = &(*p)->next)
                if ((*p)->hash == h && strcmp((*p)->key, key) == 0)
                        break;
        return p;
}

void *mgmt_strmap_get(const mgmt_strmap *m, const char *key) {
        entry **p = find(m, key, hash_of(key));

        return *p ? (*p)->value : NULL;
}

static void grow(mgmt_strmap *m) {
        size_t n = m->n_buckets * 2;
        entry **b = cp_xcalloc(n, sizeof *b);

        for (size_t i = 0; i < m->n_buckets; i++)
                while (m->buckets[i]) {
                        entry *e = m->buckets[i];
                        m->buckets[i] = e->next;
                        e->next = b[e->hash & (n - 1)];
                        b[e->hash & (n - 1)] = e;
                }
        free(m->buckets);
        m->buckets = b;
        m->n_buckets = n;
}

void *mgmt_strmap_put(mgmt_strmap *m, const char *key, void *value) {
        size_t h = hash_of(key);
        entry **p = find(m, key, h);

        if (*p) {
                void *old = (*p)->value;
                (*p)->value = value;
                return old;
        }
        size_t len = strlen(key);
        entry *e = cp_xmalloc(sizeof *e + len + 1);
        memcpy(e->key, key, len + 1);
        e->hash = h;
        e->value = value;
        e->next = NULL;
        *p = e;
        if (++m->size > m->n_buckets)
                grow(m);
        return NULL;
}

void *mgmt_strmap_remove(mgmt_strmap *m, const char *key) {
        entry **p = find(m, key, hash_of(key));
        entry *e = *p;
        void *v;

        if (!e)
                return NULL;
        *p = e->next;
        v = e->value;
        free(e);
        m->size--;
        return v;
}

size_t mgmt_strmap_size(const mgmt_strmap *m) {
        return m->size;
}

void mgmt_strmap_foreach(const mgmt_strmap *m, void (*fn)(const char *key, void *value, void *userdata),
                         void *userdata) {
        for (size_t i = 0; i < m->n_buckets; i++)
                for (entry *e = m->buckets[i]; e; e = e->next)
                        fn(e->key, e->value, userdata);
}
