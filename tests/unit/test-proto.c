/*
 * proto/: the generated method table agrees with protoc-c's service
 * descriptor, and protoc-c encodes the details agents depend on: the
 * empty-but-present sessionExpiresAt (netbird-protocol.md section 6.4) and
 * packed repeated enums.
 */
#include "cp/base.h"
#include "cp-methods.h"
#include "cptest.h"
#include "management.pb-c.h"

#define SERVICE "/management.ManagementService/"

TEST(method_table_matches_service_descriptor) {
        const ProtobufCServiceDescriptor *svc = &management__management_service__descriptor;

        ASSERT_STREQ("management.ManagementService", svc->name);
        ASSERT_EQ(13, svc->n_methods);
        ASSERT_EQ(13, _CP_PROTO_MGMT_MAX);
        for (unsigned i = 0; i < svc->n_methods; i++) {
                const cp_proto_method *m = &cp_proto_mgmt_methods[i];
                char path[128];

                ASSERT_TRUE(m->name != NULL);
                ASSERT_STREQ(svc->methods[i].name, m->name);
                (void) snprintf(path, sizeof path, SERVICE "%s", m->name);
                ASSERT_STREQ(path, m->path);
                ASSERT_TRUE(svc->methods[i].input == m->request);
                ASSERT_TRUE(svc->methods[i].output == m->response);
                ASSERT_TRUE(cp_proto_mgmt_method_find(path) == m);
        }
}

TEST(method_table_streaming_and_bodies) {
        const cp_proto_method *t = cp_proto_mgmt_methods;

        ASSERT_STREQ(SERVICE "isHealthy", t[CP_PROTO_MGMT_IS_HEALTHY].path);
        ASSERT_TRUE(cp_proto_mgmt_method_find(SERVICE "IsHealthy") == NULL);
        ASSERT_TRUE(cp_proto_mgmt_method_find(SERVICE "ishealthy") == NULL);
        ASSERT_TRUE(cp_proto_mgmt_method_find("/management.ManagementService") == NULL);
        ASSERT_TRUE(cp_proto_mgmt_method_find(NULL) == NULL);

        for (unsigned i = 0; i < _CP_PROTO_MGMT_MAX; i++) {
                cp_proto_streaming want = i == CP_PROTO_MGMT_SYNC ? CP_PROTO_SERVER_STREAMING :
                                          i == CP_PROTO_MGMT_JOB ? CP_PROTO_BIDI_STREAMING : CP_PROTO_UNARY;
                ASSERT_EQ(want, t[i].streaming);
        }

        ASSERT_TRUE(t[CP_PROTO_MGMT_LOGIN].request == &management__encrypted_message__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_LOGIN].request_body == &management__login_request__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_LOGIN].response_body == &management__login_response__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_SYNC].response_body == &management__sync_response__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_GET_SERVER_KEY].request == &management__empty__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_GET_SERVER_KEY].response == &management__server_key_response__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_GET_SERVER_KEY].request_body == NULL);
        ASSERT_TRUE(t[CP_PROTO_MGMT_GET_SERVER_KEY].response_body == NULL);
        ASSERT_TRUE(t[CP_PROTO_MGMT_IS_HEALTHY].response == &management__empty__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_SYNC_META].request_body == &management__sync_meta_request__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_SYNC_META].response == &management__empty__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_SYNC_META].response_body == NULL);
        ASSERT_TRUE(t[CP_PROTO_MGMT_LOGOUT].request_body == &management__empty__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_GET_PKCE_AUTHORIZATION_FLOW].response_body ==
                    &management__pkceauthorization_flow__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_JOB].request_body == &management__job_response__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_JOB].response_body == &management__job_request__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_EXTEND_AUTH_SESSION].response_body ==
                    &management__extend_auth_session_response__descriptor);
        ASSERT_TRUE(t[CP_PROTO_MGMT_STOP_EXPOSE].response_body == &management__stop_expose_response__descriptor);
}

/* Packs msg and compares with the expected bytes. */
static void assert_packs_to(const ProtobufCMessage *msg, const uint8_t *want, size_t want_len) {
        uint8_t buf[64];
        size_t n = protobuf_c_message_get_packed_size(msg);

        ASSERT_EQ(want_len, n);
        ASSERT_TRUE(n <= sizeof buf);
        ASSERT_EQ(n, protobuf_c_message_pack(msg, buf));
        ASSERT_TRUE(n == 0 || memcmp(buf, want, n) == 0);
}

TEST(session_expires_at_three_states) {
        Google__Protobuf__Timestamp zero = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        Google__Protobuf__Timestamp deadline = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        Management__LoginResponse login = MANAGEMENT__LOGIN_RESPONSE__INIT;
        Management__SyncResponse sync = MANAGEMENT__SYNC_RESPONSE__INIT;
        Management__ExtendAuthSessionResponse ext = MANAGEMENT__EXTEND_AUTH_SESSION_RESPONSE__INIT;
        static const uint8_t login_empty[] = { 0x22, 0x00 };
        static const uint8_t sync_empty[] = { 0x3a, 0x00 };
        static const uint8_t ext_empty[] = { 0x0a, 0x00 };
        /* seconds 1800000000 (varint 80 a4 a7 da 06), nanos 5 */
        static const uint8_t ext_deadline[] = { 0x0a, 0x08, 0x08, 0x80, 0xa4, 0xa7, 0xda, 0x06, 0x10, 0x05 };

        /* Absent: a NULL pointer, no tag at all. */
        assert_packs_to(&login.base, NULL, 0);
        /* Present but empty: a non-NULL pointer to an all-zero Timestamp. */
        login.sessionexpiresat = &zero;
        assert_packs_to(&login.base, login_empty, sizeof login_empty);
        sync.sessionexpiresat = &zero;
        assert_packs_to(&sync.base, sync_empty, sizeof sync_empty);
        ext.sessionexpiresat = &zero;
        assert_packs_to(&ext.base, ext_empty, sizeof ext_empty);
        /* A deadline. */
        deadline.seconds = 1800000000;
        deadline.nanos = 5;
        ext.sessionexpiresat = &deadline;
        assert_packs_to(&ext.base, ext_deadline, sizeof ext_deadline);

        /* And unpacking keeps the three states apart. */
        Management__LoginResponse *got = management__login_response__unpack(NULL, sizeof login_empty, login_empty);
        ASSERT_TRUE(got != NULL);
        ASSERT_TRUE(got->sessionexpiresat != NULL);
        ASSERT_EQ(0, got->sessionexpiresat->seconds);
        ASSERT_EQ(0, got->sessionexpiresat->nanos);
        management__login_response__free_unpacked(got, NULL);
        got = management__login_response__unpack(NULL, 0, (const uint8_t *) "");
        ASSERT_TRUE(got != NULL);
        ASSERT_TRUE(got->sessionexpiresat == NULL);
        management__login_response__free_unpacked(got, NULL);
}

TEST(capabilities_are_packed) {
        Management__PeerSystemMeta meta = MANAGEMENT__PEER_SYSTEM_META__INIT;
        Management__PeerCapability caps[] = {
                MANAGEMENT__PEER_CAPABILITY__PeerCapabilitySourcePrefixes,
                MANAGEMENT__PEER_CAPABILITY__PeerCapabilityIPv6Overlay,
        };
        /* field 18, wire type 2: tag varint 0x92 0x01, length 2, values */
        static const uint8_t want[] = { 0x92, 0x01, 0x02, 0x01, 0x02, 0x98, 0x01, 0x01 };

        meta.n_capabilities = ELEMENTSOF(caps);
        meta.capabilities = caps;
        meta.syncmessageversion = 1;    /* field 19, varint: 0x98 0x01 */
        assert_packs_to(&meta.base, want, sizeof want);

        /* Unpacked form parses too (old encoders may not pack). */
        static const uint8_t unpacked[] = { 0x90, 0x01, 0x01, 0x90, 0x01, 0x02 };
        Management__PeerSystemMeta *got = management__peer_system_meta__unpack(NULL, sizeof unpacked, unpacked);
        ASSERT_TRUE(got != NULL);
        ASSERT_EQ(2, got->n_capabilities);
        ASSERT_EQ(2, got->capabilities[1]);
        management__peer_system_meta__free_unpacked(got, NULL);
}

TEST(encrypted_message_layout) {
        Management__EncryptedMessage m = MANAGEMENT__ENCRYPTED_MESSAGE__INIT;
        uint8_t body[3] = { 0xde, 0xad, 0x01 };
        static const uint8_t want[] = { 0x0a, 0x02, 'k', '=', 0x12, 0x03, 0xde, 0xad, 0x01 };

        m.wgpubkey = (char *) "k=";
        m.body.data = body;
        m.body.len = sizeof body;
        /* version stays 0 and is therefore not on the wire. */
        assert_packs_to(&m.base, want, sizeof want);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
