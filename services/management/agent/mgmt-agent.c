#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/util.h"
#include "mgmt-agent-int.h"
#include "mgmt-envelope.h"
#include "mgmt-metrics.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <stdarg.h>
#include <stdatomic.h>

#include "management.pb-c.h"

/* Request sizes (docs/protocol-limits.md has the same arithmetic).
 *
 * The largest legitimate sealed plaintext is a LoginRequest (SyncRequest
 * and SyncMetaRequest carry the same PeerSystemMeta, without the JWT)
 * from an agent with everything at the limits the store keeps
 * (cp/store-peers.h):
 *
 *   jwtToken (an IdP token with many group claims)         16 KiB
 *   14 meta strings of <= 256 B, dnsLabels 32 x 64 B         6 KiB
 *   networkAddresses: 1024 x (43 B IPv6 CIDR + 17 B MAC
 *     + 6 B of tags and lengths)                            66 KiB
 *   files: 1024 x (<= 160 B path + 8 B framing), the
 *     process paths of the posture checks                  168 KiB
 *   capabilities, flags, environment, peerKeys               < 1 KiB
 *                                                   total ~ 256 KiB
 *
 * Real agents send 1-20 KiB. The other requests carry at most a JWT
 * (ExtendAuthSession) or a few short strings (Expose, Job): 32 KiB.
 * The sealed body adds CP_BOX_OVERHEAD (40 B); the envelope adds the
 * key (2 + 44 B), the body's tag and length (<= 4 B) and the version
 * (<= 6 B): MAX_ENVELOPE_OVERHEAD. gRPC's receive limit (MGMT_GRPC_MAX_RECV,
 * 288 KiB) sits above the largest envelope. */
#define MAX_PLAIN_META MGMT_AGENT_MAX_PLAIN_META
#define MAX_PLAIN_OTHER (32 * 1024)
#define MAX_ENVELOPE_OVERHEAD 64
_Static_assert(MAX_PLAIN_META + CP_BOX_OVERHEAD + MAX_ENVELOPE_OVERHEAD <= MGMT_GRPC_MAX_RECV,
               "gRPC's receive limit is below the largest agent request");
#define UNPACK_BUDGET MGMT_AGENT_UNPACK_BUDGET
/* Payload bytes of encrypted unary RPCs waiting in the workers' queue
 * (2,048 jobs with the default pool): without a cap, 2,048 requests of
 * 288 KiB would hold 576 MiB before any of them is looked at. Past the
 * cap a call is answered like a full queue (RESOURCE_EXHAUSTED "server
 * is busy", which agents retry with backoff). 64 MiB is 230 requests at
 * the limit, or tens of thousands of real ones (1-20 KiB). */
#define MAX_QUEUED_BYTES (64 * 1024 * 1024)
static atomic_size_t queued_bytes;

/* The longest wgPubKey quoted back in an error message. */
#define MAX_KEY_ECHO 64

/* ---- outcome and logging --------------------------------------------------- */

void mgmt_agent_fail(mgmt_agent_op *op, grpc_status_code status, const char *fmt, ...) {
        va_list ap;
        char buf[512];

        va_start(ap, fmt);
        (void) vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        op->status = status;
        op->message = mgmt_arena_strdup(&op->arena, buf);
}

/* One line per RPC. Successful key fetches and health probes are debug:
 * agents call GetServerKey before every other call. */
void mgmt_agent_log_outcome(mgmt_call *c, const cp_proto_method *m, const char *peer_key, const char *account,
                            grpc_status_code status, const char *message, const char *detail) {
        mgmt_call_log_rpc(c, "agent", m->name, account, peer_key, status, m->request_body == NULL, message, detail);
}

/* ---- the envelope ------------------------------------------------------------ */

/* Opens the box with one server key pair of set version; on success
 * shared holds the pair's shared key (kept in the cache from now on) and
 * op->server_key its public half. */
static int open_with(mgmt_agent_op *op, uint64_t version, const mgmt_server_key *key,
                     const ProtobufCBinaryData *body, cp_crypto_box_shared *shared, uint8_t *plain, size_t cap,
                     cp_error *err) {
        int r = mgmt_keys_shared(op->agent->keys, key, op->peer_pub, shared, err);

        if (r < 0)
                return r;
        r = cp_crypto_box_open_shared(shared, body->data, body->len, plain, cap, err);
        if (r < 0) {
                cp_crypto_box_shared_release(shared);
                return r;
        }
        mgmt_keys_keep(op->agent->keys, version, key, op->peer_pub, shared);
        memcpy(op->server_key, key->pub_b64, sizeof op->server_key);
        return r;
}

/* Tries the keys held, newest first; when none opens the body, asks for
 * newer keys once (an agent may have fetched a key from a replica that
 * saw a rotation before this one). A low-order peer key fails at once:
 * no server key would help. */
static int open_body(mgmt_agent_op *op, const ProtobufCBinaryData *body, cp_crypto_box_shared *shared,
                     uint8_t *plain, size_t cap, cp_error *err) {
        mgmt_keys *keys = op->agent->keys;
        mgmt_key_set ks;
        int r = -EBADMSG;

        mgmt_keys_get(keys, &ks);
        for (int attempt = 0; attempt < 2; attempt++) {
                for (unsigned i = 0; i < ks.n; i++) {
                        r = open_with(op, ks.version, &ks.key[i], body, shared, plain, cap, err);
                        if (r >= 0 || r == -EINVAL)
                                goto out;
                }
                if (attempt > 0 || !mgmt_keys_reload_after_miss(keys, ks.version))
                        break;
                mgmt_key_set_wipe(&ks);
                mgmt_keys_get(keys, &ks);
        }
out:
        mgmt_key_set_wipe(&ks);
        return r;
}

/* The largest sealed plaintext a method's request may have. */
static size_t max_plain(const cp_proto_method *m) {
        if (m == &cp_proto_mgmt_methods[CP_PROTO_MGMT_LOGIN] || m == &cp_proto_mgmt_methods[CP_PROTO_MGMT_SYNC] ||
            m == &cp_proto_mgmt_methods[CP_PROTO_MGMT_SYNC_META])
                return MAX_PLAIN_META;
        return MAX_PLAIN_OTHER;
}

static void refuse_size(mgmt_agent_op *op, const char *what) {
        mgmt_agent_fail(op, GRPC_STATUS_RESOURCE_EXHAUSTED, "request message too large");
        (void) snprintf(op->detail, sizeof op->detail, "%s", what);
}

/* Opens the request in this order, so that nothing is decoded before the
 * box is open: the payload's size against the method's limit; the
 * envelope, read in place (mgmt-envelope.h: nothing allocated, unknown
 * fields skipped); the sender's key; the box, with the server keys held
 * (the shared key is looked up or derived); only then the inner message,
 * by protobuf-c into the arena under UNPACK_BUDGET. Returns 0, or sets
 * the failure NetBird reports (parseRequest: InvalidArgument "invalid
 * request message"; RESOURCE_EXHAUSTED for sizes, as gRPC's own limit
 * answers) and returns -1. */
int mgmt_agent_open_request(mgmt_agent_op *op, cp_crypto_box_shared *shared) {
        size_t limit = cp_crypto_box_sealed_len(max_plain(op->method));
        grpc_slice s = grpc_empty_slice();
        mgmt_envelope env;
        cp_error err = { 0 };
        const char *why;
        char key[CP_WG_KEY_B64_LEN];
        int r = -1;

        if (op->payload && grpc_byte_buffer_length(op->payload) > limit + MAX_ENVELOPE_OVERHEAD) {
                mgmt_metrics_refused("agent", MGMT_REFUSED_SIZE);
                refuse_size(op, "the request is over the method's size limit");
                return -1;
        }
        s = mgmt_payload_slice(op->payload);
        if (mgmt_envelope_parse(GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s), &env, &why) < 0) {
                mgmt_metrics_refused("agent", MGMT_REFUSED_ENVELOPE);
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "invalid request message");
                (void) snprintf(op->detail, sizeof op->detail, "cannot decode EncryptedMessage: %s", why);
                goto out;
        }
        /* wgPubKey as a C string for the parser; a longer one is invalid
         * anyway (a key is 44 characters) and quoted cut. */
        size_t kn = env.key_len < sizeof key - 1 ? env.key_len : sizeof key - 1;
        memcpy(key, env.key, kn);
        key[kn] = '\0';
        if (env.key_len != kn || strlen(key) != kn || cp_crypto_wg_key_parse(key, op->peer_pub, &err) < 0) {
                mgmt_metrics_refused("agent", MGMT_REFUSED_ENVELOPE);
                int echo = env.key_len < MAX_KEY_ECHO ? (int) env.key_len : MAX_KEY_ECHO;
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "provided wgPubKey %.*s is invalid", echo,
                                (const char *) env.key);
                goto out;
        }
        cp_crypto_wg_key_format(op->peer_pub, op->peer_key);
        if (env.body_len > limit) {
                mgmt_metrics_refused("agent", MGMT_REFUSED_SIZE);
                refuse_size(op, "the sealed body is over the method's size limit");
                goto out;
        }
        ProtobufCBinaryData body = { .len = env.body_len, .data = (uint8_t *) env.body };
        size_t cap = body.len > CP_BOX_OVERHEAD ? body.len - CP_BOX_OVERHEAD : 1;
        uint8_t *plain = mgmt_arena_alloc(&op->arena, cap);
        int n = open_body(op, &body, shared, plain, cap, &err);
        if (n < 0) {
                mgmt_metrics_refused("agent", MGMT_REFUSED_BOX);
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "invalid request message");
                (void) snprintf(op->detail, sizeof op->detail, "%s", err.message);
                goto out;
        }
        mgmt_arena_set_budget(&op->arena, UNPACK_BUDGET);
        op->request = protobuf_c_message_unpack(op->method->request_body, mgmt_arena_pb(&op->arena),
                                                (size_t) n, plain);
        bool over = mgmt_arena_over_budget(&op->arena);
        mgmt_arena_set_budget(&op->arena, 0);
        cp_explicit_bzero(plain, (size_t) n);
        if (!op->request && over) {
                mgmt_metrics_refused("agent", MGMT_REFUSED_BUDGET);
                refuse_size(op, "decoding the request went over its memory budget");
                goto out;
        }
        if (!op->request) {
                mgmt_metrics_refused("agent", MGMT_REFUSED_DECODE);
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "invalid request message");
                (void) snprintf(op->detail, sizeof op->detail, "cannot decode %s", op->method->request_body->name);
                goto out;
        }
        r = 0;
out:
        grpc_slice_unref(s);
        return r;
}

static uint8_t *pack(mgmt_arena *a, const ProtobufCMessage *m, size_t *ret_len) {
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *out = mgmt_arena_alloc(a, n ? n : 1);

        *ret_len = protobuf_c_message_pack(m, out);
        return out;
}

static size_t varint_len(size_t v) {
        size_t n = 1;

        while (v >= 0x80) {
                v >>= 7;
                n++;
        }
        return n;
}

static uint8_t *put_varint(uint8_t *p, size_t v) {
        while (v >= 0x80) {
                *p++ = (uint8_t) (v | 0x80);
                v >>= 7;
        }
        *p++ = (uint8_t) v;
        return p;
}

uint8_t *mgmt_agent_seal_msg(const char *server_key, const cp_crypto_box_shared *shared, const void *plain,
                             size_t len, size_t *ret_len, cp_error *reterr) {
        /* EncryptedMessage as protoc-c packs it: wgPubKey (field 1, string),
         * body (field 2, bytes); version stays 0 and is left out. Written
         * by hand so the body is sealed in place, in the one buffer the
         * stream queues and gRPC sends. */
        size_t key_len = strlen(server_key), body_len = cp_crypto_box_sealed_len(len);
        size_t total = 1 + varint_len(key_len) + key_len + 1 + varint_len(body_len) + body_len;
        uint8_t *out = cp_xmalloc(total), *p = out;

        *p++ = 0x0a;
        p = put_varint(p, key_len);
        memcpy(p, server_key, key_len);
        p += key_len;
        *p++ = 0x12;
        p = put_varint(p, body_len);
        int r = cp_crypto_box_seal_shared(shared, plain, len, p, body_len, reterr);
        if (r < 0 || (size_t) r != body_len) {
                free(out);
                if (r >= 0)
                        (void) cp_error_set(reterr, -EIO, "sealed %d bytes, expected %zu", r, body_len);
                return NULL;
        }
        *ret_len = total;
        return out;
}

/* Turns op->response into op->reply: sealed to the peer inside an
 * EncryptedMessage carrying the server key, or plain for methods whose
 * answer is plaintext (SyncMeta, Logout: Empty). */
static void seal_response(mgmt_agent_op *op, const cp_crypto_box_shared *shared) {
        Management__Empty empty = MANAGEMENT__EMPTY__INIT;
        const ProtobufCMessage *resp = op->response ? op->response : &empty.base;
        size_t plain_len, sealed_len;
        uint8_t *plain = pack(&op->arena, resp, &plain_len);
        cp_error err = { 0 };

        if (!op->method->response_body) {
                op->reply = plain;
                op->reply_len = plain_len;
                return;
        }
        /* The one EncryptedMessage writer (also for streams); unary
         * answers are small, so it is copied into the RPC's arena. */
        uint8_t *sealed = mgmt_agent_seal_msg(op->server_key, shared, plain, plain_len, &sealed_len, &err);
        cp_explicit_bzero(plain, plain_len);
        if (!sealed) {
                mgmt_agent_fail(op, GRPC_STATUS_INTERNAL, "failed handling request");
                (void) snprintf(op->detail, sizeof op->detail, "cannot seal the response: %s", err.message);
                return;
        }
        op->reply = mgmt_arena_alloc(&op->arena, sealed_len);
        memcpy(op->reply, sealed, sealed_len);
        op->reply_len = sealed_len;
        free(sealed);
}

/* ---- encrypted RPCs: worker side --------------------------------------------- */

/* A Login that failed on what the client sent (a bad envelope or box,
 * an unknown peer, a bad setup key) takes a token of its address's
 * bucket (login_admitted). Not a server-side failure, nor a refusal by
 * the setup key's own limit. */
static void login_charge(const mgmt_agent_op *op) {
        const char *ip;

        switch (op->status) {
        case GRPC_STATUS_INVALID_ARGUMENT:
        case GRPC_STATUS_UNAUTHENTICATED:
        case GRPC_STATUS_PERMISSION_DENIED:
        case GRPC_STATUS_NOT_FOUND:
        case GRPC_STATUS_RESOURCE_EXHAUSTED:
                break;
        default:
                return;
        }
        if (op->rate_limited)
                return;
        ip = mgmt_call_peer_ip(op->call);
        if (*ip) {
                char key[CP_RATELIMIT_ADDR_KEY_LEN];
                size_t len = cp_ratelimit_addr_key(ip, key);
                (void) cp_ratelimit_take(mgmt_limits_table(op->agent->limits, MGMT_LIMIT_LOGIN_ADDR), key, len,
                                         cp_now_mono_ms(), NULL);
        }
}

static void op_work(void *userdata) {
        mgmt_agent_op *op = userdata;
        cp_crypto_box_shared shared = { { 0 } };

        op->status = GRPC_STATUS_OK;
        atomic_fetch_sub(&queued_bytes, op->queued);
        op->queued = 0;
        if (mgmt_call_is_over(op->call)) {
                /* The client left, or shutdown cancelled the call, while
                 * the job was queued: nobody waits for the answer. */
                mgmt_agent_fail(op, GRPC_STATUS_CANCELLED, "call cancelled");
                goto log;
        }
        int r = mgmt_agent_open_request(op, &shared);
        /* Opened (or refused): the bytes are not needed any more. */
        if (op->payload)
                grpc_byte_buffer_destroy(op->payload);
        op->payload = NULL;
        if (r == 0) {
                op->handler(op);
                if (op->status == GRPC_STATUS_OK)
                        seal_response(op, &shared);
        }
        cp_crypto_box_shared_release(&shared);
log:
        mgmt_agent_log_outcome(op->call, op->method, op->peer_key, op->account, op->status, op->message, op->detail);
        /* A rate limit's refusal is counted in netbird_cp_rate_limited_total
         * only: it is no failure of the server (NetbirdCPLoginErrors). */
        if (op->method == &cp_proto_mgmt_methods[CP_PROTO_MGMT_LOGIN]) {
                login_charge(op);
                if (!op->rate_limited)
                        mgmt_metrics_login(op->registration, op->status);
        }
}

static void op_done(mgmt_call *c, void *userdata) {
        mgmt_agent_op *op = userdata;

        mgmt_call_reply(c, op->status, op->message, op->reply, op->reply_len);
        if (op->payload)
                grpc_byte_buffer_destroy(op->payload);
        if (op->wipe)
                mgmt_arena_release_wiped(&op->arena);
        else
                mgmt_arena_release(&op->arena);
        free(op);
}

/* Login per source address (--login-rate): only failed Logins take a
 * token (login_charge); an address whose bucket they emptied is refused
 * here, on the CQ thread, before the envelope costs anything. A known
 * peer's Login (agents log in before every Sync) takes none, so agents
 * behind one address are never refused for their own reconnects.
 * RESOURCE_EXHAUSTED is what NetBird's agent retries with backoff
 * (docs/ops.md "Limits"). */
static bool login_admitted(mgmt_call *c, const mgmt_agent *a) {
        const char *ip = mgmt_call_peer_ip(c);
        char key[CP_RATELIMIT_ADDR_KEY_LEN];
        int64_t retry_ms = 0;

        if (!*ip)
                return true;
        size_t len = cp_ratelimit_addr_key(ip, key);
        if (cp_ratelimit_check(mgmt_limits_table(a->limits, MGMT_LIMIT_LOGIN_ADDR), key, len, cp_now_mono_ms(),
                               &retry_ms))
                return true;
        mgmt_limits_count(MGMT_LIMIT_LOGIN_ADDR);
        char detail[64];
        (void) snprintf(detail, sizeof detail, "login rate limit of the address (retry in %lld ms)",
                        (long long) retry_ms);
        mgmt_agent_log_outcome(c, &cp_proto_mgmt_methods[CP_PROTO_MGMT_LOGIN], NULL, NULL,
                               GRPC_STATUS_RESOURCE_EXHAUSTED, MGMT_MSG_RATE_LIMITED, detail);
        mgmt_call_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, MGMT_MSG_RATE_LIMITED);
        return false;
}

int mgmt_agent_offload(mgmt_call *c, const mgmt_agent *a, cp_proto_mgmt_method_id id, mgmt_agent_handler handler) {
        mgmt_agent_op *op;
        int r;

        if (id == CP_PROTO_MGMT_LOGIN && !login_admitted(c, a))
                return -EAGAIN;
        op = cp_xcalloc(1, sizeof *op);
        op->agent = a;
        op->call = c;
        op->handler = handler;
        op->method = &cp_proto_mgmt_methods[id];
        op->payload = mgmt_call_take_payload(c);
        mgmt_arena_init(&op->arena);
        op->queued = op->payload ? grpc_byte_buffer_length(op->payload) : 0;
        if (atomic_fetch_add(&queued_bytes, op->queued) + op->queued > MAX_QUEUED_BYTES)
                r = -EAGAIN;
        else
                r = mgmt_call_offload(c, op_work, op_done, op);
        if (r < 0) {
                atomic_fetch_sub(&queued_bytes, op->queued);
                if (r == -EAGAIN)
                        mgmt_metrics_refused("agent", MGMT_REFUSED_QUEUE);
                const char *msg = "server is busy, please try again later";
                grpc_status_code st = r == -EAGAIN ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_UNAVAILABLE;
                mgmt_agent_log_outcome(c, op->method, NULL, NULL, st, msg, r == -EAGAIN ? "worker queue full" : NULL);
                if (id == CP_PROTO_MGMT_LOGIN)
                        mgmt_metrics_login(false, st);
                mgmt_call_finish(c, st, msg);
                if (op->payload)
                        grpc_byte_buffer_destroy(op->payload);
                free(op);
        }
        return r;
}


/* ---- the location of a connection ---------------------------------------------------- */

const cp_store_peer_location *mgmt_peer_location(const mgmt_agent *ag, const char *ip, cp_geo_location *loc,
                                                 cp_store_peer_location *where) {
        cp_error err = { 0 };
        int r;

        if (!ip || !*ip || !cp_geo_can_lookup(ag->geo))
                return NULL;
        r = cp_geo_lookup(ag->geo, ip, loc, &err);
        if (r != 1) {
                if (r < 0) {
                        static const cp_log_ctx geo_log = { .component = "geo" };
                        cp_log_kv(&geo_log, CP_LOG_WARN, "cannot look up the connection address",
                                  "ip", ip, "error", err.message, NULL);
                }
                return NULL;
        }
        *where = (cp_store_peer_location) { .country_code = loc->country_code, .city_name = loc->city_name,
                                            .geoname_id = loc->geoname_id };
        return where;
}
