/*
 * /api/peers: list (?name=, ?ip=), get, update, delete, accessible-peers
 * (openapi Peer, PeerBatch, PeerRequest, AccessiblePeer; NetBird's
 * handlers/peers/peers_handler.go and server/peer.go).
 *
 * The peer JSON is written here in C from plain columns rather than by
 * PostgreSQL's json functions: the list must stay fast at 25,000 peers,
 * and json_build_object over ~35 fields costs several microseconds a row
 * in the database, more than reading the columns and writing the text.
 *
 * What a peer can reach (accessible-peers, accessible_peers_count) comes
 * from the network maps themselves: a common/netmap snapshot of the
 * account, the one the Sync path encodes maps from, never a second policy
 * evaluator. The list needs one snapshot per request; loading one costs
 * about as much as the list itself at 25,000 peers, so the newest few are
 * kept (api_snapshots, keyed by account and serial) and loaded, on a miss,
 * inside the request's own transaction: a handler already holds a pooled
 * connection and must never wait for a second one.
 *
 * Regular users (NetBird's GetPeers / GetPeer / GetAccessiblePeers): the
 * read routes are API_MOD_SELF and the handlers decide with the Peers
 * module's read permission, as NetBird's managers do; update and delete
 * are plain API_MOD_PEERS routes.
 */
#include "api-activity.h"
#include "api-int.h"
#include "cp/netmap.h"
#include "cp/store-peers.h"

#include <arpa/inet.h>
#include <pthread.h>

/* ---- snapshots of the account's maps ---------------------------------------------------- */

/* A few recently used snapshots, one per account at most. Each holds a
 * reference; a newer serial replaces an older one of the same account,
 * a new account takes the least recently used slot. About 1 KB per peer
 * (22 MB at 25,000 peers). */
#define SNAPSHOT_SLOTS 8

struct api_snapshots {
        pthread_mutex_t lock;
        struct snapshot_slot {
                cp_netmap_account *a;
                uint64_t used;
        } slot[SNAPSHOT_SLOTS];
        uint64_t clock;
};

api_snapshots *api_snapshots_new(void) {
        api_snapshots *s = cp_xcalloc(1, sizeof *s);

        pthread_mutex_init(&s->lock, NULL);
        return s;
}

api_snapshots *api_snapshots_free(api_snapshots *s) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < SNAPSHOT_SLOTS; i++)
                (void) cp_netmap_account_unref(s->slot[i].a);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
}

/* A new reference to the cached snapshot of account_id at serial or
 * newer, or NULL. */
static cp_netmap_account *snapshots_get(api_snapshots *s, const char *account_id, int64_t serial) {
        cp_netmap_account *found = NULL;

        pthread_mutex_lock(&s->lock);
        for (size_t i = 0; i < SNAPSHOT_SLOTS && !found; i++) {
                cp_netmap_account *a = s->slot[i].a;
                if (a && strcmp(cp_netmap_account_id(a), account_id) == 0 &&
                    cp_netmap_account_serial(a) >= (uint64_t) serial) {
                        found = cp_netmap_account_ref(a);
                        s->slot[i].used = ++s->clock;
                }
        }
        pthread_mutex_unlock(&s->lock);
        return found;
}

/* Keeps a (takes a reference of its own). */
static void snapshots_put(api_snapshots *s, cp_netmap_account *a) {
        size_t pick = SNAPSHOT_SLOTS;

        pthread_mutex_lock(&s->lock);
        for (size_t i = 0; i < SNAPSHOT_SLOTS && pick == SNAPSHOT_SLOTS; i++) {
                cp_netmap_account *o = s->slot[i].a;
                if (o && strcmp(cp_netmap_account_id(o), cp_netmap_account_id(a)) == 0)
                        pick = i;
        }
        if (pick < SNAPSHOT_SLOTS &&
            cp_netmap_account_serial(s->slot[pick].a) > cp_netmap_account_serial(a))
                pick = SNAPSHOT_SLOTS + 1;      /* ours is older: keep the cached one */
        if (pick == SNAPSHOT_SLOTS) {
                pick = 0;
                for (size_t i = 0; i < SNAPSHOT_SLOTS; i++) {
                        if (!s->slot[i].a) {
                                pick = i;
                                break;
                        }
                        if (s->slot[i].used < s->slot[pick].used)
                                pick = i;
                }
        }
        if (pick < SNAPSHOT_SLOTS) {
                (void) cp_netmap_account_unref(s->slot[pick].a);
                s->slot[pick].a = cp_netmap_account_ref(a);
                s->slot[pick].used = ++s->clock;
        }
        pthread_mutex_unlock(&s->lock);
}

/* ---- the account ----------------------------------------------------------------------- */

typedef struct account_info {
        int64_t serial;
        char domain[256];               /* the FQDN suffix: the account's or the server's */
        char network[64];               /* network_net, "100.64.0.0/16" */
        bool view_blocked;              /* settings_regular_users_view_blocked */
        bool has_v6;                    /* network_net_v6 is set */
} account_info;

static const char SQL_ACCOUNT[] =
        "SELECT network_serial, settings_dns_domain, settings_regular_users_view_blocked, network_net::text,"
        " network_net_v6 IS NOT NULL FROM accounts WHERE id = $1";

static int load_account(api_ctx *c, account_info *ret) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { c->account_id };
        int r = api_sql(c, SQL_ACCOUNT, 1, p, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return api_internal(c, "the caller's account is gone", NULL);
        const char *dom = cp_store_rows_get(rows, 0, 1);
        ret->serial = strtoll(cp_store_rows_get(rows, 0, 0), NULL, 10);
        (void) snprintf(ret->domain, sizeof ret->domain, "%s", dom && *dom ? dom : c->api->dns_domain);
        ret->view_blocked = strcmp(cp_store_rows_get(rows, 0, 2), "t") == 0;
        (void) snprintf(ret->network, sizeof ret->network, "%s", cp_store_rows_get(rows, 0, 3));
        ret->has_v6 = strcmp(cp_store_rows_get(rows, 0, 4), "t") == 0;
        return 0;
}

/* The account's snapshot at acc->serial or newer: cached, or loaded in
 * the request's transaction. *ret is a new reference. */
static int snapshot(api_ctx *c, const account_info *acc, cp_netmap_account **ret) {
        cp_error err = { 0 };
        cp_netmap_account *a = snapshots_get(c->api->snapshots, c->account_id, acc->serial);

        if (!a) {
                int r = cp_netmap_load_tx(c->tx, c->account_id, c->api->dns_domain, &a, &err);
                if (r < 0)
                        return api_internal(c, "loading the network map", &err);
                snapshots_put(c->api->snapshots, a);
        }
        *ret = a;
        return 0;
}

/* ---- who may see which peer ------------------------------------------------------------- */

/* NetBird's User.IsRestrictable(): the roles whose view the account
 * setting "regular users view blocked" empties. */
static bool restrictable(const api_ctx *c) {
        return strcmp(c->role, "user") == 0 || strcmp(c->role, "billing_admin") == 0;
}

static bool may_read_all(const api_ctx *c) {
        return api_allowed(c, API_MOD_PEERS, API_READ);
}

/* ---- writing JSON ------------------------------------------------------------------------ */

#define ADD_LIT(sb, s) cp_strbuf_add((sb), (s), sizeof(s) - 1)

/* The escaped bytes of s (no quotes): runs of plain bytes are copied at
 * once. */
static void put_escaped(cp_strbuf *sb, const char *s) {
        static const char hex[] = "0123456789abcdef";
        const char *run = s;

        for (const char *p = s; *p; p++) {
                unsigned char ch = (unsigned char) *p;
                if (ch >= 0x20 && ch != '"' && ch != '\\')
                        continue;
                cp_strbuf_add(sb, run, (size_t) (p - run));
                run = p + 1;
                switch (ch) {
                case '"': ADD_LIT(sb, "\\\""); break;
                case '\\': ADD_LIT(sb, "\\\\"); break;
                case '\n': ADD_LIT(sb, "\\n"); break;
                case '\r': ADD_LIT(sb, "\\r"); break;
                case '\t': ADD_LIT(sb, "\\t"); break;
                default: {
                        char u[6] = { '\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15] };
                        cp_strbuf_add(sb, u, sizeof u);
                }
                }
        }
        cp_strbuf_add(sb, run, strlen(run));
}

/* A JSON string. */
static void put_str(cp_strbuf *sb, const char *s) {
        cp_strbuf_addch(sb, '"');
        put_escaped(sb, s);
        cp_strbuf_addch(sb, '"');
}

static void put_u64(cp_strbuf *sb, uint64_t v) {
        char tmp[24], *p = tmp + sizeof tmp;

        do {
                *--p = (char) ('0' + v % 10);
                v /= 10;
        } while (v);
        cp_strbuf_add(sb, p, (size_t) (tmp + sizeof tmp - p));
}

static void put_bool(cp_strbuf *sb, bool v) {
        if (v)
                ADD_LIT(sb, "true");
        else
                ADD_LIT(sb, "false");
}

static void put_digits(char *p, unsigned v, int n) {
        while (n-- > 0) {
                p[n] = (char) ('0' + v % 10);
                v /= 10;
        }
}

/* A time as Go's encoding/json writes a time.Time (RFC 3339 in UTC,
 * fractional seconds without trailing zeros): from microseconds since
 * the Unix epoch as text, or Go's zero time for NULL. Days to a civil
 * date after H. Hinnant's days_from_civil inverse, no libc on the way:
 * the list formats three of these per peer. */
static void put_time(cp_strbuf *sb, const char *us_text) {
        if (!us_text) {
                ADD_LIT(sb, "\"0001-01-01T00:00:00Z\"");
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
                ADD_LIT(sb, "\"0001-01-01T00:00:00Z\"");
                return;
        }

        char b[32];
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
        cp_strbuf_add(sb, b, n);
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
        FLAG_BIT("ServerSSHAllowed", 9)
        " FROM peers p WHERE p.account_id = $1"
        /* filters, each off when NULL: name, ip (substring), owner, id */
        " AND ($2::text IS NULL OR strpos(p.name, $2) > 0)"
        " AND ($3::text IS NULL OR strpos(host(p.ip), $3) > 0 OR strpos(COALESCE(host(p.ipv6), ''), $3) > 0)"
        " AND ($4::text IS NULL OR p.user_id = $4)"
        " AND ($5::text IS NULL OR p.id = $5)";

enum pcol {
        PC_ID, PC_NAME, PC_IP, PC_IPV6, PC_CONN_IP, PC_CONNECTED, PC_LAST_SEEN, PC_OS, PC_OS_VERSION, PC_CORE,
        PC_KERNEL_VERSION, PC_GEONAME, PC_VERSION, PC_SSH, PC_HOSTNAME, PC_USER, PC_UI_VERSION, PC_LABEL,
        PC_EXTRA_LABELS, PC_LOGIN_EXP, PC_LAST_LOGIN, PC_LOGIN_EXPIRED, PC_APPROVAL, PC_COUNTRY, PC_CITY,
        PC_SERIAL, PC_INACTIVITY, PC_EPHEMERAL, PC_CREATED, PC_FLAGS,
};

/* The group memberships of the same peers ($1..$5 as in SQL_PEERS). */
static const char SQL_PEER_GROUPS[] =
        "SELECT gp.peer_id, gp.group_id FROM group_peers gp WHERE gp.account_id = $1"
        " AND (($2::text IS NULL AND $3::text IS NULL AND $4::text IS NULL AND $5::text IS NULL)"
        " OR gp.peer_id IN (SELECT p.id FROM peers p WHERE p.account_id = $1"
        " AND ($2::text IS NULL OR strpos(p.name, $2) > 0)"
        " AND ($3::text IS NULL OR strpos(host(p.ip), $3) > 0 OR strpos(COALESCE(host(p.ipv6), ''), $3) > 0)"
        " AND ($4::text IS NULL OR p.user_id = $4)"
        " AND ($5::text IS NULL OR p.id = $5)))";

/* The account's groups (GroupMinimum), by name; $2 = only the groups of
 * that peer (NULL = all). */
static const char SQL_GROUPS[] =
        "SELECT g.id, g.name, g.issued, (SELECT count(*) FROM group_peers gp WHERE gp.account_id = g.account_id"
        " AND gp.group_id = g.id) FROM groups g WHERE g.account_id = $1"
        " AND ($2::text IS NULL OR g.id IN (SELECT gp.group_id FROM group_peers gp WHERE gp.account_id = $1"
        " AND gp.peer_id = $2)) ORDER BY g.name, g.id";

typedef struct peer_filter {
        const char *name;
        const char *ip;
        const char *user_id;
        const char *id;
} peer_filter;

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
        free(s->grp_off);
        free(s->grp);
        free(s->counts);
        s->peers = cp_store_rows_free(s->peers);
        s->groups = cp_store_rows_free(s->groups);
}

static char *group_json(const cp_store_rows *rows, int g) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        ADD_LIT(&sb, "{\"id\":");
        put_str(&sb, cp_store_rows_get(rows, g, 0));
        ADD_LIT(&sb, ",\"issued\":");
        put_str(&sb, cp_store_rows_get(rows, g, 2));
        ADD_LIT(&sb, ",\"name\":");
        put_str(&sb, cp_store_rows_get(rows, g, 1));
        ADD_LIT(&sb, ",\"peers_count\":");
        cp_strbuf_adds(&sb, cp_store_rows_get(rows, g, 3));
        ADD_LIT(&sb, ",\"resources_count\":0}");
        return cp_strbuf_detach(&sb);
}

/* Joins the membership rows to the peer rows: per peer, the indexes of
 * its groups in name order (the groups rows are sorted by name). */
static void join_groups(peer_set *s, const cp_store_rows *members) {
        int np = cp_store_rows_count(s->peers), ng = cp_store_rows_count(s->groups);
        int nm = cp_store_rows_count(members);
        idmap peers, groups;

        idmap_init(&peers, (size_t) np);
        idmap_init(&groups, (size_t) ng);
        for (int i = 0; i < np; i++)
                idmap_put(&peers, cp_store_rows_get(s->peers, i, PC_ID), (uint32_t) i);
        for (int g = 0; g < ng; g++)
                idmap_put(&groups, cp_store_rows_get(s->groups, g, 0), (uint32_t) g);

        /* Two passes over the memberships: count per peer, then place. */
        int64_t *pi = cp_xmalloc(((size_t) nm + 1) * sizeof *pi), *gi = cp_xmalloc(((size_t) nm + 1) * sizeof *gi);
        s->grp_off = cp_xcalloc((size_t) np + 1, sizeof *s->grp_off);
        for (int k = 0; k < nm; k++) {
                pi[k] = idmap_get(&peers, cp_store_rows_get(members, k, 0));
                gi[k] = idmap_get(&groups, cp_store_rows_get(members, k, 1));
                if (pi[k] >= 0 && gi[k] >= 0)
                        s->grp_off[pi[k] + 1]++;
        }
        for (int i = 0; i < np; i++)
                s->grp_off[i + 1] += s->grp_off[i];
        s->grp = cp_xmalloc(((size_t) s->grp_off[np] + 1) * sizeof *s->grp);
        uint32_t *fill = cp_xcalloc((size_t) np + 1, sizeof *fill);
        for (int k = 0; k < nm; k++)
                if (pi[k] >= 0 && gi[k] >= 0)
                        s->grp[s->grp_off[pi[k]] + fill[pi[k]]++] = (uint32_t) gi[k];
        /* A peer is in a handful of groups: insertion sort by name rank. */
        for (int i = 0; i < np; i++) {
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
        idmap_release(&peers);
        idmap_release(&groups);

        s->group_json = cp_xcalloc((size_t) ng + 1, sizeof *s->group_json);
        for (int g = 0; g < ng; g++)
                s->group_json[g] = group_json(s->groups, g);
}

/* Reads the peers matching f, their groups, into s. */
static int load_peers(api_ctx *c, const peer_filter *f, const char *domain, peer_set *s) {
        _cleanup_rows_ cp_store_rows *members = NULL;
        const char *p[5] = { c->account_id, f->name, f->ip, f->user_id, f->id };
        const char *g[2] = { c->account_id, f->id };
        int r;

        s->domain = domain;
        if ((r = api_sql(c, SQL_PEERS, 5, p, &s->peers)) < 0 ||
            (r = api_sql(c, SQL_PEER_GROUPS, 5, p, &members)) < 0 ||
            (r = api_sql(c, SQL_GROUPS, 2, g, &s->groups)) < 0)
                return r;
        join_groups(s, members);
        return 0;
}

/* dns_label as NetBird shows it: the FQDN when there is a domain. */
static void put_fqdn(cp_strbuf *sb, const char *label, const char *domain) {
        if (!*domain) {
                put_str(sb, label);
                return;
        }
        cp_strbuf_addch(sb, '"');
        cp_strbuf_adds(sb, label);      /* labels are [a-z0-9-] */
        cp_strbuf_addch(sb, '.');
        cp_strbuf_adds(sb, domain);
        cp_strbuf_addch(sb, '"');
}

/* extra_dns_labels, a text[] literal of [a-z0-9.-] labels ("{a,b}"), each
 * with the domain appended (NetBird's fqdnList, which appends it even
 * when the domain is empty). */
static void put_extra_labels(cp_strbuf *sb, const char *arr, const char *domain) {
        const char *p = arr && arr[0] == '{' ? arr + 1 : "}";
        bool first = true;

        cp_strbuf_addch(sb, '[');
        while (*p && *p != '}') {
                size_t n = strcspn(p, ",}");
                if (!first)
                        cp_strbuf_addch(sb, ',');
                first = false;
                cp_strbuf_addch(sb, '"');
                cp_strbuf_add(sb, p, n);
                cp_strbuf_addch(sb, '.');
                cp_strbuf_adds(sb, domain);
                cp_strbuf_addch(sb, '"');
                p += n;
                if (*p == ',')
                        p++;
        }
        cp_strbuf_addch(sb, ']');
}

static void put_flags(cp_strbuf *sb, unsigned long bits) {
        static const char *const names[] = {
                "block_inbound", "block_lan_access", "disable_client_routes", "disable_dns",
                "disable_firewall", "disable_server_routes", "lazy_connection_enabled",
                "rosenpass_enabled", "rosenpass_permissive", "server_ssh_allowed",
        };

        cp_strbuf_addch(sb, '{');
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                if (i)
                        cp_strbuf_addch(sb, ',');
                cp_strbuf_addch(sb, '"');
                cp_strbuf_adds(sb, names[i]);
                ADD_LIT(sb, "\":");
                put_bool(sb, (bits >> i) & 1);
        }
        cp_strbuf_addch(sb, '}');
}

static bool col_bool(const cp_store_rows *r, int row, int col) {
        const char *v = cp_store_rows_get(r, row, col);
        return v && v[0] == 't';
}

static const char *col_str(const cp_store_rows *r, int row, int col) {
        const char *v = cp_store_rows_get(r, row, col);
        return v ? v : "";
}

/* One peer as NetBird's Peer, or PeerBatch when count >= 0 (fields in
 * the order Go writes them: alphabetical). */
static void put_peer(cp_strbuf *sb, const peer_set *s, int i, int64_t count) {
        const cp_store_rows *r = s->peers;
        bool approval = col_bool(r, i, PC_APPROVAL);
        const char *osv = col_str(r, i, PC_OS_VERSION);

        cp_strbuf_addch(sb, '{');
        if (count >= 0) {
                ADD_LIT(sb, "\"accessible_peers_count\":");
                put_u64(sb, (uint64_t) count);
                cp_strbuf_addch(sb, ',');
        }
        ADD_LIT(sb, "\"approval_required\":");
        put_bool(sb, approval);
        ADD_LIT(sb, ",\"city_name\":");
        put_str(sb, col_str(r, i, PC_CITY));
        ADD_LIT(sb, ",\"connected\":");
        put_bool(sb, col_bool(r, i, PC_CONNECTED));
        ADD_LIT(sb, ",\"connection_ip\":");
        put_str(sb, col_str(r, i, PC_CONN_IP));
        ADD_LIT(sb, ",\"country_code\":");
        put_str(sb, col_str(r, i, PC_COUNTRY));
        ADD_LIT(sb, ",\"created_at\":");
        put_time(sb, cp_store_rows_get(r, i, PC_CREATED));
        if (approval)   /* NetBird's open-source validator gives no reason */
                ADD_LIT(sb, ",\"disapproval_reason\":\"\"");
        ADD_LIT(sb, ",\"dns_label\":");
        put_fqdn(sb, col_str(r, i, PC_LABEL), s->domain);
        ADD_LIT(sb, ",\"ephemeral\":");
        put_bool(sb, col_bool(r, i, PC_EPHEMERAL));
        ADD_LIT(sb, ",\"extra_dns_labels\":");
        put_extra_labels(sb, cp_store_rows_get(r, i, PC_EXTRA_LABELS), s->domain);
        ADD_LIT(sb, ",\"geoname_id\":");
        cp_strbuf_adds(sb, col_str(r, i, PC_GEONAME));
        ADD_LIT(sb, ",\"groups\":[");
        for (uint32_t k = s->grp_off[i]; k < s->grp_off[i + 1]; k++) {
                if (k > s->grp_off[i])
                        cp_strbuf_addch(sb, ',');
                cp_strbuf_adds(sb, s->group_json[s->grp[k]]);
        }
        ADD_LIT(sb, "],\"hostname\":");
        put_str(sb, col_str(r, i, PC_HOSTNAME));
        ADD_LIT(sb, ",\"id\":");
        put_str(sb, col_str(r, i, PC_ID));
        ADD_LIT(sb, ",\"inactivity_expiration_enabled\":");
        put_bool(sb, col_bool(r, i, PC_INACTIVITY));
        ADD_LIT(sb, ",\"ip\":");
        put_str(sb, col_str(r, i, PC_IP));
        if (cp_store_rows_get(r, i, PC_IPV6)) {
                ADD_LIT(sb, ",\"ipv6\":");
                put_str(sb, col_str(r, i, PC_IPV6));
        }
        ADD_LIT(sb, ",\"kernel_version\":");
        put_str(sb, col_str(r, i, PC_KERNEL_VERSION));
        ADD_LIT(sb, ",\"last_login\":");
        put_time(sb, cp_store_rows_get(r, i, PC_LAST_LOGIN));
        ADD_LIT(sb, ",\"last_seen\":");
        put_time(sb, cp_store_rows_get(r, i, PC_LAST_SEEN));
        ADD_LIT(sb, ",\"local_flags\":");
        put_flags(sb, strtoul(col_str(r, i, PC_FLAGS), NULL, 10));
        ADD_LIT(sb, ",\"login_expiration_enabled\":");
        put_bool(sb, col_bool(r, i, PC_LOGIN_EXP));
        ADD_LIT(sb, ",\"login_expired\":");
        put_bool(sb, col_bool(r, i, PC_LOGIN_EXPIRED));
        ADD_LIT(sb, ",\"name\":");
        put_str(sb, col_str(r, i, PC_NAME));
        /* "<os> <version>", the kernel core when no version (NetBird's
         * format, a lone space included when both are empty). */
        ADD_LIT(sb, ",\"os\":\"");
        put_escaped(sb, col_str(r, i, PC_OS));
        cp_strbuf_addch(sb, ' ');
        put_escaped(sb, *osv ? osv : col_str(r, i, PC_CORE));
        cp_strbuf_addch(sb, '"');
        ADD_LIT(sb, ",\"serial_number\":");
        put_str(sb, col_str(r, i, PC_SERIAL));
        ADD_LIT(sb, ",\"ssh_enabled\":");
        put_bool(sb, col_bool(r, i, PC_SSH));
        ADD_LIT(sb, ",\"ui_version\":");
        put_str(sb, col_str(r, i, PC_UI_VERSION));
        ADD_LIT(sb, ",\"user_id\":");
        put_str(sb, col_str(r, i, PC_USER));
        ADD_LIT(sb, ",\"version\":");
        put_str(sb, col_str(r, i, PC_VERSION));
        cp_strbuf_addch(sb, '}');
}

/* Replies with the one peer (Peer) of account_info acc; 404 with
 * NetBird's message when it is gone. */
static int reply_peer(api_ctx *c, const account_info *acc, const char *id) {
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

/* ---- GET /api/peers ----------------------------------------------------------------------------- */

/* accessible_peers_count of every row, from one snapshot. */
static int count_accessible(api_ctx *c, const account_info *acc, peer_set *s) {
        int np = cp_store_rows_count(s->peers);
        cp_netmap_account *a = NULL;
        int r;

        s->counts = cp_xcalloc((size_t) np + 1, sizeof *s->counts);
        if (np == 0)
                return 0;
        r = snapshot(c, acc, &a);
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

static int list_peers(api_ctx *c) {
        const char *name = api_query(c, "name"), *ip = api_query(c, "ip");
        peer_filter f = { .name = name && *name ? name : NULL, .ip = ip && *ip ? ip : NULL };
        account_info acc;
        peer_set s = { 0 };
        int r;

        r = load_account(c, &acc);
        if (r < 0)
                return r;
        if (!may_read_all(c)) {
                /* NetBird's GetPeers: a restrictable user sees nothing when
                 * the account blocks the view, else the peers they own. */
                if (restrictable(c) && acc.view_blocked)
                        return api_reply_text(c, 200, "[]", 2);
                f.user_id = c->user_id;
        }
        r = load_peers(c, &f, acc.domain, &s);
        if (r == 0)
                r = count_accessible(c, &acc, &s);
        if (r == 0) {
                int np = cp_store_rows_count(s.peers);
                c->status = 200;
                cp_strbuf_reset(&c->out);
                /* About 1.1 KB a peer: one allocation up front. */
                cp_strbuf_grow(&c->out, (size_t) np * 1280 + 2);
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

/* ---- GET /api/peers/{peerId} -------------------------------------------------------------------- */

typedef struct peer_row {
        char id[64];
        char name[256];
        char label[CP_STORE_DNS_LABEL_MAX + 1];
        char ip[INET6_ADDRSTRLEN];
        char user_id[128];
        bool ssh_enabled;
        bool login_expiration_enabled;
        bool inactivity_expiration_enabled;
        bool requires_approval;
} peer_row;

static const char SQL_FIND[] =
        "SELECT id, name, dns_label, host(ip), COALESCE(user_id, ''), ssh_enabled, login_expiration_enabled,"
        " inactivity_expiration_enabled, peer_status_requires_approval"
        " FROM peers WHERE account_id = $1 AND id = $2";
static const char SQL_FIND_FOR_UPDATE[] =
        "SELECT id, name, dns_label, host(ip), COALESCE(user_id, ''), ssh_enabled, login_expiration_enabled,"
        " inactivity_expiration_enabled, peer_status_requires_approval"
        " FROM peers WHERE account_id = $1 AND id = $2 FOR UPDATE";

/* Reads the peer; *found false when it is not in the account. */
static int find_peer(api_ctx *c, const char *id, bool lock, peer_row *ret, bool *found) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, lock ? SQL_FIND_FOR_UPDATE : SQL_FIND, 2, p, &rows);

        if (r < 0)
                return r;
        *found = cp_store_rows_count(rows) == 1;
        if (!*found)
                return 0;
        (void) snprintf(ret->id, sizeof ret->id, "%s", cp_store_rows_get(rows, 0, 0));
        (void) snprintf(ret->name, sizeof ret->name, "%s", cp_store_rows_get(rows, 0, 1));
        (void) snprintf(ret->label, sizeof ret->label, "%s", cp_store_rows_get(rows, 0, 2));
        (void) snprintf(ret->ip, sizeof ret->ip, "%s", cp_store_rows_get(rows, 0, 3));
        (void) snprintf(ret->user_id, sizeof ret->user_id, "%s", cp_store_rows_get(rows, 0, 4));
        ret->ssh_enabled = col_bool(rows, 0, 5);
        ret->login_expiration_enabled = col_bool(rows, 0, 6);
        ret->inactivity_expiration_enabled = col_bool(rows, 0, 7);
        ret->requires_approval = col_bool(rows, 0, 8);
        return 0;
}

static int get_peer(api_ctx *c) {
        const char *id = c->param[0];
        account_info acc;
        peer_row p;
        bool found;
        int r;

        r = find_peer(c, id, false, &p, &found);
        if (r < 0)
                return r;
        if (!found)
                return api_error(c, 404, "peer not found: %s", id);
        /* NetBird's GetPeer: without the Peers read permission only the
         * peer's owner; anyone else gets its Internal error (a 500). */
        if (!may_read_all(c) && strcmp(p.user_id, c->user_id) != 0)
                return api_error(c, 500, "user %s has no access to peer %s under account %s", c->user_id, id,
                                 c->account_id);
        r = load_account(c, &acc);
        if (r < 0)
                return r;
        return reply_peer(c, &acc, id);
}

/* ---- PUT /api/peers/{peerId} -------------------------------------------------------------------- */

typedef struct peer_req {
        const char *name;
        bool ssh_enabled;
        bool login_expiration_enabled;
        bool inactivity_expiration_enabled;
        bool approval_required;
        bool has_approval;
        const char *ip;
        const char *ipv6;
} peer_req;

/* PeerRequest. The booleans NetBird marks required decode to false when
 * absent (Go's decoder), so a PUT sets all of them. */
static int parse_peer_req(api_ctx *c, peer_req *q) {
        json_t *body = api_body(c);
        int r;

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &q->name) < 0 ||
            api_field_bool(c, body, "ssh_enabled", &q->ssh_enabled) < 0 ||
            api_field_bool(c, body, "login_expiration_enabled", &q->login_expiration_enabled) < 0 ||
            api_field_bool(c, body, "inactivity_expiration_enabled", &q->inactivity_expiration_enabled) < 0 ||
            api_field_str(c, body, "ip", &q->ip) < 0 || api_field_str(c, body, "ipv6", &q->ipv6) < 0)
                return API_FAIL;
        r = api_field_bool(c, body, "approval_required", &q->approval_required);
        if (r < 0)
                return API_FAIL;
        q->has_approval = r == 1;
        return 0;
}

static const char SQL_IP_CHECK[] =
        "SELECT $2::inet << a.network_net,"
        " (SELECT p.id FROM peers p WHERE p.account_id = $1 AND p.ip = $2::inet AND p.id <> $3 LIMIT 1)"
        " FROM accounts a WHERE a.id = $1";
static const char SQL_SET_IP[] = "UPDATE peers SET ip = $2::inet WHERE account_id = $1 AND id = $3";

/* NetBird's UpdatePeerIP: an address inside the account network that no
 * other peer has; event 88 with the old address. */
static int update_ip(api_ctx *c, const account_info *acc, peer_row *p, const char *ip) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        unsigned char bin[16];
        char canon[INET6_ADDRSTRLEN];
        int af = inet_pton(AF_INET, ip, bin) == 1 ? AF_INET : inet_pton(AF_INET6, ip, bin) == 1 ? AF_INET6 : 0;
        int r;

        if (!af)
                return api_error(c, 422, "invalid ip address %s: parseaddr(\"%s\"): unable to parse ip", ip, ip);
        (void) inet_ntop(af, bin, canon, sizeof canon);
        if (strcmp(canon, p->ip) == 0)
                return 0;
        const char *q[3] = { c->account_id, canon, p->id };
        r = api_sql(c, SQL_IP_CHECK, 3, q, &rows);
        if (r < 0)
                return r;
        if (af != AF_INET || !col_bool(rows, 0, 0))
                return api_error(c, 422, "ip %s is not within the account network range %s", canon, acc->network);
        if (cp_store_rows_get(rows, 0, 1))
                return api_error(c, 422, "ip %s is already assigned to peer %s", canon, cp_store_rows_get(rows, 0, 1));
        r = api_sql(c, SQL_SET_IP, 3, q, NULL);
        if (r < 0)
                return r;

        cp_strbuf meta;
        cp_strbuf_init(&meta);
        ADD_LIT(&meta, "{\"old_ip\":");
        put_str(&meta, p->ip);
        cp_strbuf_addch(&meta, '}');
        cp_error err = { 0 };
        r = cp_store_tx_peer_event(c->tx, API_ACT_PEER_IP_UPDATED, c->account_id, p->id, c->user_id, NULL,
                                   c->api->dns_domain, meta.buf, &err);
        cp_strbuf_release(&meta);
        if (r < 0)
                return api_internal(c, "peer event", &err);
        (void) snprintf(p->ip, sizeof p->ip, "%s", canon);
        return 0;
}

/* NetBird's UpdatePeerIPv6: IPv6 overlay addresses are not supported
 * here, so any valid one meets "not configured" unless the account has a
 * v6 network (which nothing sets yet). */
static int update_ipv6(api_ctx *c, const account_info *acc, const char *ip) {
        unsigned char bin[16];

        if (inet_pton(AF_INET6, ip, bin) != 1) {
                if (inet_pton(AF_INET, ip, bin) == 1)
                        return api_error(c, 422, "address %s is not ipv6", ip);
                return api_error(c, 422, "invalid ipv6 address %s: parseaddr(\"%s\"): unable to parse ip", ip, ip);
        }
        if (!acc->has_v6)
                return api_error(c, 412, "ipv6 is not configured for this account");
        return api_error(c, 412, "ipv6 overlay addresses are not supported by this server");
}

static const char SQL_LABEL_TAKEN[] =
        "SELECT EXISTS (SELECT 1 FROM peers WHERE account_id = $1 AND dns_label = $2 AND id <> $3)";
static const char SQL_RENAME[] = "UPDATE peers SET name = $3, dns_label = $4 WHERE account_id = $1 AND id = $2";

static int label_taken(api_ctx *c, const char *peer_id, const char *label, bool *ret) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *q[3] = { c->account_id, label, peer_id };
        int r = api_sql(c, SQL_LABEL_TAKEN, 3, q, &rows);

        if (r < 0)
                return r;
        *ret = col_bool(rows, 0, 0);
        return 0;
}

/* A new name gets a new DNS label, derived as registration derives it
 * (cp_store_dns_label_from_hostname), with the "-<octet 3>-<octet 4>"
 * fallback when another peer holds the plain label. */
static int rename_peer(api_ctx *c, peer_row *p, const char *name, bool *renamed) {
        char label[CP_STORE_DNS_LABEL_MAX + 1], alt[CP_STORE_DNS_LABEL_MAX + 1];
        bool taken = false;
        int r;

        *renamed = false;
        if (strcmp(name, p->name) == 0)
                return 0;
        if (!*name)
                return api_error(c, 422, "peer name shouldn't be empty");
        if (strlen(name) >= sizeof p->name)
                return api_error(c, 422, "peer name is too long");
        if (cp_store_dns_label_from_hostname(name, label) <= 0)
                return api_error(c, 422, "invalid peer name %s: it gives no dns label", name);
        r = label_taken(c, p->id, label, &taken);
        if (r < 0)
                return r;
        if (taken) {
                if (cp_store_dns_label_with_ip(label, p->ip, alt) < 0)
                        return api_internal(c, "no IPv4 address for the label", NULL);
                r = label_taken(c, p->id, alt, &taken);
                if (r < 0)
                        return r;
                if (taken)
                        return api_error(c, 409, "dns labels %s and %s are already taken", label, alt);
                memcpy(label, alt, sizeof label);
        }
        const char *q[4] = { c->account_id, p->id, name, label };
        r = api_sql(c, SQL_RENAME, 4, q, NULL);
        if (r < 0)
                return r;
        (void) snprintf(p->name, sizeof p->name, "%s", name);
        (void) snprintf(p->label, sizeof p->label, "%s", label);
        *renamed = true;
        return 0;
}

static const char SQL_SET_FLAGS[] =
        "UPDATE peers SET ssh_enabled = $3::boolean, login_expiration_enabled = $4::boolean,"
        " inactivity_expiration_enabled = $5::boolean, peer_status_requires_approval = $6::boolean"
        " WHERE account_id = $1 AND id = $2";

static const char *tf(bool v) {
        return v ? "true" : "false";
}

static int peer_event(api_ctx *c, int activity, const peer_row *p, const char *target) {
        cp_error err = { 0 };
        int r = cp_store_tx_peer_event(c->tx, activity, c->account_id, p->id, c->user_id, target,
                                       c->api->dns_domain, NULL, &err);

        return r < 0 ? api_internal(c, "peer event", &err) : 0;
}

#define SSO_ONLY(what) \
        "this peer hasn't been added with the sso login, therefore the " what " expiration can't be updated"

static int update_peer(api_ctx *c) {
        const char *id = c->param[0];
        peer_req q = { 0 };
        account_info acc;
        peer_row p, was;
        bool found, renamed = false;
        int r;

        if (parse_peer_req(c, &q) < 0)
                return API_FAIL;
        if ((r = load_account(c, &acc)) < 0 || (r = find_peer(c, id, true, &p, &found)) < 0)
                return r;
        if (!found)
                return api_error(c, 404, "peer not found: %s", id);
        was = p;
        if (!q.name || !*q.name)
                return api_error(c, 422, "peer name shouldn't be empty");

        /* NetBird's handler order: the address, the IPv6 address, then
         * UpdatePeer's name, SSH and expiration settings. */
        if (q.ip && (r = update_ip(c, &acc, &p, q.ip)) < 0)
                return r;
        if (q.ipv6 && (r = update_ipv6(c, &acc, q.ipv6)) < 0)
                return r;
        if ((r = rename_peer(c, &p, q.name, &renamed)) < 0)
                return r;
        bool sso = p.user_id[0] != 0;
        if (q.login_expiration_enabled != p.login_expiration_enabled && !sso)
                return api_error(c, 412, SSO_ONLY("login"));
        if (q.inactivity_expiration_enabled != p.inactivity_expiration_enabled && !sso)
                return api_error(c, 412, SSO_ONLY("inactivity"));
        p.ssh_enabled = q.ssh_enabled;
        p.login_expiration_enabled = q.login_expiration_enabled;
        p.inactivity_expiration_enabled = q.inactivity_expiration_enabled;
        if (q.has_approval)
                p.requires_approval = q.approval_required;
        const char *u[6] = { c->account_id, p.id, tf(p.ssh_enabled), tf(p.login_expiration_enabled),
                             tf(p.inactivity_expiration_enabled), tf(p.requires_approval) };
        r = api_sql(c, SQL_SET_FLAGS, 6, u, NULL);
        if (r < 0)
                return r;

        /* NetBird's events, in its order; the SSH and expiration ones are
         * targeted at the peer's address, as NetBird does. */
        if (p.ssh_enabled != was.ssh_enabled &&
            (r = peer_event(c, p.ssh_enabled ? API_ACT_PEER_SSH_ENABLED : API_ACT_PEER_SSH_DISABLED, &p, p.ip)) < 0)
                return r;
        if (renamed && (r = peer_event(c, API_ACT_PEER_RENAMED, &p, NULL)) < 0)
                return r;
        if (p.login_expiration_enabled != was.login_expiration_enabled &&
            (r = peer_event(c, p.login_expiration_enabled ? API_ACT_PEER_LOGIN_EXPIRATION_ENABLED
                                                          : API_ACT_PEER_LOGIN_EXPIRATION_DISABLED,
                            &p, p.ip)) < 0)
                return r;
        if (p.inactivity_expiration_enabled != was.inactivity_expiration_enabled &&
            (r = peer_event(c, p.inactivity_expiration_enabled ? API_ACT_PEER_INACTIVITY_EXPIRATION_ENABLED
                                                               : API_ACT_PEER_INACTIVITY_EXPIRATION_DISABLED,
                            &p, p.ip)) < 0)
                return r;
        if (p.requires_approval != was.requires_approval &&
            (r = peer_event(c, p.requires_approval ? API_ACT_PEER_APPROVAL_REVOKED : API_ACT_PEER_APPROVED, &p,
                            NULL)) < 0)
                return r;
        /* NetBird bumps the serial on every update, changed or not. */
        api_changed(c);
        return reply_peer(c, &acc, p.id);
}

/* ---- DELETE /api/peers/{peerId} ----------------------------------------------------------------- */

/* NetBird's deletePeers: every policy with a rule that names the peer as
 * its source or destination resource goes too, each with event 11
 * (meta {name}, target the peer). */
static const char SQL_DELETE_PEER_POLICIES[] =
        "WITH d AS (DELETE FROM policies p WHERE p.account_id = $1 AND EXISTS (SELECT 1 FROM policy_rules r"
        " WHERE r.account_id = $1 AND r.policy_id = p.id"
        " AND (r.source_resource_id = $2 OR r.destination_resource_id = $2)) RETURNING p.name)"
        " INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        " SELECT $4::int, $3, $2, $1, jsonb_build_object('name', d.name) FROM d";

static int delete_peer(api_ctx *c) {
        const char *id = c->param[0];
        char code[16];
        cp_error err = { 0 };
        peer_row p;
        bool found;
        int r;

        r = find_peer(c, id, true, &p, &found);
        if (r < 0)
                return r;
        if (!found)
                return api_error(c, 404, "peer %s account not found", id);
        (void) snprintf(code, sizeof code, "%d", API_ACT_POLICY_REMOVED);
        const char *q[4] = { c->account_id, id, c->user_id, code };
        r = api_sql(c, SQL_DELETE_PEER_POLICIES, 4, q, NULL);
        if (r < 0)
                return r;
        r = cp_store_tx_peer_delete(c->tx, c->account_id, id, c->user_id, c->api->dns_domain, &err);
        if (r == -ENOENT)
                return api_error(c, 404, "peer %s account not found", id);
        if (r < 0)
                return api_internal(c, "deleting the peer", &err);
        /* The fan-out this triggers ends the peer's own Sync stream with
         * its last, empty map (services/management/mgmt-sync.c). */
        api_changed(c);
        return api_reply_empty_object(c);
}

/* ---- GET /api/peers/{peerId}/accessible-peers ------------------------------------------------- */

/* AccessiblePeer for the ids in $2, in that order. */
static const char SQL_ACCESSIBLE[] =
        "SELECT COALESCE(json_agg(json_build_object('city_name', p.location_city_name,"
        " 'connected', p.peer_status_connected, 'country_code', p.location_country_code,"
        " 'dns_label', CASE WHEN $3 = '' THEN p.dns_label ELSE p.dns_label || '.' || $3 END,"
        " 'geoname_id', p.location_geo_name_id, 'id', p.id, 'ip', host(p.ip),"
        " 'last_seen', COALESCE(to_char(p.peer_status_last_seen AT TIME ZONE 'UTC',"
        " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '0001-01-01T00:00:00Z'),"
        " 'name', p.name, 'os', p.meta_os, 'user_id', COALESCE(p.user_id, '')) ORDER BY u.n), '[]')"
        " FROM unnest($2::text[]) WITH ORDINALITY AS u(id, n)"
        " JOIN peers p ON p.account_id = $1 AND p.id = u.id";

static int reply_accessible(api_ctx *c, const account_info *acc, const char *id) {
        cp_netmap_account *a = NULL;
        cp_netmap_visible v = { 0 };
        cp_strbuf ids;
        bool found;
        int r;

        r = snapshot(c, acc, &a);
        if (r < 0)
                return r;
        cp_strbuf_init(&ids);
        api_pgarray_begin(&ids);
        int64_t idx = cp_netmap_account_find_peer(a, id);
        cp_netmap_worker *w = cp_netmap_worker_new();
        if (idx >= 0 && cp_netmap_visible_peers(w, a, (size_t) idx, &v) == 0) {
                for (size_t k = 0; k < v.n_remote; k++)
                        api_pgarray_add(&ids, cp_netmap_account_peer_id(a, v.remote[k]));
                for (size_t k = 0; k < v.n_offline; k++)
                        api_pgarray_add(&ids, cp_netmap_account_peer_id(a, v.offline[k]));
        }
        api_pgarray_end(&ids);
        cp_netmap_worker_free(w);
        cp_netmap_account_unref(a);
        const char *q[3] = { c->account_id, ids.buf, acc->domain };
        r = api_sql_reply(c, 200, SQL_ACCESSIBLE, 3, q, &found);
        cp_strbuf_release(&ids);
        if (r == 0 && !found)
                r = api_reply_text(c, 200, "[]", 2);
        return r;
}

static int accessible_peers(api_ctx *c) {
        const char *id = c->param[0];
        account_info acc;
        int r;

        r = load_account(c, &acc);
        if (r < 0)
                return r;
        /* NetBird's GetAccessiblePeers: without the Peers read permission,
         * nothing when the view is blocked, 404 for an unknown peer and
         * nothing for someone else's; with it, whatever the map says
         * (nothing for an unknown peer). */
        if (!may_read_all(c)) {
                peer_row p;
                bool found;
                if (acc.view_blocked)
                        return api_reply_text(c, 200, "[]", 2);
                r = find_peer(c, id, false, &p, &found);
                if (r < 0)
                        return r;
                if (!found)
                        return api_error(c, 404, "peer not found");
                if (strcmp(p.user_id, c->user_id) != 0)
                        return api_reply_text(c, 200, "[]", 2);
        }
        return reply_accessible(c, &acc, id);
}

const api_route api_peers_routes[] = {
        { "GET", "/api/peers", API_MOD_SELF, API_READ, list_peers },
        { "GET", "/api/peers/{peerId}", API_MOD_SELF, API_READ, get_peer },
        { "PUT", "/api/peers/{peerId}", API_MOD_PEERS, API_UPDATE, update_peer },
        { "DELETE", "/api/peers/{peerId}", API_MOD_PEERS, API_DELETE, delete_peer },
        { "GET", "/api/peers/{peerId}/accessible-peers", API_MOD_SELF, API_READ, accessible_peers },
        { NULL },
};
