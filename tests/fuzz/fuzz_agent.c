/*
 * fuzz_agent: the encrypted edge of every agent RPC
 * (services/management/agent/mgmt-agent.c, mgmt_agent_open_request()):
 * the outer EncryptedMessage, the sender's key, the NaCl box with the
 * server's keys, the inner message of the method, then what runs on the
 * opened request before the first database call (the PeerSystemMeta
 * checks of Login, Sync and SyncMeta, mgmt_login_meta()) and the sealing
 * of an answer (mgmt_agent_seal_msg()).
 *
 * Input: byte 0 chooses the method (low 4 bits, modulo the methods with a
 * sealed body) and the mode (bit 7). Without bit 7 the rest is the gRPC
 * payload as it arrives: an EncryptedMessage from anyone. With bit 7 the
 * rest is the plaintext inner body: the harness seals it with a fixed
 * peer key pair to the fixed server key (bit 6: to the previous server
 * key, as during a rotation) and wraps it in an EncryptedMessage, so the
 * inner decode and what follows are reached.
 *
 * The server keys come from mgmt_keys_new_fixed() (no database: a box
 * that opens with neither key gives the "newer keys?" reload an
 * unchanged set).
 *
 * CP_FUZZ_WRITE_SEEDS=DIR: writes the seed corpus (packed requests as the
 * agent sends them, built with protobuf-c) to DIR and exits.
 */
#include "cp/base.h"
#include "cp/crypto-box.h"
#include "mgmt-agent-int.h"
#include "mgmt-keys.h"

#include <fcntl.h>
#include <grpc/byte_buffer.h>
#include <grpc/slice.h>

#include "management.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static mgmt_keys *keys;
static mgmt_agent agent;
static cp_crypto_box_shared peer_shared[2];     /* the peer's side, current and previous server key */
static char peer_b64[CP_WG_KEY_B64_LEN];
static cp_proto_mgmt_method_id methods[_CP_PROTO_MGMT_MAX];
static size_t n_methods;

/* Fixed keys: the fuzzer's inputs stay valid from run to run. */
static const uint8_t server_priv[CP_WG_KEY_LEN] = { 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                                   16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 0x71 };
static const uint8_t server_prev_priv[CP_WG_KEY_LEN] = { 0x20, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
                                                        9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 0x49 };
static const uint8_t peer_priv[CP_WG_KEY_LEN] = { 0x30, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
                                                 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 0x47 };

static void write_seeds(const char *dir);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        uint8_t peer_pub[CP_WG_KEY_LEN], spub[CP_WG_KEY_LEN];
        cp_error err = { 0 };

        if (mgmt_keys_new_fixed(server_priv, server_prev_priv, &keys, &err) < 0)
                abort();
        agent.keys = keys;
        if (cp_crypto_wg_public_from_private(peer_priv, peer_pub, &err) < 0)
                abort();
        cp_crypto_wg_key_format(peer_pub, peer_b64);
        for (int i = 0; i < 2; i++) {
                if (cp_crypto_wg_public_from_private(i == 0 ? server_priv : server_prev_priv, spub, &err) < 0 ||
                    cp_crypto_box_shared_init(&peer_shared[i], spub, peer_priv, &err) < 0)
                        abort();
        }
        for (int i = 0; i < _CP_PROTO_MGMT_MAX; i++)
                if (cp_proto_mgmt_methods[i].request_body)
                        methods[n_methods++] = (cp_proto_mgmt_method_id) i;
        if (getenv("CP_FUZZ_WRITE_SEEDS")) {
                write_seeds(getenv("CP_FUZZ_WRITE_SEEDS"));
                exit(0);
        }
        return 0;
}

/* The EncryptedMessage an agent sends: plain sealed to server key k. */
static uint8_t *seal_request(int k, const uint8_t *plain, size_t len, size_t *ret_len) {
        Management__EncryptedMessage em = MANAGEMENT__ENCRYPTED_MESSAGE__INIT;
        size_t blen = cp_crypto_box_sealed_len(len);
        uint8_t *body = cp_xmalloc(blen), *out;
        cp_error err = { 0 };

        if (cp_crypto_box_seal_shared(&peer_shared[k], plain, len, body, blen, &err) != (int) blen)
                abort();
        em.wgpubkey = peer_b64;
        em.body.data = body;
        em.body.len = blen;
        out = cp_xmalloc(management__encrypted_message__get_packed_size(&em) + 1);
        *ret_len = management__encrypted_message__pack(&em, out);
        free(body);
        return out;
}

/* What the handlers check before they touch the database. */
static void after_open(mgmt_agent_op *op, cp_proto_mgmt_method_id id) {
        const Management__PeerSystemMeta *meta = NULL;
        cp_store_peer_meta m;

        switch (id) {
        case CP_PROTO_MGMT_LOGIN:
                meta = ((const Management__LoginRequest *) op->request)->meta;
                break;
        case CP_PROTO_MGMT_SYNC:
                meta = ((const Management__SyncRequest *) op->request)->meta;
                break;
        case CP_PROTO_MGMT_SYNC_META:
                meta = ((const Management__SyncMetaRequest *) op->request)->meta;
                break;
        default:
                break;
        }
        if (meta)
                (void) mgmt_login_meta(op, meta, &m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_free_ uint8_t *sealed = NULL;
        const uint8_t *payload;
        size_t payload_len;
        cp_proto_mgmt_method_id id;
        cp_crypto_box_shared shared = { { 0 } };
        mgmt_agent_op op = { 0 };
        grpc_slice slice;

        if (size < 1)
                return 0;
        id = methods[(data[0] & 0x0f) % n_methods];
        if (data[0] & 0x80) {
                sealed = seal_request(data[0] & 0x40 ? 1 : 0, data + 1, size - 1, &payload_len);
                payload = sealed;
        } else {
                payload = data + 1;
                payload_len = size - 1;
        }

        op.agent = &agent;
        op.method = &cp_proto_mgmt_methods[id];
        slice = grpc_slice_from_copied_buffer((const char *) payload, payload_len);
        op.payload = grpc_raw_byte_buffer_create(&slice, 1);
        grpc_slice_unref(slice);
        mgmt_arena_init(&op.arena);

        if (mgmt_agent_open_request(&op, &shared) == 0) {
                op.status = GRPC_STATUS_OK;
                after_open(&op, id);
                if (op.status == GRPC_STATUS_OK && op.method->response_body) {
                        /* The answer to the same peer, sealed as the
                         * server seals every answer. */
                        size_t n = protobuf_c_message_get_packed_size(op.request), len;
                        uint8_t *plain = mgmt_arena_alloc(&op.arena, n + 1);
                        cp_error err = { 0 };
                        n = protobuf_c_message_pack(op.request, plain);
                        uint8_t *reply = mgmt_agent_seal_msg(op.server_key, &shared, plain, n, &len, &err);
                        if (!reply)
                                abort();
                        free(reply);
                }
        } else if (op.status == GRPC_STATUS_OK || !op.message)
                abort();        /* a failure always says why */
        cp_crypto_box_shared_release(&shared);
        grpc_byte_buffer_destroy(op.payload);
        mgmt_arena_release(&op.arena);
        return 0;
}

/* ---- seeds ------------------------------------------------------------------- */

static void put_seed(const char *dir, const char *name, uint8_t first, const ProtobufCMessage *m) {
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *buf = cp_xmalloc(n + 1);
        char path[512];
        int fd;

        buf[0] = first;
        n = protobuf_c_message_pack(m, buf + 1);
        (void) snprintf(path, sizeof path, "%s/%s", dir, name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, buf, n + 1) != (ssize_t) (n + 1))
                abort();
        close(fd);
        free(buf);
}

static uint8_t selector(cp_proto_mgmt_method_id id) {
        for (size_t i = 0; i < n_methods; i++)
                if (methods[i] == id)
                        return (uint8_t) (0x80 | i);
        abort();
}

static void write_seeds(const char *dir) {
        Management__PeerSystemMeta meta = MANAGEMENT__PEER_SYSTEM_META__INIT;
        Management__Environment env = MANAGEMENT__ENVIRONMENT__INIT;
        Management__File file = MANAGEMENT__FILE__INIT;
        Management__File *files[] = { &file };
        Management__NetworkAddress na = MANAGEMENT__NETWORK_ADDRESS__INIT;
        Management__NetworkAddress *nas[] = { &na };
        Management__PeerKeys pk = MANAGEMENT__PEER_KEYS__INIT;
        Management__LoginRequest login = MANAGEMENT__LOGIN_REQUEST__INIT;
        Management__SyncRequest sync = MANAGEMENT__SYNC_REQUEST__INIT;
        Management__SyncMetaRequest sm = MANAGEMENT__SYNC_META_REQUEST__INIT;
        Management__ExposeServiceRequest ex = MANAGEMENT__EXPOSE_SERVICE_REQUEST__INIT;
        char *labels[] = { "web", "db-1" };
        uint8_t sealed_first;

        meta.hostname = "fuzz-host";
        meta.goos = "linux";
        meta.kernel = "Linux";
        meta.platform = "x86_64";
        meta.os = "debian";
        meta.osversion = "12";
        meta.netbirdversion = "0.60.0";
        meta.kernelversion = "6.1.0";
        meta.uiversion = "";
        meta.sysserialnumber = "SN-1";
        meta.sysproductname = "VM";
        meta.sysmanufacturer = "QEMU";
        env.cloud = "aws";
        env.platform = "ec2";
        meta.environment = &env;
        file.path = "/etc/hosts";
        file.exist = true;
        file.processisrunning = false;
        meta.files = files;
        meta.n_files = 1;
        na.netip = "192.168.1.10/24";
        na.mac = "02:42:ac:11:00:02";
        meta.networkaddresses = nas;
        meta.n_networkaddresses = 1;

        login.setupkey = "A2C8E62B-38F5-4553-B31E-DD66C696CEBB";
        login.meta = &meta;
        pk.sshpubkey.data = (uint8_t *) "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfuzz fuzz";
        pk.sshpubkey.len = strlen((const char *) pk.sshpubkey.data);
        login.peerkeys = &pk;
        login.dnslabels = labels;
        login.n_dnslabels = 2;
        put_seed(dir, "login-setupkey", selector(CP_PROTO_MGMT_LOGIN), &login.base);
        login.setupkey = "";
        login.jwttoken = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1MSJ9.c2ln";
        put_seed(dir, "login-jwt", selector(CP_PROTO_MGMT_LOGIN), &login.base);
        login.jwttoken = "";
        /* The same login sealed to the previous server key. */
        put_seed(dir, "login-prevkey", selector(CP_PROTO_MGMT_LOGIN) | 0x40, &login.base);

        sync.meta = &meta;
        put_seed(dir, "sync", selector(CP_PROTO_MGMT_SYNC), &sync.base);
        sm.meta = &meta;
        put_seed(dir, "syncmeta", selector(CP_PROTO_MGMT_SYNC_META), &sm.base);

        ex.port = 8080;
        ex.protocol = MANAGEMENT__EXPOSE_PROTOCOL__EXPOSE_HTTP;
        ex.domain = "proxy.example.com";
        ex.name_prefix = "web";
        ex.pin = "123456";
        put_seed(dir, "create-expose", selector(CP_PROTO_MGMT_CREATE_EXPOSE), &ex.base);

        /* An outer message as it arrives (not sealed by the harness): a
         * real sealed Login, then a garbage key. */
        sealed_first = selector(CP_PROTO_MGMT_LOGIN) & 0x0f;
        {
                size_t n = management__login_request__get_packed_size(&login), len;
                uint8_t *plain = cp_xmalloc(n);
                n = management__login_request__pack(&login, plain);
                uint8_t *outer = seal_request(0, plain, n, &len);
                char path[512];
                (void) snprintf(path, sizeof path, "%s/outer-login", dir);
                int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (fd < 0 || write(fd, &sealed_first, 1) != 1 || write(fd, outer, len) != (ssize_t) len)
                        abort();
                close(fd);
                free(plain);
                free(outer);
        }
        Management__EncryptedMessage em = MANAGEMENT__ENCRYPTED_MESSAGE__INIT;
        em.wgpubkey = "not-a-key";
        em.body.data = (uint8_t *) "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        em.body.len = 48;
        put_seed(dir, "outer-badkey", sealed_first, &em.base);
}
