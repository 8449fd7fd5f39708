/*
 * The bounded work before authentication, without a server: the
 * EncryptedMessage reader (mgmt-envelope.h) against what protobuf-c packs
 * and against crafted bytes, and the arena's budget under protobuf-c's
 * unpacker: the largest legitimate LoginRequest fits
 * MGMT_AGENT_UNPACK_BUDGET, crafted inner messages are refused by it.
 */
#include "cp/base.h"
#include "cptest.h"
#include "management.pb-c.h"
#include "mgmt-agent-int.h"
#include "mgmt-arena.h"
#include "mgmt-envelope.h"

#include <stdint.h>
#include <stdio.h>

static const char KEY[] = "j3CchWWmF6VNlA8ZJd1+UgAPBRGMCjN3yl4YtPlODz8=";

/* ---- the envelope ------------------------------------------------------------ */

static uint8_t *pack_em(const char *key, const void *body, size_t body_len, int32_t version, size_t *ret_len) {
        Management__EncryptedMessage em = MANAGEMENT__ENCRYPTED_MESSAGE__INIT;

        em.wgpubkey = (char *) key;
        em.body = (ProtobufCBinaryData) { .len = body_len, .data = (uint8_t *) body };
        em.version = version;
        uint8_t *out = cp_xmalloc(protobuf_c_message_get_packed_size(&em.base) + 1);
        *ret_len = protobuf_c_message_pack(&em.base, out);
        return out;
}

TEST(envelope_reads_what_protobuf_packs) {
        uint8_t body[100];
        mgmt_envelope env;
        const char *why;
        size_t n;

        for (size_t i = 0; i < sizeof body; i++)
                body[i] = (uint8_t) i;
        _cleanup_free_ uint8_t *m = pack_em(KEY, body, sizeof body, 7, &n);
        ASSERT_EQ(0, mgmt_envelope_parse(m, n, &env, &why));
        ASSERT_EQ(strlen(KEY), env.key_len);
        ASSERT_TRUE(memcmp(env.key, KEY, env.key_len) == 0);
        ASSERT_EQ(sizeof body, env.body_len);
        ASSERT_TRUE(memcmp(env.body, body, sizeof body) == 0);
        ASSERT_EQ(7, env.version);
        /* Slices of the input, not copies. */
        ASSERT_TRUE(env.body > m && env.body < m + n);

        /* Empty: every field absent. */
        ASSERT_EQ(0, mgmt_envelope_parse(m, 0, &env, &why));
        ASSERT_EQ(0, env.key_len);
        ASSERT_EQ(0, env.body_len);
        /* A negative version (int32 as a 10-byte varint). */
        _cleanup_free_ uint8_t *neg = pack_em(KEY, body, 1, -1, &n);
        ASSERT_EQ(0, mgmt_envelope_parse(neg, n, &env, &why));
        ASSERT_EQ(-1, env.version);
}

TEST(envelope_skips_unknown_fields) {
        uint8_t buf[64], *p = buf;

        /* unknown varint (field 9), fixed64 (10), fixed32 (11), bytes (12,
         * 3 B), then the key field with a 2-byte value and a body. */
        *p++ = 9 << 3 | 0;
        *p++ = 0x96;
        *p++ = 0x01;
        *p++ = 10 << 3 | 1;
        memset(p, 0xee, 8);
        p += 8;
        *p++ = 11 << 3 | 5;
        memset(p, 0xee, 4);
        p += 4;
        *p++ = 12 << 3 | 2;
        *p++ = 3;
        memcpy(p, "abc", 3);
        p += 3;
        *p++ = 1 << 3 | 2;
        *p++ = 2;
        *p++ = 'k';
        *p++ = 'y';
        *p++ = 2 << 3 | 2;
        *p++ = 1;
        *p++ = 0x42;
        /* A high field number (2^29 - 1, a 5-byte tag). */
        *p++ = 0xf8;
        *p++ = 0xff;
        *p++ = 0xff;
        *p++ = 0xff;
        *p++ = 0x0f;
        *p++ = 0;

        mgmt_envelope env;
        const char *why;
        ASSERT_EQ(0, mgmt_envelope_parse(buf, (size_t) (p - buf), &env, &why));
        ASSERT_EQ(2, env.key_len);
        ASSERT_TRUE(memcmp(env.key, "ky", 2) == 0);
        ASSERT_EQ(1, env.body_len);
        ASSERT_EQ(0x42, env.body[0]);
}

static int parse(const uint8_t *p, size_t n) {
        mgmt_envelope env;
        const char *why = NULL;
        int r = mgmt_envelope_parse(p, n, &env, &why);

        if (r < 0 && !why)
                return -1000;   /* every refusal says why */
        return r;
}

TEST(envelope_refuses_malformed_input) {
        /* Truncated: a tag alone, a length past the end, a varint cut. */
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x0a }, 1));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x12, 0x05, 1, 2 }, 4));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x18, 0x80 }, 2));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x48, 0x80, 0x80 }, 3));
        /* A length of 2^63 and one of 2^64-1 (the 10-byte maximum). */
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                                      0x01 }, 11));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                                      0x01, 0 }, 12));
        /* An 11-byte varint, a 10th byte past 64 bits. */
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x48, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                                      0x80, 0x00 }, 12));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x48, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                                      0x02 }, 11));
        /* Field 0, a field number past 2^29-1. */
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x00, 0x00 }, 2));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x80, 0x80, 0x80, 0x80, 0x10, 0x00 }, 6));
        /* Groups and the wire types 6 and 7. */
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 9 << 3 | 3, 9 << 3 | 4 }, 2));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 9 << 3 | 4 }, 1));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 9 << 3 | 6, 0 }, 2));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 9 << 3 | 7, 0 }, 2));
        /* A known field with the wrong wire type. */
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 1 << 3 | 0, 1 }, 2));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 2 << 3 | 5, 1, 2, 3, 4 }, 5));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 3 << 3 | 2, 0 }, 2));
        /* A known field twice. */
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x12, 1, 'a', 0x12, 1, 'b' }, 6));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x0a, 0, 0x0a, 0 }, 4));
        ASSERT_EQ(-EBADMSG, parse((const uint8_t[]) { 0x18, 1, 0x18, 1 }, 4));
        /* Each alone is fine. */
        ASSERT_EQ(0, parse((const uint8_t[]) { 0x12, 1, 'a', 0x0a, 0, 0x18, 1 }, 7));
}

TEST(envelope_one_mib_of_unknown_varints) {
        /* The input of the issue: 1 MiB of one-byte unknown varints
         * (field 9, value 0), then a body. Read in place. */
        size_t n = 1024 * 1024;
        _cleanup_free_ uint8_t *m = cp_xmalloc(n + 3);
        for (size_t i = 0; i < n; i += 2) {
                m[i] = 9 << 3;
                m[i + 1] = 0;
        }
        m[n] = 0x12;
        m[n + 1] = 1;
        m[n + 2] = 0x42;
        mgmt_envelope env;
        const char *why;
        ASSERT_EQ(0, mgmt_envelope_parse(m, n + 3, &env, &why));
        ASSERT_EQ(1, env.body_len);
}

/* ---- the arena budget under protobuf-c ----------------------------------------- */

/* The largest legitimate LoginRequest (mgmt-agent.c's arithmetic):
 * 16 KiB JWT, long meta strings, 32 DNS labels, 1024 addresses, 1024
 * files with 150-byte paths, 64 capabilities. Packed into *ret_len bytes. */
static uint8_t *largest_login(size_t *ret_len) {
        Management__LoginRequest lr = MANAGEMENT__LOGIN_REQUEST__INIT;
        Management__PeerSystemMeta pm = MANAGEMENT__PEER_SYSTEM_META__INIT;
        Management__Environment envr = MANAGEMENT__ENVIRONMENT__INIT;
        Management__Flags fl = MANAGEMENT__FLAGS__INIT;
        Management__PeerKeys pk = MANAGEMENT__PEER_KEYS__INIT;
        static Management__NetworkAddress na[1024];
        static Management__NetworkAddress *nap[1024];
        static Management__File f[1024];
        static Management__File *fp[1024];
        static char ips[1024][48], paths[1024][160];
        static char jwt[16 * 1024], str[256];
        static char labels[32][64];
        static char *lp[32];
        Management__PeerCapability caps[64];

        memset(jwt, 'j', sizeof jwt - 1);
        memset(str, 's', sizeof str - 1);
        for (int i = 0; i < 1024; i++) {
                management__network_address__init(&na[i]);
                (void) snprintf(ips[i], sizeof ips[i], "fd00:1234:5678:9abc:def0:%04x:%04x:%04x/128", i, i, i);
                na[i].netip = ips[i];
                na[i].mac = (char *) "02:42:ac:11:00:02";
                nap[i] = &na[i];
                management__file__init(&f[i]);
                memset(paths[i], 'p', 150);
                (void) snprintf(paths[i] + 150, 10, "%04d", i);
                f[i].path = paths[i];
                f[i].exist = true;
                fp[i] = &f[i];
        }
        for (int i = 0; i < 32; i++) {
                memset(labels[i], 'l', 62);
                lp[i] = labels[i];
        }
        for (int i = 0; i < 64; i++)
                caps[i] = (Management__PeerCapability) (i % 4);
        pm.hostname = pm.goos = pm.kernel = pm.core = pm.platform = pm.os = pm.netbirdversion = pm.uiversion =
                pm.kernelversion = pm.osversion = pm.sysserialnumber = pm.sysproductname = pm.sysmanufacturer = str;
        envr.cloud = envr.platform = str;
        pm.environment = &envr;
        fl.rosenpassenabled = true;
        pm.flags = &fl;
        pm.n_networkaddresses = 1024;
        pm.networkaddresses = nap;
        pm.n_files = 1024;
        pm.files = fp;
        pm.n_capabilities = 64;
        pm.capabilities = caps;
        lr.setupkey = (char *) "A2C8E62B-38F5-4553-B31E-DD66C696CEBB";
        lr.jwttoken = jwt;
        lr.meta = &pm;
        pk.sshpubkey = (ProtobufCBinaryData) { .len = 80, .data = (uint8_t *) str };
        pk.wgpubkey = (ProtobufCBinaryData) { .len = 44, .data = (uint8_t *) KEY };
        lr.peerkeys = &pk;
        lr.n_dnslabels = 32;
        lr.dnslabels = lp;
        uint8_t *out = cp_xmalloc(protobuf_c_message_get_packed_size(&lr.base));
        *ret_len = protobuf_c_message_pack(&lr.base, out);
        return out;
}

TEST(budget_fits_the_largest_login) {
        size_t n;
        _cleanup_free_ uint8_t *m = largest_login(&n);
        mgmt_arena a;

        printf("# the largest legitimate LoginRequest: %zu bytes\n", n);
        ASSERT_TRUE(n <= MGMT_AGENT_MAX_PLAIN_META);
        ASSERT_TRUE(n > MGMT_AGENT_MAX_PLAIN_META * 9 / 10);
        mgmt_arena_init(&a);
        mgmt_arena_set_budget(&a, MGMT_AGENT_UNPACK_BUDGET);
        Management__LoginRequest *lr = management__login_request__unpack(mgmt_arena_pb(&a), n, m);
        ASSERT_TRUE(lr != NULL);
        ASSERT_FALSE(mgmt_arena_over_budget(&a));
        ASSERT_EQ(1024, lr->meta->n_files);
        ASSERT_EQ(1024, lr->meta->n_networkaddresses);
        printf("# decoded into %zu bytes of arena (budget %d)\n", mgmt_arena_held(&a), MGMT_AGENT_UNPACK_BUDGET);
        ASSERT_TRUE(mgmt_arena_held(&a) < MGMT_AGENT_UNPACK_BUDGET / 2);
        mgmt_arena_release(&a);
}

/* 256 KiB of one crafted pattern inside a LoginRequest's meta. */
static uint8_t *crafted(const uint8_t *unit, size_t unit_len, size_t *ret_len) {
        size_t inner = (MGMT_AGENT_MAX_PLAIN_META - 8) / unit_len * unit_len;
        uint8_t *m = cp_xmalloc(inner + 8), *p = m;

        *p++ = 2 << 3 | 2;      /* LoginRequest.meta */
        size_t v = inner;
        while (v >= 0x80) {
                *p++ = (uint8_t) (v | 0x80);
                v >>= 7;
        }
        *p++ = (uint8_t) v;
        for (size_t i = 0; i < inner; i += unit_len)
                memcpy(p + i, unit, unit_len);
        *ret_len = (size_t) (p - m) + inner;
        return m;
}

static void expect_refused(const uint8_t *unit, size_t unit_len) {
        size_t n;
        _cleanup_free_ uint8_t *m = crafted(unit, unit_len, &n);
        mgmt_arena a;

        mgmt_arena_init(&a);
        /* Without a budget it decodes, at many times its size. */
        Management__LoginRequest *lr = management__login_request__unpack(mgmt_arena_pb(&a), n, m);
        ASSERT_TRUE(lr != NULL);
        size_t unbounded = mgmt_arena_held(&a);
        mgmt_arena_release(&a);
        printf("# %zu crafted bytes (unit %02x..., %zu B) decode into %zu bytes unbounded\n", n, unit[0], unit_len,
               unbounded);
        ASSERT_TRUE(unbounded > MGMT_AGENT_UNPACK_BUDGET);

        mgmt_arena_init(&a);
        mgmt_arena_set_budget(&a, MGMT_AGENT_UNPACK_BUDGET);
        lr = management__login_request__unpack(mgmt_arena_pb(&a), n, m);
        ASSERT_TRUE(lr == NULL);
        ASSERT_TRUE(mgmt_arena_over_budget(&a));
        ASSERT_TRUE(mgmt_arena_held(&a) <= MGMT_AGENT_UNPACK_BUDGET);
        /* Direct allocations still work past the budget (the handler's). */
        ASSERT_TRUE(mgmt_arena_alloc(&a, 100000) != NULL);
        mgmt_arena_set_budget(&a, 0);
        ASSERT_FALSE(mgmt_arena_over_budget(&a));
        mgmt_arena_release(&a);
        ASSERT_EQ(0, mgmt_arena_held(&a));
}

TEST(budget_refuses_crafted_messages) {
        /* Empty networkAddresses entries (2 bytes each). */
        expect_refused((const uint8_t[]) { 11 << 3 | 2, 0 }, 2);
        /* Empty files entries (field 16: a 2-byte tag). */
        expect_refused((const uint8_t[]) { 0x82, 0x01, 0 }, 3);
        /* Unknown one-byte varints (field 100: a 2-byte tag). */
        expect_refused((const uint8_t[]) { 0xa0, 0x06, 0 }, 3);
        /* An address entry with an unknown field inside: two levels. */
        expect_refused((const uint8_t[]) { 11 << 3 | 2, 2, 9 << 3, 0 }, 4);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
