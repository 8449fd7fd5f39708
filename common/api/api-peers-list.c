/*
 * The peers routes' JSON and what they keep between requests (api-peers.h):
 * the peer rows and their JSON, the list (with accessible-peer counts),
 * the network-map snapshots and the rendered lists.
 *
 * The peer JSON is written here in C from plain columns rather than by
 * PostgreSQL's json functions: json_build_object over ~35 fields costs
 * several microseconds a row in the database, more than reading the
 * columns and writing the text.
 *
 * Counts come from the network maps themselves (a common/netmap snapshot
 * of the account, the one the Sync path encodes maps from). Loading one
 * costs about as much as the whole list at 25,000 peers, so the newest
 * few are kept, keyed by account and serial, and loaded on a miss inside
 * the request's own transaction: a handler already holds a pooled
 * connection and must never wait for a second one.
 */
#include "api-peers.h"
#include "cp/store-peers.h"

#include <pthread.h>

/* ---- what is kept between requests -------------------------------------------------------- */

/* A few recently used snapshots, one per account at most. Each holds a
 * reference; a newer serial replaces an older one of the same account,
 * a new account takes the least recently used slot. About 1 KB per peer
 * (22 MB at 25,000 peers). */
#define SNAPSHOT_SLOTS 8
/* Rendered peer lists (see "the list from rendered peers" below), about
 * 1.3 KB per peer. */
#define LIST_SLOTS 4

typedef struct list_cache list_cache;
static list_cache *list_cache_free(list_cache *lc);

struct api_peer_caches {
        pthread_mutex_t lock;
        uint64_t clock;
        struct snapshot_slot {
                cp_netmap_account *a;
                uint64_t used;
        } slot[SNAPSHOT_SLOTS];
        struct list_slot {
                list_cache *lc;
                bool busy;      /* checked out by a request */
                uint64_t used;
        } list[LIST_SLOTS];
};

api_peer_caches *api_peer_caches_new(void) {
        api_peer_caches *pc = cp_xcalloc(1, sizeof *pc);

        pthread_mutex_init(&pc->lock, NULL);
        return pc;
}

api_peer_caches *api_peer_caches_free(api_peer_caches *pc) {
        if (!pc)
                return NULL;
        for (size_t i = 0; i < SNAPSHOT_SLOTS; i++)
                (void) cp_netmap_account_unref(pc->slot[i].a);
        for (size_t i = 0; i < LIST_SLOTS; i++)
                (void) list_cache_free(pc->list[i].lc);
        pthread_mutex_destroy(&pc->lock);
        free(pc);
        return NULL;
}

/* A new reference to the cached snapshot of account_id at serial or
 * newer, or NULL. */
static cp_netmap_account *snapshots_get(api_peer_caches *pc, const char *account_id, int64_t serial) {
        cp_netmap_account *found = NULL;

        pthread_mutex_lock(&pc->lock);
        for (size_t i = 0; i < SNAPSHOT_SLOTS && !found; i++) {
                cp_netmap_account *a = pc->slot[i].a;
                if (a && strcmp(cp_netmap_account_id(a), account_id) == 0 &&
                    cp_netmap_account_serial(a) >= (uint64_t) serial) {
                        found = cp_netmap_account_ref(a);
                        pc->slot[i].used = ++pc->clock;
                }
        }
        pthread_mutex_unlock(&pc->lock);
        return found;
}

/* Keeps a (takes a reference of its own). */
static void snapshots_put(api_peer_caches *pc, cp_netmap_account *a) {
        size_t pick = SNAPSHOT_SLOTS;

        pthread_mutex_lock(&pc->lock);
        for (size_t i = 0; i < SNAPSHOT_SLOTS && pick == SNAPSHOT_SLOTS; i++) {
                cp_netmap_account *o = pc->slot[i].a;
                if (o && strcmp(cp_netmap_account_id(o), cp_netmap_account_id(a)) == 0)
                        pick = i;
        }
        if (pick < SNAPSHOT_SLOTS &&
            cp_netmap_account_serial(pc->slot[pick].a) > cp_netmap_account_serial(a))
                pick = SNAPSHOT_SLOTS + 1;      /* ours is older: keep the cached one */
        if (pick == SNAPSHOT_SLOTS) {
                pick = 0;
                for (size_t i = 0; i < SNAPSHOT_SLOTS; i++) {
                        if (!pc->slot[i].a) {
                                pick = i;
                                break;
                        }
                        if (pc->slot[i].used < pc->slot[pick].used)
                                pick = i;
                }
        }
        if (pick < SNAPSHOT_SLOTS) {
                (void) cp_netmap_account_unref(pc->slot[pick].a);
                pc->slot[pick].a = cp_netmap_account_ref(a);
                pc->slot[pick].used = ++pc->clock;
        }
        pthread_mutex_unlock(&pc->lock);
}

/* The account's snapshot at acc->serial or newer: cached, or loaded in
 * the request's transaction. *ret is a new reference. */
int api_peers__snapshot(api_ctx *c, const account_info *acc, cp_netmap_account **ret) {
        cp_error err = { 0 };
        cp_netmap_account *a = snapshots_get(c->api->peer_caches, c->account_id, acc->serial);

        if (!a && c->api->snapshot_peek) {
                a = c->api->snapshot_peek(c->account_id, acc->serial, c->api->snapshot_userdata);
                if (a)
                        snapshots_put(c->api->peer_caches, a);
        }
        if (!a) {
                int r = cp_netmap_load_tx(c->tx, c->account_id, c->api->dns_domain, &a, &err);
                if (r < 0)
                        return api_internal(c, "loading the network map", &err);
                snapshots_put(c->api->peer_caches, a);
        }
        *ret = a;
        return 0;
}

/* ---- writing JSON ------------------------------------------------------------------------ */

/* The peer JSON is written through a cursor (char **w) into space
 * reserved beforehand: put_peer() reserves its worst case once, so the
 * pieces need no bounds checks (the list writes ~60 of them per peer). */

#define W_LIT(w, s) w_add((w), (s), sizeof(s) - 1)

static inline void w_add(char **w, const void *s, size_t n) {
        memcpy(*w, s, n);
        *w += n;
}

static inline void w_ch(char **w, char ch) {
        *(*w)++ = ch;
}

/* The escaped bytes of s (no quotes), at most 6 per byte. Runs of plain
 * bytes are copied at once. */
static void w_escaped(char **w, const char *s) {
        *w = cp_json_escape_to(*w, s);
}

/* A JSON string. */
static void w_str(char **w, const char *s) {
        w_ch(w, '"');
        w_escaped(w, s);
        w_ch(w, '"');
}

static void w_u64(char **w, uint64_t v) {
        char tmp[24], *p = tmp + sizeof tmp;

        do {
                *--p = (char) ('0' + v % 10);
                v /= 10;
        } while (v);
        w_add(w, p, (size_t) (tmp + sizeof tmp - p));
}

static void w_bool(char **w, bool v) {
        if (v)
                W_LIT(w, "true");
        else
                W_LIT(w, "false");
}

static void put_digits(char *p, unsigned v, int n) {
        while (n-- > 0) {
                p[n] = (char) ('0' + v % 10);
                v /= 10;
        }
}

/* A time as Go's encoding/json writes a time.Time (RFC 3339 in UTC,
 * fractional seconds without trailing zeros), at most 32 bytes: from
 * microseconds since the Unix epoch as text, or Go's zero time for NULL.
 * Days to a civil date after H. Hinnant's civil_from_days, no libc on the
 * way: the list formats three of these per peer. */
static void w_time(char **w, const char *us_text) {
        if (!us_text) {
                W_LIT(w, "\"0001-01-01T00:00:00Z\"");
                return;
        }
        int64_t us = strtoll(us_text, NULL, 10);
        int64_t secs = us >= 0 ? us / 1000000 : -((-us + 999999) / 1000000);
        int64_t frac = us - secs * 1000000;
        int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
        int64_t sod = secs - days * 86400;

        int64_t z = days + 719468;
        int64_t era = (z >= 0 ? z : z - 146096) / 146097;
        int64_t doe = z - era * 146097;
        int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        int64_t mp = (5 * doy + 2) / 153;
        int64_t d = doy - (153 * mp + 2) / 5 + 1;
        int64_t m = mp < 10 ? mp + 3 : mp - 9;
        int64_t y = yoe + era * 400 + (m <= 2);
        if (y < 0 || y > 9999) {
                W_LIT(w, "\"0001-01-01T00:00:00Z\"");
                return;
        }

        char *b = *w;
        b[0] = '"';
        put_digits(b + 1, (unsigned) y, 4);
        b[5] = '-';
        put_digits(b + 6, (unsigned) m, 2);
        b[8] = '-';
        put_digits(b + 9, (unsigned) d, 2);
        b[11] = 'T';
        put_digits(b + 12, (unsigned) (sod / 3600), 2);
        b[14] = ':';
        put_digits(b + 15, (unsigned) (sod / 60 % 60), 2);
        b[17] = ':';
        put_digits(b + 18, (unsigned) (sod % 60), 2);
        size_t n = 20;
        if (frac) {
                int digits = 6;
                while (frac % 10 == 0) {
                        frac /= 10;
                        digits--;
                }
                b[n++] = '.';
                put_digits(b + n, (unsigned) frac, digits);
                n += (size_t) digits;
        }
        b[n++] = 'Z';
        b[n++] = '"';
        *w += n;
}

/* A cp_strbuf's free tail as a cursor, for at most `need` bytes; done()
 * takes the cursor back. */
static char *w_begin(cp_strbuf *sb, size_t need) {
        cp_strbuf_grow(sb, need);
        return sb->buf + sb->len;
}

static void w_done(cp_strbuf *sb, char *w) {
        sb->len = (size_t) (w - sb->buf);
        sb->buf[sb->len] = '\0';
}

/* One JSON string into a cp_strbuf. */
static void sb_str(cp_strbuf *sb, const char *s) {
        char *w = w_begin(sb, strlen(s) * 6 + 2);
        w_str(&w, s);
        w_done(sb, w);
}

/* ---- peer rows ----------------------------------------------------------------------------- */

/* The columns of one peer, in the order of enum pcol. Times are Unix
 * microseconds (NULL stays NULL); the agent's local flags are one bit
 * mask in the order of PeerLocalFlags' JSON fields. */
#define FLAG_BIT(key, n) " | (COALESCE((p.meta_flags->>'" key "')::boolean, false)::int << " #n ")"
static const char SQL_PEERS[] =
        "SELECT p.id, p.name, host(p.ip), host(p.ipv6), COALESCE(host(p.location_connection_ip), ''),"
        " p.peer_status_connected, round(date_part('epoch', p.peer_status_last_seen) * 1000000)::bigint,"
        " p.meta_os, p.meta_os_version, p.meta_core, p.meta_kernel_version, p.location_geo_name_id,"
        " p.meta_wt_version, p.ssh_enabled, p.meta_hostname, COALESCE(p.user_id, ''), p.meta_ui_version,"
        " p.dns_label, p.extra_dns_labels, p.login_expiration_enabled,"
        " round(date_part('epoch', p.last_login) * 1000000)::bigint, p.peer_status_login_expired,"
        " p.peer_status_requires_approval, p.location_country_code, p.location_city_name,"
        " p.meta_system_serial_number, p.inactivity_expiration_enabled, p.ephemeral,"
        " round(date_part('epoch', p.created_at) * 1000000)::bigint,"
        " 0" FLAG_BIT("BlockInbound", 0) FLAG_BIT("BlockLANAccess", 1) FLAG_BIT("DisableClientRoutes", 2)
        FLAG_BIT("DisableDNS", 3) FLAG_BIT("DisableFirewall", 4) FLAG_BIT("DisableServerRoutes", 5)
        FLAG_BIT("LazyConnectionEnabled", 6) FLAG_BIT("RosenpassEnabled", 7) FLAG_BIT("RosenpassPermissive", 8)
        FLAG_BIT("ServerSSHAllowed", 9) ", p.xmin::text"
        " FROM peers p WHERE p.account_id = $1"
        /* filters, each off when NULL: name, ip (substring), owner, id */
        " AND ($2::text IS NULL OR strpos(p.name, $2) > 0)"
        " AND ($3::text IS NULL OR strpos(host(p.ip), $3) > 0 OR strpos(COALESCE(host(p.ipv6), ''), $3) > 0)"
        " AND ($4::text IS NULL OR p.user_id = $4)"
        " AND ($5::text IS NULL OR p.id = $5)"
        " AND ($6::text[] IS NULL OR p.id = ANY ($6::text[]))";

enum pcol {
        PC_ID, PC_NAME, PC_IP, PC_IPV6, PC_CONN_IP, PC_CONNECTED, PC_LAST_SEEN, PC_OS, PC_OS_VERSION, PC_CORE,
        PC_KERNEL_VERSION, PC_GEONAME, PC_VERSION, PC_SSH, PC_HOSTNAME, PC_USER, PC_UI_VERSION, PC_LABEL,
        PC_EXTRA_LABELS, PC_LOGIN_EXP, PC_LAST_LOGIN, PC_LOGIN_EXPIRED, PC_APPROVAL, PC_COUNTRY, PC_CITY,
        PC_SERIAL, PC_INACTIVITY, PC_EPHEMERAL, PC_CREATED, PC_FLAGS, PC_XMIN,
};

/* The group memberships of the same peers ($1..$5 as in SQL_PEERS). */
static const char SQL_PEER_GROUPS[] =
        "SELECT gp.peer_id, gp.group_id FROM group_peers gp WHERE gp.account_id = $1"
        " AND ($5::text IS NULL OR gp.peer_id = $5)"
        " AND (($2::text IS NULL AND $3::text IS NULL AND $4::text IS NULL)"
        " OR gp.peer_id IN (SELECT p.id FROM peers p WHERE p.account_id = $1"
        " AND ($2::text IS NULL OR strpos(p.name, $2) > 0)"
        " AND ($3::text IS NULL OR strpos(host(p.ip), $3) > 0 OR strpos(COALESCE(host(p.ipv6), ''), $3) > 0)"
        " AND ($4::text IS NULL OR p.user_id = $4)))";

/* The account's groups (GroupMinimum), by name; $2 = only the groups of
 * that peer (NULL = all). */
static const char SQL_GROUPS[] =
        "SELECT g.id, g.name, g.issued, (SELECT count(*) FROM group_peers gp WHERE gp.account_id = g.account_id"
        " AND gp.group_id = g.id), (SELECT count(*) FROM group_resources gr WHERE gr.account_id = g.account_id"
        " AND gr.group_id = g.id) FROM groups g WHERE g.account_id = $1"
        " AND ($2::text IS NULL OR g.id IN (SELECT gp.group_id FROM group_peers gp WHERE gp.account_id = $1"
        " AND gp.peer_id = $2)) ORDER BY g.name, g.id";

/* ---- a string -> index map (open addressing), for joining rows -------------------------------- */

typedef struct idmap {
        const char **keys;
        uint32_t *vals;
        size_t cap;
} idmap;

static uint64_t str_hash(const char *s) {
        uint64_t h = UINT64_C(14695981039346656037);

        for (; *s; s++)
                h = (h ^ (unsigned char) *s) * UINT64_C(1099511628211);
        return h;
}

/* n keys at most; keys are borrowed. */
static void idmap_init(idmap *m, size_t n) {
        m->cap = 16;
        while (m->cap < n * 2)
                m->cap *= 2;
        m->keys = cp_xcalloc(m->cap, sizeof *m->keys);
        m->vals = cp_xcalloc(m->cap, sizeof *m->vals);
}

static void idmap_release(idmap *m) {
        free(m->keys);
        free(m->vals);
}

/* The first value wins for a repeated key. */
static void idmap_put(idmap *m, const char *key, uint32_t val) {
        size_t i = str_hash(key) & (m->cap - 1);

        while (m->keys[i]) {
                if (strcmp(m->keys[i], key) == 0)
                        return;
                i = (i + 1) & (m->cap - 1);
        }
        m->keys[i] = key;
        m->vals[i] = val;
}

static int64_t idmap_get(const idmap *m, const char *key) {
        size_t i = str_hash(key) & (m->cap - 1);

        while (m->keys[i]) {
                if (strcmp(m->keys[i], key) == 0)
                        return m->vals[i];
                i = (i + 1) & (m->cap - 1);
        }
        return -1;
}

/* ---- the rows of a peer response ----------------------------------------------------------- */

/* What the peer JSON is written from: the peer rows, each peer's groups
 * (as indexes into the groups rows, by group name), the FQDN suffix and,
 * for the list, the accessible-peers count of each row. */
typedef struct peer_set {
        cp_store_rows *peers;
        cp_store_rows *groups;
        char **group_json;      /* per group: its GroupMinimum object */
        size_t *group_len;
        uint32_t *grp_off;      /* per peer row: its groups are grp[grp_off[i] .. grp_off[i+1]) */
        uint32_t *grp;
        uint32_t *counts;       /* per peer row, or NULL */
        const char *domain;
} peer_set;

static void peer_set_release(peer_set *s) {
        int ng = cp_store_rows_count(s->groups);

        for (int g = 0; s->group_json && g < ng; g++)
                free(s->group_json[g]);
        free(s->group_json);
        free(s->group_len);
        free(s->grp_off);
        free(s->grp);
        free(s->counts);
        s->peers = cp_store_rows_free(s->peers);
        s->groups = cp_store_rows_free(s->groups);
}

static char *group_json(const cp_store_rows *rows, int g) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        cp_strbuf_adds(&sb, "{\"id\":");
        sb_str(&sb, cp_store_rows_get(rows, g, 0));
        cp_strbuf_adds(&sb, ",\"issued\":");
        sb_str(&sb, cp_store_rows_get(rows, g, 2));
        cp_strbuf_adds(&sb, ",\"name\":");
        sb_str(&sb, cp_store_rows_get(rows, g, 1));
        cp_strbuf_adds(&sb, ",\"peers_count\":");
        cp_strbuf_adds(&sb, cp_store_rows_get(rows, g, 3));
        cp_strbuf_adds(&sb, ",\"resources_count\":");
        cp_strbuf_adds(&sb, cp_store_rows_get(rows, g, 4));
        cp_strbuf_adds(&sb, "}");
        return cp_strbuf_detach(&sb);
}

/* Joins the membership rows to peer positions (peers: id -> position,
 * np positions): per position, the indexes of its groups in name order
 * (s->groups is sorted by name). Fills s->grp_off, s->grp and the groups'
 * JSON. */
static void join_groups(peer_set *s, const idmap *peers, size_t np, const cp_store_rows *members) {
        int ng = cp_store_rows_count(s->groups), nm = cp_store_rows_count(members);
        idmap groups;

        idmap_init(&groups, (size_t) ng);
        for (int g = 0; g < ng; g++)
                idmap_put(&groups, cp_store_rows_get(s->groups, g, 0), (uint32_t) g);

        /* Two passes over the memberships: count per peer, then place. */
        int64_t *pi = cp_xmalloc(((size_t) nm + 1) * sizeof *pi), *gi = cp_xmalloc(((size_t) nm + 1) * sizeof *gi);
        s->grp_off = cp_xcalloc(np + 1, sizeof *s->grp_off);
        for (int k = 0; k < nm; k++) {
                pi[k] = idmap_get(peers, cp_store_rows_get(members, k, 0));
                gi[k] = idmap_get(&groups, cp_store_rows_get(members, k, 1));
                if (pi[k] >= 0 && gi[k] >= 0)
                        s->grp_off[pi[k] + 1]++;
        }
        for (size_t i = 0; i < np; i++)
                s->grp_off[i + 1] += s->grp_off[i];
        s->grp = cp_xmalloc(((size_t) s->grp_off[np] + 1) * sizeof *s->grp);
        uint32_t *fill = cp_xcalloc(np + 1, sizeof *fill);
        for (int k = 0; k < nm; k++)
                if (pi[k] >= 0 && gi[k] >= 0)
                        s->grp[s->grp_off[pi[k]] + fill[pi[k]]++] = (uint32_t) gi[k];
        /* A peer is in a handful of groups: insertion sort by name rank. */
        for (size_t i = 0; i < np; i++) {
                uint32_t *v = s->grp + s->grp_off[i], n = s->grp_off[i + 1] - s->grp_off[i];
                for (uint32_t a = 1; a < n; a++)
                        for (uint32_t b = a; b > 0 && v[b - 1] > v[b]; b--) {
                                uint32_t t = v[b];
                                v[b] = v[b - 1];
                                v[b - 1] = t;
                        }
        }
        free(fill);
        free(pi);
        free(gi);
        idmap_release(&groups);

        s->group_json = cp_xcalloc((size_t) ng + 1, sizeof *s->group_json);
        s->group_len = cp_xcalloc((size_t) ng + 1, sizeof *s->group_len);
        for (int g = 0; g < ng; g++) {
                s->group_json[g] = group_json(s->groups, g);
                s->group_len[g] = strlen(s->group_json[g]);
        }
}

/* Reads the peers matching f, their groups, into s. */
static int load_peers(api_ctx *c, const peer_filter *f, const char *domain, peer_set *s) {
        _cleanup_rows_ cp_store_rows *members = NULL;
        const char *p[6] = { c->account_id, f->name, f->ip, f->user_id, f->id, NULL };
        const char *g[2] = { c->account_id, f->id };
        int r;

        s->domain = domain;
        if ((r = api_sql(c, SQL_PEERS, 6, p, &s->peers)) < 0 ||
            (r = api_sql(c, SQL_PEER_GROUPS, 5, p, &members)) < 0 ||
            (r = api_sql(c, SQL_GROUPS, 2, g, &s->groups)) < 0)
                return r;
        int np = cp_store_rows_count(s->peers);
        idmap ids;
        idmap_init(&ids, (size_t) np);
        for (int i = 0; i < np; i++)
                idmap_put(&ids, cp_store_rows_get(s->peers, i, PC_ID), (uint32_t) i);
        join_groups(s, &ids, (size_t) np, members);
        idmap_release(&ids);
        return 0;
}

/* dns_label as NetBird shows it: the FQDN when there is a domain. */
static void w_fqdn(char **w, const char *label, const char *domain) {
        w_ch(w, '"');
        w_escaped(w, label);
        if (*domain) {
                w_ch(w, '.');
                w_escaped(w, domain);
        }
        w_ch(w, '"');
}

/* extra_dns_labels, a text[] literal of [a-z0-9.-] labels ("{a,b}"), each
 * with the domain appended (NetBird's fqdnList, which appends it even
 * when the domain is empty). */
static void w_extra_labels(char **w, const char *arr, const char *domain) {
        const char *p = arr && arr[0] == '{' ? arr + 1 : "}";
        bool first = true;

        w_ch(w, '[');
        while (*p && *p != '}') {
                size_t n = strcspn(p, ",}");
                if (!first)
                        w_ch(w, ',');
                first = false;
                w_ch(w, '"');
                w_add(w, p, n);
                w_ch(w, '.');
                w_escaped(w, domain);
                w_ch(w, '"');
                p += n;
                if (*p == ',')
                        p++;
        }
        w_ch(w, ']');
}

/* PeerLocalFlags from the bit mask (bit i = names[i]). */
static void w_flags(char **w, unsigned long bits) {
        static const struct {
                const char *text;
                size_t len;
        } names[] = {
#define N(s) { s, sizeof(s) - 1 }
                N("{\"block_inbound\":"), N(",\"block_lan_access\":"), N(",\"disable_client_routes\":"),
                N(",\"disable_dns\":"), N(",\"disable_firewall\":"), N(",\"disable_server_routes\":"),
                N(",\"lazy_connection_enabled\":"), N(",\"rosenpass_enabled\":"), N(",\"rosenpass_permissive\":"),
                N(",\"server_ssh_allowed\":"),
#undef N
        };

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                w_add(w, names[i].text, names[i].len);
                w_bool(w, (bits >> i) & 1);
        }
        w_ch(w, '}');
}

static const char *col_str(const cp_store_rows *r, int row, int col) {
        const char *v = cp_store_rows_get(r, row, col);
        return v ? v : "";
}

/* The most the JSON of row i's own columns can take: fixed text, every
 * column escaped at the worst (6 bytes a byte), the domain after the
 * label and after each extra label. */
static size_t row_bound(const cp_store_rows *r, int i, const char *domain) {
        size_t n = 2048, dom = strlen(domain);

        for (int col = 0; col <= PC_FLAGS; col++)
                n += 6 * (size_t) cp_store_rows_len(r, i, col);
        n += 6 * dom * (2 + (size_t) cp_store_rows_len(r, i, PC_EXTRA_LABELS));
        return n;
}

/* The Peer fields before "groups", without the braces: "approval_required"
 * .. "geoname_id" (Go writes fields in alphabetical order). */
static void w_peer_head(char **w, const cp_store_rows *r, int i, const char *domain) {
        /* NetBird's open-source validator validates every peer: never
         * waiting for approval, whatever the stored column says
         * (docs/protocol.md "Peer approval"). */
        bool approval = false;

        W_LIT(w, "\"approval_required\":");
        w_bool(w, approval);
        W_LIT(w, ",\"city_name\":");
        w_str(w, col_str(r, i, PC_CITY));
        W_LIT(w, ",\"connected\":");
        w_bool(w, cp_store_rows_bool(r, i, PC_CONNECTED));
        W_LIT(w, ",\"connection_ip\":");
        w_str(w, col_str(r, i, PC_CONN_IP));
        W_LIT(w, ",\"country_code\":");
        w_str(w, col_str(r, i, PC_COUNTRY));
        W_LIT(w, ",\"created_at\":");
        w_time(w, cp_store_rows_get(r, i, PC_CREATED));
        if (approval)   /* NetBird's open-source validator gives no reason */
                W_LIT(w, ",\"disapproval_reason\":\"\"");
        W_LIT(w, ",\"dns_label\":");
        w_fqdn(w, col_str(r, i, PC_LABEL), domain);
        W_LIT(w, ",\"ephemeral\":");
        w_bool(w, cp_store_rows_bool(r, i, PC_EPHEMERAL));
        W_LIT(w, ",\"extra_dns_labels\":");
        w_extra_labels(w, cp_store_rows_get(r, i, PC_EXTRA_LABELS), domain);
        W_LIT(w, ",\"geoname_id\":");
        w_escaped(w, col_str(r, i, PC_GEONAME));
}

/* The Peer fields after "groups", with the closing brace: "hostname" ..
 * "version". */
static void w_peer_tail(char **w, const cp_store_rows *r, int i) {
        const char *osv = col_str(r, i, PC_OS_VERSION);

        W_LIT(w, "\"hostname\":");
        w_str(w, col_str(r, i, PC_HOSTNAME));
        W_LIT(w, ",\"id\":");
        w_str(w, col_str(r, i, PC_ID));
        W_LIT(w, ",\"inactivity_expiration_enabled\":");
        w_bool(w, cp_store_rows_bool(r, i, PC_INACTIVITY));
        W_LIT(w, ",\"ip\":");
        w_str(w, col_str(r, i, PC_IP));
        if (cp_store_rows_get(r, i, PC_IPV6)) {
                W_LIT(w, ",\"ipv6\":");
                w_str(w, col_str(r, i, PC_IPV6));
        }
        W_LIT(w, ",\"kernel_version\":");
        w_str(w, col_str(r, i, PC_KERNEL_VERSION));
        W_LIT(w, ",\"last_login\":");
        w_time(w, cp_store_rows_get(r, i, PC_LAST_LOGIN));
        W_LIT(w, ",\"last_seen\":");
        w_time(w, cp_store_rows_get(r, i, PC_LAST_SEEN));
        W_LIT(w, ",\"local_flags\":");
        w_flags(w, strtoul(col_str(r, i, PC_FLAGS), NULL, 10));
        W_LIT(w, ",\"login_expiration_enabled\":");
        w_bool(w, cp_store_rows_bool(r, i, PC_LOGIN_EXP));
        W_LIT(w, ",\"login_expired\":");
        w_bool(w, cp_store_rows_bool(r, i, PC_LOGIN_EXPIRED));
        W_LIT(w, ",\"name\":");
        w_str(w, col_str(r, i, PC_NAME));
        /* "<os> <version>", the kernel core when no version (NetBird's
         * format, a lone space included when both are empty). */
        W_LIT(w, ",\"os\":\"");
        w_escaped(w, col_str(r, i, PC_OS));
        w_ch(w, ' ');
        w_escaped(w, *osv ? osv : col_str(r, i, PC_CORE));
        w_ch(w, '"');
        W_LIT(w, ",\"serial_number\":");
        w_str(w, col_str(r, i, PC_SERIAL));
        W_LIT(w, ",\"ssh_enabled\":");
        w_bool(w, cp_store_rows_bool(r, i, PC_SSH));
        W_LIT(w, ",\"ui_version\":");
        w_str(w, col_str(r, i, PC_UI_VERSION));
        W_LIT(w, ",\"user_id\":");
        w_str(w, col_str(r, i, PC_USER));
        W_LIT(w, ",\"version\":");
        w_str(w, col_str(r, i, PC_VERSION));
        w_ch(w, '}');
}

/* The groups of row i: "[GroupMinimum, ...]". */
static void w_groups(char **w, const peer_set *s, int i) {
        w_ch(w, '[');
        for (uint32_t k = s->grp_off[i]; k < s->grp_off[i + 1]; k++) {
                if (k > s->grp_off[i])
                        w_ch(w, ',');
                w_add(w, s->group_json[s->grp[k]], s->group_len[s->grp[k]]);
        }
        w_ch(w, ']');
}

static size_t groups_bound(const peer_set *s, int i) {
        size_t n = 2;

        for (uint32_t k = s->grp_off[i]; k < s->grp_off[i + 1]; k++)
                n += s->group_len[s->grp[k]] + 1;
        return n;
}

static size_t peer_bound(const peer_set *s, int i) {
        return row_bound(s->peers, i, s->domain) + groups_bound(s, i);
}

/* One peer as NetBird's Peer, or PeerBatch when count >= 0. */
static void put_peer(cp_strbuf *sb, const peer_set *s, int i, int64_t count) {
        char *w = w_begin(sb, peer_bound(s, i));

        w_ch(&w, '{');
        if (count >= 0) {
                W_LIT(&w, "\"accessible_peers_count\":");
                w_u64(&w, (uint64_t) count);
                w_ch(&w, ',');
        }
        w_peer_head(&w, s->peers, i, s->domain);
        W_LIT(&w, ",\"groups\":");
        w_groups(&w, s, i);
        w_ch(&w, ',');
        w_peer_tail(&w, s->peers, i);
        w_done(sb, w);
}

/* Replies with the one peer (Peer) of account_info acc; 404 with
 * NetBird's message when it is gone. */
int api_peers__reply_peer(api_ctx *c, const account_info *acc, const char *id) {
        peer_filter f = { .id = id };
        peer_set s = { 0 };
        int r = load_peers(c, &f, acc->domain, &s);

        if (r == 0 && cp_store_rows_count(s.peers) != 1)
                r = api_error(c, 404, "peer not found: %s", id);
        if (r == 0) {
                c->status = 200;
                cp_strbuf_reset(&c->out);
                put_peer(&c->out, &s, 0, -1);
                c->replied = true;
        }
        peer_set_release(&s);
        return r;
}

/* ---- the list from rendered peers ------------------------------------------------------------- *
 *
 * At 25,000 peers the list spends most of its time reading ~30 columns
 * of every peer and writing them out. Between two listings few rows
 * change, and PostgreSQL says which: xmin, the transaction that wrote a
 * row's current version, changes with every UPDATE of it. So the JSON of
 * each peer's own columns is kept per account, keyed by (id, xmin); a
 * listing reads (id, xmin) of every peer and the full rows of only those
 * that are new or changed. Groups and accessible-peer counts change only
 * with the account serial (every change to memberships, groups and
 * policies bumps it), so they are kept per serial and recomputed for all
 * peers when it moves. Only the unfiltered list of a caller who may read
 * every peer uses this; a cache that another request holds is not waited
 * for (that request reads everything itself). */

typedef struct rendered {
        char *id;
        char xmin[16];
        char *head, *tail, *groups;     /* malloc'd; head NULL = no row read yet */
        size_t head_len, tail_len, groups_len;
        uint32_t count;
        int64_t derived;                /* serial of groups and count; -1 = none */
        uint64_t seen;                  /* the listing that last saw it */
} rendered;

/* xmin is a 32-bit transaction id that wraps after 2^32 transactions:
 * an entry older than this is never trusted, so a wrapped id cannot
 * match (no PostgreSQL runs 2^32 transactions in ten minutes). */
#define LIST_MAX_AGE_MS (10 * 60 * 1000)

struct list_cache {
        char account_id[64];
        char domain[256];
        rendered **tab;                 /* by id, open addressing; cap a power of two */
        size_t cap;
        uint64_t gen;                   /* listings made */
        int64_t filled_ms;              /* monotonic time of the last start over */
};

static void rendered_free(rendered *e) {
        free(e->id);
        free(e->head);
        free(e->tail);
        free(e->groups);
        free(e);
}

static list_cache *list_cache_free(list_cache *lc) {
        if (!lc)
                return NULL;
        for (size_t i = 0; i < lc->cap; i++)
                if (lc->tab[i])
                        rendered_free(lc->tab[i]);
        free(lc->tab);
        free(lc);
        return NULL;
}

/* Drops every entry (the domain in every label changed). */
static void lc_clear(list_cache *lc, const char *domain) {
        for (size_t i = 0; i < lc->cap; i++)
                if (lc->tab[i])
                        rendered_free(lc->tab[i]);
        free(lc->tab);
        lc->tab = NULL;
        lc->cap = 0;
        (void) snprintf(lc->domain, sizeof lc->domain, "%s", domain);
        lc->filled_ms = cp_now_mono_ms();
}

static rendered *lc_find(const list_cache *lc, const char *id) {
        if (!lc->cap)
                return NULL;
        for (size_t i = str_hash(id) & (lc->cap - 1);; i = (i + 1) & (lc->cap - 1)) {
                rendered *e = lc->tab[i];
                if (!e || strcmp(e->id, id) == 0)
                        return e;
        }
}

/* Takes the account's list cache for this request, or NULL when another
 * request holds it. */
static list_cache *list_checkout(api_peer_caches *pc, const char *account_id) {
        list_cache *lc = NULL;
        size_t pick = LIST_SLOTS;

        pthread_mutex_lock(&pc->lock);
        for (size_t i = 0; i < LIST_SLOTS; i++) {
                struct list_slot *sl = &pc->list[i];
                if (sl->lc && strcmp(sl->lc->account_id, account_id) == 0) {
                        if (!sl->busy) {
                                sl->busy = true;
                                lc = sl->lc;
                        }
                        pthread_mutex_unlock(&pc->lock);
                        return lc;
                }
                /* Else the slot to use: an empty one, or the least
                 * recently used that nobody holds. */
                if (sl->busy)
                        continue;
                if (!sl->lc) {
                        if (pick == LIST_SLOTS || pc->list[pick].lc)
                                pick = i;
                } else if (pick == LIST_SLOTS || (pc->list[pick].lc && sl->used < pc->list[pick].used))
                        pick = i;
        }
        if (pick < LIST_SLOTS) {
                struct list_slot *sl = &pc->list[pick];
                sl->lc = list_cache_free(sl->lc);
                sl->lc = lc = cp_xcalloc(1, sizeof *lc);
                (void) snprintf(lc->account_id, sizeof lc->account_id, "%s", account_id);
                sl->busy = true;
        }
        pthread_mutex_unlock(&pc->lock);
        return lc;
}

static void list_checkin(api_peer_caches *pc, list_cache *lc) {
        pthread_mutex_lock(&pc->lock);
        for (size_t i = 0; i < LIST_SLOTS; i++)
                if (pc->list[i].lc == lc) {
                        pc->list[i].busy = false;
                        pc->list[i].used = ++pc->clock;
                }
        pthread_mutex_unlock(&pc->lock);
}

static char *dup_range(const char *from, const char *to, size_t *ret_len) {
        size_t n = (size_t) (to - from);
        char *p = cp_xmalloc(n + 1);

        memcpy(p, from, n);
        p[n] = '\0';
        *ret_len = n;
        return p;
}

/* (id, xmin) of every peer of the account, by id: ids begin with their
 * creation time, so the list is in creation order and stable. */
static const char SQL_PEER_VERSIONS[] = "SELECT id, xmin::text FROM peers WHERE account_id = $1 ORDER BY id";

/* Step 1: the listing's peers, by id, as cache entries; the
 * new table holds exactly them (entries of peers gone are freed).
 * *ret_stale gets the ids whose rows must be read (a text[] literal). */
static int list_entries(api_ctx *c, list_cache *lc, rendered ***ret, size_t *ret_n, cp_strbuf *stale,
                        size_t *ret_n_stale) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { c->account_id };
        int r = api_sql(c, SQL_PEER_VERSIONS, 1, p, &rows);

        if (r < 0)
                return r;
        size_t n = (size_t) cp_store_rows_count(rows), n_stale = 0, cap = 16;
        rendered **cur = cp_xcalloc(n + 1, sizeof *cur);
        uint64_t gen = ++lc->gen;

        api_pgarray_begin(stale);
        for (size_t i = 0; i < n; i++) {
                const char *id = cp_store_rows_get(rows, (int) i, 0), *xmin = cp_store_rows_get(rows, (int) i, 1);
                rendered *e = lc_find(lc, id);
                if (!e) {
                        e = cp_xcalloc(1, sizeof *e);
                        e->id = cp_xstrdup(id);
                        e->derived = -1;
                }
                if (!e->head || strcmp(e->xmin, xmin) != 0) {
                        api_pgarray_add(stale, id);
                        n_stale++;
                }
                e->seen = gen;
                cur[i] = e;
        }
        api_pgarray_end(stale);

        /* The new table: this listing's entries only. */
        for (size_t i = 0; i < lc->cap; i++)
                if (lc->tab[i] && lc->tab[i]->seen != gen)
                        rendered_free(lc->tab[i]);
        free(lc->tab);
        while (cap < 2 * n)
                cap *= 2;
        lc->tab = cp_xcalloc(cap, sizeof *lc->tab);
        lc->cap = cap;
        for (size_t i = 0; i < n; i++) {
                size_t k = str_hash(cur[i]->id) & (cap - 1);
                while (lc->tab[k])
                        k = (k + 1) & (cap - 1);
                lc->tab[k] = cur[i];
        }
        *ret = cur;
        *ret_n = n;
        *ret_n_stale = n_stale;
        return 0;
}

/* Step 2: reads and renders the rows of the stale entries (all rows when
 * most are stale: one scan beats a long id list). A row that changed
 * again meanwhile is rendered as read, with its new xmin. */
static int list_render(api_ctx *c, list_cache *lc, const char *domain, const char *stale, size_t n_stale,
                       size_t n) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        bool all = n_stale * 4 > n;
        const char *p[6] = { c->account_id, NULL, NULL, NULL, NULL, all ? NULL : stale };
        cp_strbuf tmp;
        int r;

        if (n_stale == 0)
                return 0;
        r = api_sql(c, SQL_PEERS, 6, p, &rows);
        if (r < 0)
                return r;
        cp_strbuf_init(&tmp);
        for (int i = 0; i < cp_store_rows_count(rows); i++) {
                rendered *e = lc_find(lc, cp_store_rows_get(rows, i, PC_ID));
                if (!e || (all && e->head && strcmp(e->xmin, col_str(rows, i, PC_XMIN)) == 0))
                        continue;       /* not listed, or listed and current */
                cp_strbuf_reset(&tmp);
                char *start = w_begin(&tmp, row_bound(rows, i, domain)), *w = start, *mid;
                w_peer_head(&w, rows, i, domain);
                mid = w;
                w_peer_tail(&w, rows, i);
                free(e->head);
                free(e->tail);
                e->head = dup_range(start, mid, &e->head_len);
                e->tail = dup_range(mid, w, &e->tail_len);
                (void) snprintf(e->xmin, sizeof e->xmin, "%s", col_str(rows, i, PC_XMIN));
        }
        cp_strbuf_release(&tmp);
        return 0;
}

/* Step 3: groups and counts of every listed peer, when the serial moved
 * (or a peer has none yet). */
static int list_derive(api_ctx *c, const account_info *acc, rendered **cur, size_t n) {
        _cleanup_rows_ cp_store_rows *members = NULL;
        const char *p[5] = { c->account_id, NULL, NULL, NULL, NULL }, *g[2] = { c->account_id, NULL };
        cp_netmap_account *a = NULL;
        peer_set s = { .domain = acc->domain };
        bool need = false;
        idmap ids;
        int r;

        for (size_t i = 0; i < n && !need; i++)
                need = cur[i]->derived != acc->serial;
        if (!need)
                return 0;
        if ((r = api_sql(c, SQL_PEER_GROUPS, 5, p, &members)) < 0 ||
            (r = api_sql(c, SQL_GROUPS, 2, g, &s.groups)) < 0 || (r = api_peers__snapshot(c, acc, &a)) < 0) {
                peer_set_release(&s);
                return r;
        }
        idmap_init(&ids, n);
        for (size_t i = 0; i < n; i++)
                idmap_put(&ids, cur[i]->id, (uint32_t) i);
        join_groups(&s, &ids, n, members);
        idmap_release(&ids);

        size_t np = cp_netmap_account_n_peers(a);
        uint32_t *all = cp_xcalloc(np + 1, sizeof *all);
        cp_netmap_worker *w = cp_netmap_worker_new();
        r = cp_netmap_visible_counts(w, a, all);
        cp_netmap_worker_free(w);
        cp_strbuf tmp;
        cp_strbuf_init(&tmp);
        for (size_t i = 0; r == 0 && i < n; i++) {
                rendered *e = cur[i];
                int64_t k = cp_netmap_account_find_peer(a, e->id);
                e->count = k >= 0 ? all[k] : 0;
                cp_strbuf_reset(&tmp);
                char *start = w_begin(&tmp, groups_bound(&s, (int) i)), *wp = start;
                w_groups(&wp, &s, (int) i);
                free(e->groups);
                e->groups = dup_range(start, wp, &e->groups_len);
                e->derived = acc->serial;
        }
        cp_strbuf_release(&tmp);
        free(all);
        cp_netmap_account_unref(a);
        peer_set_release(&s);
        if (r < 0)
                return api_internal(c, "counting accessible peers", NULL);
        return 0;
}

/* The unfiltered list from lc. */
static int list_rendered(api_ctx *c, const account_info *acc, list_cache *lc) {
        rendered **cur = NULL;
        size_t n = 0, n_stale = 0;
        cp_strbuf stale;
        int r;

        /* Every label shows the domain: a new one starts over. */
        if (strcmp(lc->domain, acc->domain) != 0 || !lc->tab ||
            cp_now_mono_ms() - lc->filled_ms > LIST_MAX_AGE_MS)
                lc_clear(lc, acc->domain);
        cp_strbuf_init(&stale);
        r = list_entries(c, lc, &cur, &n, &stale, &n_stale);
        if (r == 0)
                r = list_render(c, lc, acc->domain, stale.buf, n_stale, n);
        if (r == 0)
                r = list_derive(c, acc, cur, n);
        if (r == 0) {
                size_t need = 2;
                for (size_t i = 0; i < n; i++)
                        need += cur[i]->head_len + cur[i]->groups_len + cur[i]->tail_len + 64;
                char *w = w_begin(&c->out, need);
                bool first = true;
                w_ch(&w, '[');
                for (size_t i = 0; i < n; i++) {
                        rendered *e = cur[i];
                        if (!e->head)
                                continue;       /* deleted before its row was read */
                        if (!first)
                                w_ch(&w, ',');
                        first = false;
                        W_LIT(&w, "{\"accessible_peers_count\":");
                        w_u64(&w, e->count);
                        w_ch(&w, ',');
                        w_add(&w, e->head, e->head_len);
                        W_LIT(&w, ",\"groups\":");
                        w_add(&w, e->groups, e->groups_len);
                        w_ch(&w, ',');
                        w_add(&w, e->tail, e->tail_len);
                }
                w_ch(&w, ']');
                w_done(&c->out, w);
                c->status = 200;
                c->replied = true;
        }
        free(cur);
        cp_strbuf_release(&stale);
        return r;
}

/* accessible_peers_count of every row, from one snapshot. */
static int count_accessible(api_ctx *c, const account_info *acc, peer_set *s) {
        int np = cp_store_rows_count(s->peers);
        cp_netmap_account *a = NULL;
        int r;

        s->counts = cp_xcalloc((size_t) np + 1, sizeof *s->counts);
        if (np == 0)
                return 0;
        r = api_peers__snapshot(c, acc, &a);
        if (r < 0)
                return r;
        size_t n = cp_netmap_account_n_peers(a);
        uint32_t *all = cp_xcalloc(n + 1, sizeof *all);
        cp_netmap_worker *w = cp_netmap_worker_new();
        r = cp_netmap_visible_counts(w, a, all);
        if (r == 0)
                for (int i = 0; i < np; i++) {
                        /* A peer registered after the snapshot was read
                         * reaches nobody yet: 0. */
                        int64_t k = cp_netmap_account_find_peer(a, cp_store_rows_get(s->peers, i, PC_ID));
                        s->counts[i] = k >= 0 ? all[k] : 0;
                }
        cp_netmap_worker_free(w);
        free(all);
        cp_netmap_account_unref(a);
        if (r < 0)
                return api_internal(c, "counting accessible peers", NULL);
        return 0;
}

/* ---- the list ---------------------------------------------------------------------------------- */

int api_peers__list(api_ctx *c, const account_info *acc, const peer_filter *f) {
        peer_set s = { 0 };
        int r;

        if (!f->name && !f->ip && !f->user_id) {
                list_cache *lc = list_checkout(c->api->peer_caches, c->account_id);
                if (lc) {
                        r = list_rendered(c, acc, lc);
                        list_checkin(c->api->peer_caches, lc);
                        return r;
                }
        }
        r = load_peers(c, f, acc->domain, &s);
        if (r == 0)
                r = count_accessible(c, acc, &s);
        if (r == 0) {
                int np = cp_store_rows_count(s.peers);
                c->status = 200;
                cp_strbuf_reset(&c->out);
                /* One allocation up front for the worst case (pages
                 * never written are never touched). */
                size_t need = 2;
                for (int i = 0; i < np; i++)
                        need += peer_bound(&s, i) + 1;
                cp_strbuf_grow(&c->out, need);
                cp_strbuf_addch(&c->out, '[');
                for (int i = 0; i < np; i++) {
                        if (i)
                                cp_strbuf_addch(&c->out, ',');
                        put_peer(&c->out, &s, i, s.counts[i]);
                }
                cp_strbuf_addch(&c->out, ']');
                c->replied = true;
        }
        peer_set_release(&s);
        return r;
}
