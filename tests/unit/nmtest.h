/*
 * nmtest.h: what the netmap unit tests share. nmtest_sync() encodes one
 * peer's SyncResponse from a snapshot and decodes it with protoc-c,
 * asserting on the way that the bytes are canonical (protoc-c packs the
 * decoded message to exactly the same bytes). The caller frees the
 * result with management__sync_response__free_unpacked().
 */
#pragma once

#include "cp/base.h"
#include "cp/netmap.h"
#include "cptest.h"
#include "management.pb-c.h"

static inline Management__SyncResponse *nmtest_sync(cp_netmap_account *a, const char *peer_id,
                                                    const cp_netmap_encode_opts *o, cp_netmap_stats *st) {
        cp_netmap_worker *w = cp_netmap_worker_new();
        const uint8_t *data;
        size_t len;
        int64_t idx = cp_netmap_account_find_peer(a, peer_id);

        ASSERT_TRUE(idx >= 0);
        ASSERT_OK(cp_netmap_encode_sync(w, a, (size_t) idx, o, &data, &len, st), NULL);
        Management__SyncResponse *sr = management__sync_response__unpack(NULL, len, data);
        ASSERT_TRUE(sr != NULL);
        size_t n = management__sync_response__get_packed_size(sr);
        ASSERT_EQ(len, n);
        uint8_t *re = cp_xmalloc(n + 1);
        ASSERT_EQ(n, management__sync_response__pack(sr, re));
        ASSERT_TRUE(memcmp(re, data, n) == 0);
        free(re);
        cp_netmap_worker_free(w);
        return sr;
}
