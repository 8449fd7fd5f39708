/*
 * mgmt-strmap.h: a string-keyed hash map of pointers (chained, grows by
 * doubling). Keys are copied; values are borrowed. Not thread-safe: one
 * owner (the Sync registry lives on the gRPC CQ thread).
 */
#pragma once

#include <stddef.h>

typedef struct mgmt_strmap mgmt_strmap;

mgmt_strmap *mgmt_strmap_new(void);
/* Frees the map and its keys, not the values. Accepts NULL; returns NULL. */
mgmt_strmap *mgmt_strmap_free(mgmt_strmap *m);

/* The value under key, or NULL. */
void *mgmt_strmap_get(const mgmt_strmap *m, const char *key);
/* Sets key to value (value != NULL); returns the value it replaced, or NULL. */
void *mgmt_strmap_put(mgmt_strmap *m, const char *key, void *value);
/* Removes key; returns its value, or NULL when absent. */
void *mgmt_strmap_remove(mgmt_strmap *m, const char *key);
size_t mgmt_strmap_size(const mgmt_strmap *m);

/* Calls fn(key, value, userdata) for every entry; fn must not change the
 * map. */
void mgmt_strmap_foreach(const mgmt_strmap *m, void (*fn)(const char *key, void *value, void *userdata),
                         void *userdata);
