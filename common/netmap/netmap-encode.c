/*
 * netmap-encode.c: a computed map as SyncResponse bytes.
 *
 * Two passes over the worker's lists: the first adds up the exact size
 * (every piece's length is known: pre-encoded spans plus tags and length
 * varints), the second writes into the worker's buffer, which only grows.
 * Nested lengths are therefore known before their bodies are written and
 * nothing is copied twice. The field order is field-number order within
 * each message, as protoc-c packs.
 */
#include "cp/base.h"

#include "netmap-int.h"

/* Tags of the fields written here (all field numbers < 16: one byte). */
enum {
        T_SR_NETBIRD_CONFIG = NM_TAG(1, NM_WT_LEN),
        T_SR_PEER_CONFIG = NM_TAG(2, NM_WT_LEN),
        T_SR_REMOTE_PEERS = NM_TAG(3, NM_WT_LEN),
        T_SR_REMOTE_EMPTY = NM_TAG(4, NM_WT_VARINT),
        T_SR_NETWORK_MAP = NM_TAG(5, NM_WT_LEN),
        T_SR_SESSION_EXPIRES = NM_TAG(7, NM_WT_LEN),

        T_NM_SERIAL = NM_TAG(1, NM_WT_VARINT),
        T_NM_PEER_CONFIG = NM_TAG(2, NM_WT_LEN),
        T_NM_REMOTE_PEERS = NM_TAG(3, NM_WT_LEN),
        T_NM_REMOTE_EMPTY = NM_TAG(4, NM_WT_VARINT),
        T_NM_ROUTES = NM_TAG(5, NM_WT_LEN),
        T_NM_DNS = NM_TAG(6, NM_WT_LEN),
        T_NM_OFFLINE = NM_TAG(7, NM_WT_LEN),
        T_NM_FW = NM_TAG(8, NM_WT_LEN),
        T_NM_FW_EMPTY = NM_TAG(9, NM_WT_VARINT),
        T_NM_RFW = NM_TAG(10, NM_WT_LEN),
        T_NM_RFW_EMPTY = NM_TAG(11, NM_WT_VARINT),

        T_DNS_ENABLE = NM_TAG(1, NM_WT_VARINT),
        T_DNS_NSG = NM_TAG(2, NM_WT_LEN),
        T_DNS_ZONE = NM_TAG(3, NM_WT_LEN),
        T_DNS_FWD_PORT = NM_TAG(4, NM_WT_VARINT),

        T_TS_SECONDS = NM_TAG(1, NM_WT_VARINT),
        T_TS_NANOS = NM_TAG(2, NM_WT_VARINT),
};

typedef struct sizes {
        size_t remotes;         /* all remotePeers fields */
        size_t nm;              /* NetworkMap body */
        size_t dns;             /* DNSConfig body */
        size_t zone;            /* CustomZone body */
        size_t ts;              /* Timestamp body */
        size_t total;
        uint64_t ts_seconds;
        uint64_t ts_nanos;
} sizes;

static inline const uint8_t *bp(const cp_netmap_account *a, nm_span s) {
        return a->blob.data + s.off;
}

static inline size_t fw_body(const cp_netmap_account *a, const nm_peer *q, nm_span t, bool src) {
        return q->fw_ip.len + t.len + (src ? q->fw_src.len : 0);
}

static inline nm_span rfw_span(const cp_netmap_worker *w, size_t i, const uint8_t **ret_base,
                               const cp_netmap_account *a) {
        uint32_t off = w->rfw.v[2 * i], len = w->rfw.v[2 * i + 1];
        if (off & NM_RFW_BLOB) {
                *ret_base = a->blob.data;
                off &= ~NM_RFW_BLOB;
        } else {
                *ret_base = w->side.data;
        }
        return (nm_span) { off, len };
}

static void compute_sizes(const cp_netmap_worker *w, const cp_netmap_account *a, const nm_peer *p,
                          const cp_netmap_encode_opts *o, sizes *z) {
        const bool src = p->flags & NM_PEER_CAP_SRC_PREFIXES;
        size_t nm = 0;

        *z = (sizes) { 0 };
        for (size_t i = 0; i < w->remotes.n; i++)
                z->remotes += nm_fsize(a->peers[w->remotes.v[i]].rpc.len);

        if (a->serial)
                nm += 1 + nm_vsize(a->serial);
        nm += nm_fsize(w->pc_len);
        nm += z->remotes;
        if (!w->remotes.n)
                nm += 2;
        for (size_t i = 0; i < w->routes.n; i++)
                nm += nm_fsize(a->entries[w->routes.v[i]].msg.len);

        if (w->dns) {
                z->dns += 2;
                for (size_t i = 0; i < w->nsgroups.n; i++)
                        z->dns += nm_fsize(a->nsgroups[w->nsgroups.v[i]].msg.len);
                if (w->n_dns_recs) {
                        z->zone = a->zone_domain.len;
                        for (size_t i = 0; i < w->relevant.n; i++)
                                z->zone += a->peers[w->relevant.v[i]].dns_recs.len;
                        z->dns += nm_fsize(z->zone);
                }
                z->dns += cp_netmap__zones_size(w, a);
        }
        z->dns += 1 + nm_vsize((uint64_t) a->forwarder_port);
        nm += nm_fsize(z->dns);

        for (size_t i = 0; i < w->offline.n; i++)
                nm += nm_fsize(a->peers[w->offline.v[i]].rpc.len);
        for (size_t i = 0; i < w->n_fw; i++) {
                const nm_peer *q = &a->peers[w->fw[i].peer];
                for (uint32_t k = 0; k < w->fw[i].n; k++)
                        nm += nm_fsize(fw_body(a, q, a->tmpls[w->fw[i].first + k], src));
        }
        if (!w->n_fw_msgs)
                nm += 2;
        for (size_t i = 0; i < w->rfw.n / 2; i++)
                nm += nm_fsize(w->rfw.v[2 * i + 1]);
        if (!w->rfw.n)
                nm += 2;
        z->nm = nm;

        size_t t = 0;
        if (o->with_netbird_config)
                t += nm_fsize(o->netbird_config_len);
        t += nm_fsize(w->pc_len);
        if (p->flags & NM_PEER_OLD_REMOTE_PEERS)
                t += z->remotes;
        if (!w->remotes.n)
                t += 2;
        t += nm_fsize(nm);
        if (!o->omit_session_expires) {
                int64_t ns = p->session_expires_ns > 0 ? p->session_expires_ns : 0;
                z->ts_seconds = (uint64_t) (ns / 1000000000);
                z->ts_nanos = (uint64_t) (ns % 1000000000);
                if (z->ts_seconds)
                        z->ts += 1 + nm_vsize(z->ts_seconds);
                if (z->ts_nanos)
                        z->ts += 1 + nm_vsize(z->ts_nanos);
                t += nm_fsize(z->ts);
        }
        t += cp_netmap__posture_checks(a, (uint32_t) (p - a->peers)).len;
        t += o->extra_len;
        z->total = t;
}

static inline uint8_t *put_field(uint8_t *o, uint8_t tag, const void *data, size_t n) {
        *o++ = tag;
        o = nm_vput(o, n);
        memcpy(o, data, n);
        return o + n;
}

static inline uint8_t *put_head(uint8_t *o, uint8_t tag, size_t n) {
        *o++ = tag;
        return nm_vput(o, n);
}

static uint8_t *put_remotes(uint8_t *o, const cp_netmap_account *a, const nm_vec *v, uint8_t tag) {
        for (size_t i = 0; i < v->n; i++) {
                nm_span s = a->peers[v->v[i]].rpc;
                o = put_field(o, tag, bp(a, s), s.len);
        }
        return o;
}

static uint8_t *write_network_map(uint8_t *o, const cp_netmap_worker *w, const cp_netmap_account *a,
                                  const nm_peer *p, const sizes *z) {
        const bool src = p->flags & NM_PEER_CAP_SRC_PREFIXES;

        if (a->serial) {
                *o++ = T_NM_SERIAL;
                o = nm_vput(o, a->serial);
        }
        o = put_field(o, T_NM_PEER_CONFIG, w->side.data, w->pc_len);
        o = put_remotes(o, a, &w->remotes, T_NM_REMOTE_PEERS);
        if (!w->remotes.n)
                *o++ = T_NM_REMOTE_EMPTY, *o++ = 1;
        for (size_t i = 0; i < w->routes.n; i++) {
                nm_span s = a->entries[w->routes.v[i]].msg;
                o = put_field(o, T_NM_ROUTES, bp(a, s), s.len);
        }

        o = put_head(o, T_NM_DNS, z->dns);
        if (w->dns) {
                *o++ = T_DNS_ENABLE, *o++ = 1;
                for (size_t i = 0; i < w->nsgroups.n; i++) {
                        nm_span s = a->nsgroups[w->nsgroups.v[i]].msg;
                        o = put_field(o, T_DNS_NSG, bp(a, s), s.len);
                }
                if (w->n_dns_recs) {
                        o = put_head(o, T_DNS_ZONE, z->zone);
                        memcpy(o, bp(a, a->zone_domain), a->zone_domain.len);
                        o += a->zone_domain.len;
                        for (size_t i = 0; i < w->relevant.n; i++) {
                                nm_span s = a->peers[w->relevant.v[i]].dns_recs;
                                memcpy(o, bp(a, s), s.len);
                                o += s.len;
                        }
                }
                o = cp_netmap__zones_write(o, w, a);
        }
        *o++ = T_DNS_FWD_PORT;
        o = nm_vput(o, (uint64_t) a->forwarder_port);

        o = put_remotes(o, a, &w->offline, T_NM_OFFLINE);
        for (size_t i = 0; i < w->n_fw; i++) {
                const nm_peer *q = &a->peers[w->fw[i].peer];
                for (uint32_t k = 0; k < w->fw[i].n; k++) {
                        nm_span t = a->tmpls[w->fw[i].first + k];
                        o = put_head(o, T_NM_FW, fw_body(a, q, t, src));
                        memcpy(o, bp(a, q->fw_ip), q->fw_ip.len);
                        o += q->fw_ip.len;
                        memcpy(o, bp(a, t), t.len);
                        o += t.len;
                        if (src) {
                                memcpy(o, bp(a, q->fw_src), q->fw_src.len);
                                o += q->fw_src.len;
                        }
                }
        }
        if (!w->n_fw_msgs)
                *o++ = T_NM_FW_EMPTY, *o++ = 1;
        for (size_t i = 0; i < w->rfw.n / 2; i++) {
                const uint8_t *base;
                nm_span s = rfw_span(w, i, &base, a);
                o = put_field(o, T_NM_RFW, base + s.off, s.len);
        }
        if (!w->rfw.n)
                *o++ = T_NM_RFW_EMPTY, *o++ = 1;
        return o;
}

int cp_netmap_encode_sync(cp_netmap_worker *w, const cp_netmap_account *a, size_t peer_idx,
                          const cp_netmap_encode_opts *opts, const uint8_t **ret_data, size_t *ret_len,
                          cp_netmap_stats *stats) {
        static const cp_netmap_encode_opts none = { 0 };
        const cp_netmap_encode_opts *o = opts ? opts : &none;
        sizes z;

        if (!w || !a || peer_idx >= a->n_peers)
                return -EINVAL;
        const nm_peer *p = &a->peers[peer_idx];

        cp_netmap__compute(w, a, (uint32_t) peer_idx, o->jwt_config, o->jwt_config_len);
        if (w->side.len > INT32_MAX)    /* side-buffer offsets must stay below NM_RFW_BLOB */
                return -EMSGSIZE;
        compute_sizes(w, a, p, o, &z);
        if (z.total > INT32_MAX)
                return -EMSGSIZE;

        w->out.len = 0;
        cp_netmap__buf_reserve(&w->out, z.total);
        uint8_t *start = w->out.data, *out = start;

        if (o->with_netbird_config)
                out = put_field(out, T_SR_NETBIRD_CONFIG, o->netbird_config, o->netbird_config_len);
        out = put_field(out, T_SR_PEER_CONFIG, w->side.data, w->pc_len);
        if (p->flags & NM_PEER_OLD_REMOTE_PEERS)
                out = put_remotes(out, a, &w->remotes, T_SR_REMOTE_PEERS);
        if (!w->remotes.n)
                *out++ = T_SR_REMOTE_EMPTY, *out++ = 1;
        out = put_head(out, T_SR_NETWORK_MAP, z.nm);
        out = write_network_map(out, w, a, p, &z);
        /* Checks (field 6) between the NetworkMap (5) and sessionExpiresAt
         * (7): field order, as protoc-c packs it. */
        nm_span checks = cp_netmap__posture_checks(a, (uint32_t) peer_idx);
        if (checks.len) {
                memcpy(out, a->blob.data + checks.off, checks.len);
                out += checks.len;
        }
        if (!o->omit_session_expires) {
                out = put_head(out, T_SR_SESSION_EXPIRES, z.ts);
                if (z.ts_seconds) {
                        *out++ = T_TS_SECONDS;
                        out = nm_vput(out, z.ts_seconds);
                }
                if (z.ts_nanos) {
                        *out++ = T_TS_NANOS;
                        out = nm_vput(out, z.ts_nanos);
                }
        }
        if (o->extra_len) {
                memcpy(out, o->extra, o->extra_len);
                out += o->extra_len;
        }
        if ((size_t) (out - start) != z.total)
                abort();        /* the two passes disagree: a bug, never input */
        w->out.len = z.total;

        if (stats)
                *stats = (cp_netmap_stats) {
                        .remote_peers = w->remotes.n,
                        .offline_peers = w->offline.n,
                        .firewall_rules = w->n_fw_msgs,
                        .routes = w->routes.n,
                        .route_firewall_rules = w->rfw.n / 2,
                        .dns_records = w->n_dns_recs,
                        .nameserver_groups = w->nsgroups.n,
                        .ssh_enabled = w->ssh,
                        .dns_enabled = w->dns,
                };
        *ret_data = start;
        *ret_len = z.total;
        return 0;
}
