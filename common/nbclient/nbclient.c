/*
 * The agent side of the management protocol (cp/nbclient.h): keys, the
 * envelope, request bodies and gRPC C-core call helpers.
 */
#include "cp/base.h"
#include "cp/nbclient.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>

/* ---- peers ------------------------------------------------------------------- */

static void peer_format(cp_nbc_peer *p) {
        cp_crypto_wg_key_format(p->pub, p->pub_b64);
        p->have_shared = false;
}

void cp_nbc_peer_generate(cp_nbc_peer *p) {
        memset(p, 0, sizeof *p);
        cp_crypto_wg_keypair_new(p->priv, p->pub);
        peer_format(p);
}

int cp_nbc_peer_from_private(cp_nbc_peer *p, const uint8_t priv[CP_WG_KEY_LEN]) {
        uint8_t pub[CP_WG_KEY_LEN];
        int r = cp_crypto_wg_public_from_private(priv, pub, NULL);

        if (r < 0)
                return r;
        memset(p, 0, sizeof *p);
        memcpy(p->priv, priv, CP_WG_KEY_LEN);
        memcpy(p->pub, pub, CP_WG_KEY_LEN);
        peer_format(p);
        return 0;
}

int cp_nbc_peer_set_server_key(cp_nbc_peer *p, const uint8_t server_pub[CP_WG_KEY_LEN]) {
        cp_crypto_box_shared s;
        int r;

        if (p->have_shared && memcmp(p->server_pub, server_pub, CP_WG_KEY_LEN) == 0)
                return 0;
        r = cp_crypto_box_shared_init(&s, server_pub, p->priv, NULL);
        if (r < 0)
                return r;
        cp_crypto_box_shared_release(&p->shared);
        p->shared = s;
        cp_explicit_bzero(&s, sizeof s);
        memcpy(p->server_pub, server_pub, CP_WG_KEY_LEN);
        p->have_shared = true;
        return 0;
}

void cp_nbc_peer_release(cp_nbc_peer *p) {
        if (!p)
                return;
        cp_crypto_box_shared_release(&p->shared);
        cp_explicit_bzero(p->priv, sizeof p->priv);
        p->have_shared = false;
}

/* ---- request bodies ------------------------------------------------------------ */

void cp_nbc_meta_init(cp_nbc_meta *m, const char *hostname) {
        Management__PeerSystemMeta init = MANAGEMENT__PEER_SYSTEM_META__INIT;

        memset(m, 0, sizeof *m);
        (void) snprintf(m->hostname, sizeof m->hostname, "%s", hostname);
        m->caps[0] = MANAGEMENT__PEER_CAPABILITY__PeerCapabilitySourcePrefixes;
        m->caps[1] = MANAGEMENT__PEER_CAPABILITY__PeerCapabilityIPv6Overlay;
        m->pb = init;
        m->pb.hostname = m->hostname;
        m->pb.goos = (char *) "linux";
        m->pb.kernel = (char *) "Linux";
        m->pb.core = (char *) "12";
        m->pb.platform = (char *) "x86_64";
        m->pb.os = (char *) "Debian GNU/Linux";
        m->pb.netbirdversion = (char *) "0.60.0";
        m->pb.kernelversion = (char *) "6.1.0-18-amd64";
        m->pb.osversion = (char *) "12";
        m->pb.n_capabilities = ELEMENTSOF(m->caps);
        m->pb.capabilities = m->caps;
        m->pb.syncmessageversion = 1;
}

static grpc_byte_buffer *bb_own(uint8_t *data, size_t n) {
        grpc_slice s = grpc_slice_new(data, n, free);
        grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);

        grpc_slice_unref(s);
        return bb;
}

grpc_byte_buffer *cp_nbc_seal(const cp_nbc_peer *p, const ProtobufCMessage *inner) {
        Management__EncryptedMessage em = MANAGEMENT__ENCRYPTED_MESSAGE__INIT;
        size_t n, sealed_len, out_len;
        uint8_t *plain, *sealed, *out;

        if (!p->have_shared)
                return NULL;
        n = protobuf_c_message_get_packed_size(inner);
        plain = cp_xmalloc(n + 1);
        (void) protobuf_c_message_pack(inner, plain);
        sealed_len = cp_crypto_box_sealed_len(n);
        sealed = cp_xmalloc(sealed_len);
        if (cp_crypto_box_seal_shared(&p->shared, plain, n, sealed, sealed_len, NULL) < 0) {
                free(plain);
                free(sealed);
                return NULL;
        }
        free(plain);
        em.wgpubkey = (char *) p->pub_b64;
        em.body.data = sealed;
        em.body.len = sealed_len;
        out_len = management__encrypted_message__get_packed_size(&em);
        out = cp_xmalloc(out_len + 1);
        (void) management__encrypted_message__pack(&em, out);
        free(sealed);
        return bb_own(out, out_len);
}

grpc_byte_buffer *cp_nbc_login_request(const cp_nbc_peer *p, const cp_nbc_meta *meta, const char *setup_key) {
        Management__LoginRequest req = MANAGEMENT__LOGIN_REQUEST__INIT;

        req.meta = (Management__PeerSystemMeta *) &meta->pb;
        if (setup_key)
                req.setupkey = (char *) setup_key;
        return cp_nbc_seal(p, &req.base);
}

grpc_byte_buffer *cp_nbc_sync_request(const cp_nbc_peer *p, const cp_nbc_meta *meta) {
        Management__SyncRequest req = MANAGEMENT__SYNC_REQUEST__INIT;

        req.meta = (Management__PeerSystemMeta *) &meta->pb;
        return cp_nbc_seal(p, &req.base);
}

uint8_t *cp_nbc_bb_read(grpc_byte_buffer *bb, size_t *ret_len) {
        grpc_byte_buffer_reader rd;
        grpc_slice s;
        uint8_t *out;
        size_t n;

        if (!bb || !grpc_byte_buffer_reader_init(&rd, bb))
                return NULL;
        s = grpc_byte_buffer_reader_readall(&rd);
        grpc_byte_buffer_reader_destroy(&rd);
        n = GRPC_SLICE_LENGTH(s);
        out = cp_xmalloc(n + 1);
        memcpy(out, GRPC_SLICE_START_PTR(s), n);
        grpc_slice_unref(s);
        *ret_len = n;
        return out;
}

int cp_nbc_open(const cp_nbc_peer *p, grpc_byte_buffer *bb, uint8_t **ret_plain, size_t *ret_len) {
        Management__EncryptedMessage *em;
        uint8_t *data, *plain;
        size_t len, n;
        int r;

        if (!p->have_shared)
                return -EBADMSG;
        data = cp_nbc_bb_read(bb, &len);
        if (!data)
                return -EBADMSG;
        em = management__encrypted_message__unpack(NULL, len, data);
        free(data);
        if (!em || em->body.len < CP_BOX_OVERHEAD) {
                if (em)
                        management__encrypted_message__free_unpacked(em, NULL);
                return -EBADMSG;
        }
        n = em->body.len - CP_BOX_OVERHEAD;
        plain = cp_xmalloc(n + 1);
        r = cp_crypto_box_open_shared(&p->shared, em->body.data, em->body.len, plain, n + 1, NULL);
        management__encrypted_message__free_unpacked(em, NULL);
        if (r < 0) {
                free(plain);
                return -EBADMSG;
        }
        *ret_plain = plain;
        *ret_len = (size_t) r;
        return 0;
}

int cp_nbc_server_key_parse(grpc_byte_buffer *bb, uint8_t ret[CP_WG_KEY_LEN]) {
        Management__ServerKeyResponse *k;
        uint8_t key[CP_WG_KEY_LEN];
        size_t len;
        uint8_t *data = cp_nbc_bb_read(bb, &len);
        int r;

        if (!data)
                return -EBADMSG;
        k = management__server_key_response__unpack(NULL, len, data);
        free(data);
        if (!k)
                return -EBADMSG;
        r = cp_crypto_wg_key_parse(k->key, key, NULL);
        management__server_key_response__free_unpacked(k, NULL);
        if (r < 0)
                return -EBADMSG;
        memcpy(ret, key, CP_WG_KEY_LEN);
        return 0;
}

/* One varint at *p (below end); advances *p. false when cut short or
 * longer than 10 bytes. */
static bool wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *ret) {
        uint64_t v = 0;

        for (int shift = 0; shift < 70 && *p < end; shift += 7) {
                uint8_t b = *(*p)++;
                v |= (uint64_t) (b & 0x7f) << shift;
                if (!(b & 0x80)) {
                        *ret = v;
                        return true;
                }
        }
        return false;
}

/* Walks the fields of one message in [p, end): calls on_field for each
 * (number, wire type, its varint value or its bytes). false when the
 * wire format is broken. */
typedef bool (*wire_field_fn)(uint32_t field, unsigned type, uint64_t v, const uint8_t *data, size_t len,
                              void *userdata);
static bool wire_walk(const uint8_t *p, const uint8_t *end, wire_field_fn on_field, void *userdata) {
        while (p < end) {
                uint64_t tag, v = 0, n;
                const uint8_t *data = NULL;

                if (!wire_varint(&p, end, &tag) || (tag >> 3) == 0 || (tag >> 3) > UINT32_MAX)
                        return false;
                switch (tag & 7) {
                case 0:
                        if (!wire_varint(&p, end, &v))
                                return false;
                        break;
                case 1:
                case 5:
                        n = (tag & 7) == 1 ? 8 : 4;
                        if ((size_t) (end - p) < n)
                                return false;
                        p += n;
                        break;
                case 2:
                        if (!wire_varint(&p, end, &n) || n > (uint64_t) (end - p))
                                return false;
                        data = p;
                        v = n;
                        p += n;
                        break;
                default:
                        return false;   /* groups are not used by this protocol */
                }
                if (!on_field((uint32_t) (tag >> 3), (unsigned) (tag & 7), v, data, data ? (size_t) v : 0, userdata))
                        return false;
        }
        return true;
}

typedef struct serial_scan {
        bool have_map;
        uint64_t serial;
} serial_scan;

static bool on_map_field(uint32_t field, unsigned type, uint64_t v, const uint8_t *data, size_t len, void *userdata) {
        serial_scan *x = userdata;

        if (field == 1 && type == 0)    /* NetworkMap.Serial */
                x->serial = v;
        return true;
}

static bool on_response_field(uint32_t field, unsigned type, uint64_t v, const uint8_t *data, size_t len,
                              void *userdata) {
        serial_scan *x = userdata;

        if (field != 5 || type != 2)    /* SyncResponse.NetworkMap */
                return true;
        /* Repeated occurrences of a message field merge: the last serial wins. */
        x->have_map = true;
        return wire_walk(data, data + len, on_map_field, x);
}

int64_t cp_nbc_sync_serial(const uint8_t *plain, size_t len, size_t *ret_remote) {
        Management__SyncResponse *sr;
        int64_t serial = -1;

        if (!ret_remote) {
                /* Only the serial: a walk over the wire format instead of
                 * unpacking the whole map (the load tool reads thousands of
                 * maps a second on one thread). */
                serial_scan x = { 0 };
                if (!wire_walk(plain, plain + len, on_response_field, &x) || !x.have_map || x.serial > INT64_MAX)
                        return -1;
                return (int64_t) x.serial;
        }
        sr = management__sync_response__unpack(NULL, len, plain);
        if (!sr)
                return -1;
        if (sr->networkmap) {
                serial = (int64_t) sr->networkmap->serial;
                if (ret_remote)
                        *ret_remote = sr->networkmap->n_remotepeers;
        }
        management__sync_response__free_unpacked(sr, NULL);
        return serial;
}

/* ---- channels and calls ----------------------------------------------------------- */

grpc_channel *cp_nbc_channel_new(const char *target, bool own_connection) {
        grpc_channel_credentials *creds = grpc_insecure_credentials_create();
        grpc_arg args[2] = {
                { .type = GRPC_ARG_INTEGER, .key = (char *) GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                  .value.integer = CP_NBC_MAX_RECV },
                { .type = GRPC_ARG_INTEGER, .key = (char *) GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL,
                  .value.integer = 1 },
        };
        grpc_channel_args ca = { .num_args = own_connection ? 2 : 1, .args = args };
        grpc_channel *ch = grpc_channel_create(target, creds, &ca);

        grpc_channel_credentials_release(creds);
        return ch;
}

static gpr_timespec deadline_ms(int ms) {
        if (ms <= 0)
                return gpr_inf_future(GPR_CLOCK_MONOTONIC);
        return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

int cp_nbc_call_start(cp_nbc_call *c, grpc_channel *ch, grpc_completion_queue *cq, const char *method,
                      grpc_byte_buffer *req, int timeout_ms, bool stream, void *tag, void *status_tag) {
        return cp_nbc_call_start_md(c, ch, cq, method, req, timeout_ms, stream, tag, status_tag, NULL, 0);
}

int cp_nbc_call_start_md(cp_nbc_call *c, grpc_channel *ch, grpc_completion_queue *cq, const char *method,
                         grpc_byte_buffer *req, int timeout_ms, bool stream, void *tag, void *status_tag,
                         grpc_metadata *md, size_t n_md) {
        grpc_slice m = grpc_slice_from_static_string(method);
        grpc_op ops[6];
        size_t n = 0;

        memset(c, 0, sizeof *c);
        grpc_metadata_array_init(&c->md_in);
        grpc_metadata_array_init(&c->md_trail);
        c->details = grpc_empty_slice();
        c->status = GRPC_STATUS_UNKNOWN;
        c->started = true;
        if (!req) {
                grpc_slice empty = grpc_empty_slice();
                req = grpc_raw_byte_buffer_create(&empty, 0);
        }
        c->send = req;
        c->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m, NULL, deadline_ms(timeout_ms),
                                           NULL);
        memset(ops, 0, sizeof ops);
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n].data.send_initial_metadata.count = n_md;
        ops[n++].data.send_initial_metadata.metadata = md;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = c->send;
        ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &c->md_in;
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n++].data.recv_message.recv_message = &c->recv;
        if (!stream) {
                ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
                ops[n].data.recv_status_on_client.trailing_metadata = &c->md_trail;
                ops[n].data.recv_status_on_client.status = &c->status;
                ops[n++].data.recv_status_on_client.status_details = &c->details;
        }
        if (grpc_call_start_batch(c->call, ops, n, tag, NULL) != GRPC_CALL_OK) {
                cp_nbc_call_release(c);
                return -EIO;
        }
        if (!stream)
                return 0;
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        ops[0].data.recv_status_on_client.trailing_metadata = &c->md_trail;
        ops[0].data.recv_status_on_client.status = &c->status;
        ops[0].data.recv_status_on_client.status_details = &c->details;
        if (grpc_call_start_batch(c->call, ops, 1, status_tag, NULL) != GRPC_CALL_OK) {
                /* The first batch is out: cancel so that it completes; the
                 * caller releases the call after its tag. */
                grpc_call_cancel(c->call, NULL);
                c->status = GRPC_STATUS_INTERNAL;
                return -EIO;
        }
        return 0;
}

int cp_nbc_call_recv(cp_nbc_call *c, void *tag) {
        grpc_op op;

        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &c->recv;
        return grpc_call_start_batch(c->call, &op, 1, tag, NULL) == GRPC_CALL_OK ? 0 : -EIO;
}

grpc_byte_buffer *cp_nbc_call_take(cp_nbc_call *c) {
        return TAKE_PTR(c->recv);
}

void cp_nbc_call_cancel(cp_nbc_call *c) {
        if (c->call)
                (void) grpc_call_cancel(c->call, NULL);
}

void cp_nbc_call_release(cp_nbc_call *c) {
        if (!c || !c->started)
                return;
        if (c->send)
                grpc_byte_buffer_destroy(c->send);
        if (c->recv)
                grpc_byte_buffer_destroy(c->recv);
        grpc_slice_unref(c->details);
        grpc_metadata_array_destroy(&c->md_in);
        grpc_metadata_array_destroy(&c->md_trail);
        if (c->call)
                grpc_call_unref(c->call);
        memset(c, 0, sizeof *c);
}

char *cp_nbc_call_details(const cp_nbc_call *c) {
        return cp_xstrndup((const char *) GRPC_SLICE_START_PTR(c->details), GRPC_SLICE_LENGTH(c->details));
}

/* ---- blocking helpers ------------------------------------------------------------ */

int cp_nbc_wait(grpc_completion_queue *cq, void *tag, int timeout_ms) {
        grpc_event ev = grpc_completion_queue_pluck(cq, tag, deadline_ms(timeout_ms), NULL);

        if (ev.type == GRPC_QUEUE_TIMEOUT)
                return -ETIMEDOUT;
        return ev.type == GRPC_OP_COMPLETE && ev.success ? 0 : -EIO;
}

int cp_nbc_unary(grpc_channel *ch, grpc_completion_queue *cq, const char *method, grpc_byte_buffer *req,
                 int timeout_ms, grpc_status_code *ret_status, grpc_byte_buffer **ret_resp) {
        cp_nbc_call c;
        int tag, r;

        r = cp_nbc_call_start(&c, ch, cq, method, req, timeout_ms, false, &tag, NULL);
        if (r < 0)
                return r;
        /* The call has its own deadline; wait a little longer for it. */
        r = cp_nbc_wait(cq, &tag, timeout_ms > 0 ? timeout_ms + 5000 : 0);
        if (r == -ETIMEDOUT) {
                cp_nbc_call_cancel(&c);
                (void) cp_nbc_wait(cq, &tag, 0);
        }
        if (r < 0) {
                cp_nbc_call_release(&c);
                return r;
        }
        *ret_status = c.status;
        *ret_resp = cp_nbc_call_take(&c);
        cp_nbc_call_release(&c);
        return 0;
}

int cp_nbc_get_server_key(grpc_channel *ch, grpc_completion_queue *cq, int timeout_ms,
                          uint8_t ret[CP_WG_KEY_LEN]) {
        grpc_status_code st;
        grpc_byte_buffer *resp;
        int r = cp_nbc_unary(ch, cq, CP_NBC_GET_SERVER_KEY, NULL, timeout_ms, &st, &resp);

        if (r < 0)
                return r;
        if (st != GRPC_STATUS_OK)
                r = -EPROTO;
        else
                r = cp_nbc_server_key_parse(resp, ret);
        if (resp)
                grpc_byte_buffer_destroy(resp);
        return r;
}
