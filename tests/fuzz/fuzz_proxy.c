/*
 * fuzz_proxy: what the ProxyService parses from a reverse proxy (or from a
 * browser through one) before the store is asked:
 *   - every request type of proxy_service.proto through
 *     mgmt_proxy_decode() (services/management/proxy), the one decoder of
 *     the unary calls (into the call's arena, bit 6 clear) and the mapping
 *     streams (malloc, bit 6 set), with its size limit and arena budget;
 *     a decoded message is packed back as answers are;
 *   - session tokens (ValidateSession; common/proxyauth
 *     cp_proxyauth_session_verify) against a fixed service key: the
 *     bytes as the token text, or, in the signing mode, as the header and
 *     claims of a token the harness signs with the service key, so the
 *     claim checks after the signature are reached;
 *   - the OIDC state of the sign-in callback (cp_proxyauth_state_check):
 *     the bytes as the state, or, in the signing mode, as the redirect URL
 *     of a state the harness makes, which must come back unchanged.
 *
 * Input: byte 0 chooses (low 5 bits, modulo the choices; bit 7 = signing
 * mode, bit 6 = decode with malloc), the rest is the message.
 *
 * CP_FUZZ_WRITE_SEEDS=DIR writes the seed corpus to DIR and exits.
 */
#include "cp/base.h"
#include "cp/proxyauth.h"
#include "cp-methods.h"
#include "mgmt-arena.h"
#include "mgmt-proxy-int.h"

#include <fcntl.h>
#include <grpc/byte_buffer.h>
#include <grpc/slice.h>
#include <sodium.h>

#include "proxy_service.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define NOW_S 1765000000

static const uint8_t seed[32] = { 0x51, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                  17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 0x52 };
static const uint8_t state_key[32] = { 0x61, 0x62, 0x63 };
static uint8_t pub[32], sk[64], prev_pub[32];

/* The request messages: each method's, plus the stream messages. */
static const ProtobufCMessageDescriptor *messages[_CP_PROTO_PROXY_MAX + 2];
static size_t n_messages;
enum { EXTRA_SESSION, EXTRA_STATE, N_EXTRA };

static void write_seeds(const char *dir);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        uint8_t other[32] = { 0x77 }, osk[64];

        if (sodium_init() < 0)
                abort();
        crypto_sign_seed_keypair(pub, sk, seed);
        crypto_sign_seed_keypair(prev_pub, osk, other);
        for (int i = 0; i < _CP_PROTO_PROXY_MAX; i++)
                messages[n_messages++] = cp_proto_proxy_methods[i].request;
        if (getenv("CP_FUZZ_WRITE_SEEDS")) {
                write_seeds(getenv("CP_FUZZ_WRITE_SEEDS"));
                exit(0);
        }
        return 0;
}

static char *b64url(const uint8_t *p, size_t n) {
        size_t len = sodium_base64_encoded_len(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        char *out = cp_xmalloc(len);

        sodium_bin2base64(out, len, p, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        return out;
}

/* header "." claims, from the bytes split at the first '\n', signed. */
static char *sign_token(const uint8_t *p, size_t n) {
        const uint8_t *nl = memchr(p, '\n', n);
        size_t hn = nl ? (size_t) (nl - p) : 0;
        const uint8_t *cl = nl ? nl + 1 : p;
        size_t cn = nl ? n - hn - 1 : n;
        _cleanup_free_ char *h = nl ? b64url(p, hn) : cp_xstrdup("eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9");
        _cleanup_free_ char *c = b64url(cl, cn);
        _cleanup_free_ char *signing = cp_xasprintf("%s.%s", h, c);
        uint8_t sig[64];

        crypto_sign_detached(sig, NULL, (const uint8_t *) signing, strlen(signing), sk);
        _cleanup_free_ char *s = b64url(sig, sizeof sig);
        return cp_xasprintf("%s.%s", signing, s);
}

static void session(const uint8_t *p, size_t n, bool sign) {
        _cleanup_free_ char *token = sign ? sign_token(p, n) : cp_xstrndup((const char *) p, n);
        cp_proxyauth_verified v = { 0 };
        cp_error err = { 0 };

        if (cp_proxyauth_session_verify(pub, prev_pub, token, "app.example.com", NOW_S, &v, &err) == 0) {
                if (!v.sub || !v.sub[0])
                        abort();        /* a valid token always names someone */
                cp_proxyauth_verified_release(&v);
        }
}

static void state(const uint8_t *p, size_t n, bool make) {
        _cleanup_free_ char *text = cp_xstrndup((const char *) p, n);
        _cleanup_free_ char *st = NULL, *redirect = NULL;
        cp_error err = { 0 };

        if (!make) {
                (void) cp_proxyauth_state_check(state_key, text, &redirect, &err);
                return;
        }
        if (cp_proxyauth_state_new(state_key, text, &st, &err) < 0)
                return;
        if (strlen(st) > 8192)
                return;         /* longer than the check takes */
        if (cp_proxyauth_state_check(state_key, st, &redirect, &err) < 0 || strcmp(redirect, text) != 0)
                abort();        /* our own state must come back as it went in */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        size_t choice = (data[0] & 0x1f) % (n_messages + N_EXTRA);
        bool sign = data[0] & 0x80;
        const uint8_t *p = data + 1;
        size_t n = size - 1;

        if (choice == n_messages + EXTRA_SESSION) {
                session(p, n, sign);
                return 0;
        }
        if (choice == n_messages + EXTRA_STATE) {
                state(p, n, sign);
                return 0;
        }
        /* Unary calls decode into the call's arena, the mapping streams
         * with malloc (bit 6). */
        bool in_arena = !(data[0] & 0x40);
        mgmt_arena arena;
        grpc_slice slice = grpc_slice_from_copied_buffer((const char *) p, n);
        grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
        grpc_status_code st = GRPC_STATUS_OK;
        char msg[160] = "";

        grpc_slice_unref(slice);
        mgmt_arena_init(&arena);
        ProtobufCMessage *m = mgmt_proxy_decode(&cp_proto_proxy_methods[choice], bb, in_arena ? &arena : NULL,
                                                false, &st, msg, sizeof msg);
        if (m) {
                size_t len = protobuf_c_message_get_packed_size(m);
                uint8_t *out = mgmt_arena_alloc(&arena, len + 1);
                if (protobuf_c_message_pack(m, out) != len)
                        abort();
                if (!in_arena)
                        protobuf_c_message_free_unpacked(m, NULL);
        } else if (st == GRPC_STATUS_OK || !msg[0])
                abort();        /* a refusal always says why */
        grpc_byte_buffer_destroy(bb);
        mgmt_arena_release(&arena);
        return 0;
}

/* ---- seeds ------------------------------------------------------------------- */

static void put(const char *dir, const char *name, uint8_t first, const void *p, size_t n) {
        char path[512];
        int fd;

        (void) snprintf(path, sizeof path, "%s/%s", dir, name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, &first, 1) != 1 || write(fd, p, n) != (ssize_t) n)
                abort();
        close(fd);
}

static void put_msg(const char *dir, const char *name, cp_proto_proxy_method_id id, const ProtobufCMessage *m) {
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *buf = cp_xmalloc(n + 1);

        n = protobuf_c_message_pack(m, buf);
        put(dir, name, (uint8_t) id, buf, n);
        free(buf);
}

static void write_seeds(const char *dir) {
        Management__GetMappingUpdateRequest gm = MANAGEMENT__GET_MAPPING_UPDATE_REQUEST__INIT;
        Management__ProxyCapabilities caps = MANAGEMENT__PROXY_CAPABILITIES__INIT;
        Management__AuthenticateRequest au = MANAGEMENT__AUTHENTICATE_REQUEST__INIT;
        Management__PasswordRequest pw = MANAGEMENT__PASSWORD_REQUEST__INIT;
        Management__ValidateSessionRequest vs = MANAGEMENT__VALIDATE_SESSION_REQUEST__INIT;
        Management__SendAccessLogRequest sl = MANAGEMENT__SEND_ACCESS_LOG_REQUEST__INIT;
        Management__AccessLog al = MANAGEMENT__ACCESS_LOG__INIT;
        Management__SendStatusUpdateRequest su = MANAGEMENT__SEND_STATUS_UPDATE_REQUEST__INIT;
        Management__GetOIDCURLRequest ou = MANAGEMENT__GET_OIDCURLREQUEST__INIT;
        Management__CreateProxyPeerRequest cp = MANAGEMENT__CREATE_PROXY_PEER_REQUEST__INIT;
        Management__ValidateTunnelPeerRequest vt = MANAGEMENT__VALIDATE_TUNNEL_PEER_REQUEST__INIT;
        cp_proxyauth_claims cl = { .sub = "user-1", .domain = "app.example.com", .method = "password",
                                   .email = "u@example.com" };
        _cleanup_free_ char *tok = NULL, *st = NULL;
        cp_error err = { 0 };

        gm.proxy_id = "proxy-1";
        gm.version = "0.60.0";
        gm.address = "proxy.example.com";
        caps._supports_custom_ports_case = MANAGEMENT__PROXY_CAPABILITIES___SUPPORTS_CUSTOM_PORTS_SUPPORTS_CUSTOM_PORTS;
        caps.supports_custom_ports = true;
        gm.capabilities = &caps;
        put_msg(dir, "get-mapping-update", CP_PROTO_PROXY_GET_MAPPING_UPDATE, &gm.base);

        au.id = "svc-1";
        au.account_id = "acc-1";
        pw.password = "hunter2";
        au.request_case = MANAGEMENT__AUTHENTICATE_REQUEST__REQUEST_PASSWORD;
        au.password = &pw;
        put_msg(dir, "authenticate-password", CP_PROTO_PROXY_AUTHENTICATE, &au.base);

        if (cp_proxyauth_session_sign(seed, &cl, NOW_S - 10, 3600, &tok, &err) < 0)
                abort();
        vs.domain = "app.example.com";
        vs.session_token = tok;
        put_msg(dir, "validate-session", CP_PROTO_PROXY_VALIDATE_SESSION, &vs.base);
        put(dir, "session-token", (uint8_t) (n_messages + EXTRA_SESSION), tok, strlen(tok));
        {
                const char *claims = "{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}\n"
                                     "{\"sub\":\"u1\",\"iss\":\"netbird-management\",\"aud\":[\"app.example.com\"],"
                                     "\"exp\":1765003600,\"nbf\":1764999990,\"iat\":1764999990,\"method\":\"pin\"}";
                put(dir, "session-signed", (uint8_t) (0x80 | (n_messages + EXTRA_SESSION)), claims, strlen(claims));
        }

        if (cp_proxyauth_state_new(state_key, "https://app.example.com/after?x=1", &st, &err) < 0)
                abort();
        put(dir, "oidc-state", (uint8_t) (n_messages + EXTRA_STATE), st, strlen(st));
        put(dir, "oidc-state-make", (uint8_t) (0x80 | (n_messages + EXTRA_STATE)), "https://a.example/cb", 20);

        al.log_id = "log-1";
        al.service_id = "svc-1";
        al.host = "app.example.com";
        al.path = "/index.html";
        al.method = "GET";
        al.response_code = 200;
        al.source_ip = "203.0.113.9";
        al.auth_mechanism = "password";
        al.user_id = "user-1";
        al.auth_success = true;
        sl.log = &al;
        put_msg(dir, "send-access-log", CP_PROTO_PROXY_SEND_ACCESS_LOG, &sl.base);

        su.service_id = "svc-1";
        su.account_id = "acc-1";
        su.status = MANAGEMENT__PROXY_STATUS__PROXY_STATUS_ACTIVE;
        su.certificate_issued = true;
        put_msg(dir, "send-status-update", CP_PROTO_PROXY_SEND_STATUS_UPDATE, &su.base);

        ou.id = "svc-1";
        ou.account_id = "acc-1";
        ou.redirect_url = "https://app.example.com/";
        put_msg(dir, "get-oidc-url", CP_PROTO_PROXY_GET_OIDCURL, &ou.base);

        cp.service_id = "svc-1";
        cp.account_id = "acc-1";
        cp.token = "onetime";
        cp.wireguard_public_key = "Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm8=";
        cp.cluster = "eu.proxy.example.com";
        put_msg(dir, "create-proxy-peer", CP_PROTO_PROXY_CREATE_PROXY_PEER, &cp.base);

        vt.domain = "app.example.com";
        vt.tunnel_ip = "100.64.0.7";
        put_msg(dir, "validate-tunnel-peer", CP_PROTO_PROXY_VALIDATE_TUNNEL_PEER, &vt.base);
}
