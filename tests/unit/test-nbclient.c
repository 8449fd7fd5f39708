/*
 * common/nbclient: the serial of a SyncResponse, read from the wire format
 * (what the load tool does for every map) and by unpacking it (what
 * bench-agent does to count the remote peers), must agree.
 */
#include "cp/base.h"
#include "cp/nbclient.h"
#include "cptest.h"
#include "management.pb-c.h"

/* Packs resp into a malloc'd buffer. */
static uint8_t *pack(const Management__SyncResponse *resp, size_t *ret_len) {
        size_t n = management__sync_response__get_packed_size(resp);
        uint8_t *buf = cp_xmalloc(n ? n : 1);

        *ret_len = management__sync_response__pack(resp, buf);
        return buf;
}

TEST(sync_serial_from_the_wire_and_unpacked_agree) {
        Management__SyncResponse resp;
        Management__NetworkMap nm;
        Management__RemotePeerConfig rp[2], *rps[2] = { &rp[0], &rp[1] };
        Management__NetbirdConfig cfg;
        size_t len, remote = 0;

        management__sync_response__init(&resp);
        management__network_map__init(&nm);
        management__netbird_config__init(&cfg);
        for (int i = 0; i < 2; i++) {
                management__remote_peer_config__init(&rp[i]);
                rp[i].wgpubkey = (char *) "key";
        }
        /* Fields around the map, so the walk has to skip them. */
        resp.netbirdconfig = &cfg;
        resp.remotepeersisempty = true;
        resp.version = 7;
        nm.serial = 300000000000ULL;    /* a multi-byte varint */
        nm.remotepeers = rps;
        nm.n_remotepeers = 2;
        resp.networkmap = &nm;
        uint8_t *buf = pack(&resp, &len);
        ASSERT_EQ((int64_t) 300000000000LL, cp_nbc_sync_serial(buf, len, NULL));
        ASSERT_EQ((int64_t) 300000000000LL, cp_nbc_sync_serial(buf, len, &remote));
        ASSERT_EQ(2, remote);
        /* Cut short: neither reads a serial. */
        ASSERT_EQ(-1, cp_nbc_sync_serial(buf, len - 1, NULL));
        ASSERT_EQ(-1, cp_nbc_sync_serial(buf, len - 1, &remote));
        free(buf);

        /* Serial 0 is a map too; no map at all is -1. */
        nm.serial = 0;
        buf = pack(&resp, &len);
        ASSERT_EQ(0, cp_nbc_sync_serial(buf, len, NULL));
        free(buf);
        resp.networkmap = NULL;
        buf = pack(&resp, &len);
        ASSERT_EQ(-1, cp_nbc_sync_serial(buf, len, NULL));
        ASSERT_EQ(-1, cp_nbc_sync_serial(buf, len, &remote));
        free(buf);
        ASSERT_EQ(-1, cp_nbc_sync_serial((const uint8_t *) "\xff\xff\xff", 3, NULL));
}

TEST(sync_serial_of_a_map_sent_twice_is_the_last) {
        /* Two NetworkMap fields (5, length-delimited) merge: Serial 1,
         * then Serial 2. */
        static const uint8_t wire[] = { 0x2a, 0x02, 0x08, 0x01, 0x20, 0x01, 0x2a, 0x02, 0x08, 0x02 };

        ASSERT_EQ(2, cp_nbc_sync_serial(wire, sizeof wire, NULL));
        size_t remote = 9;
        ASSERT_EQ(2, cp_nbc_sync_serial(wire, sizeof wire, &remote));
        ASSERT_EQ(0, remote);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
