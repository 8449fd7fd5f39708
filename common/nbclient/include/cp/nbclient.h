/*
 * cp/nbclient.h: the agent side of NetBird's management protocol over the
 * gRPC C core: peer keys, the sealed envelope, request bodies, and call
 * helpers for GetServerKey, Login and Sync. Used by the load generator
 * (services/load) and the benchmarks (tests/bench); not by the server.
 *
 * Two ways to drive calls:
 *   - asynchronous: cp_nbc_call_start() / cp_nbc_call_recv() on a
 *     completion queue made with grpc_completion_queue_create_for_next(),
 *     one state machine per call, tags chosen by the caller;
 *   - blocking: cp_nbc_unary() and cp_nbc_get_server_key() on a queue
 *     made with grpc_completion_queue_create_for_pluck().
 *
 * Threads (see README.md): a cp_nbc_peer is read-only once its server key
 * is set and may then be shared; a cp_nbc_call belongs to the one thread
 * that drives its completion queue. cp_crypto_init() and grpc_init() must
 * have run once in the process.
 *
 * Ownership: byte buffers passed in are taken (destroyed by the call or
 * on failure); byte buffers and plaintexts handed out belong to the caller.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>

#include "cp/crypto-box.h"
#include "management.pb-c.h"

#define CP_NBC_GET_SERVER_KEY   "/management.ManagementService/GetServerKey"
#define CP_NBC_LOGIN            "/management.ManagementService/Login"
#define CP_NBC_SYNC             "/management.ManagementService/Sync"
#define CP_NBC_IS_HEALTHY       "/management.ManagementService/isHealthy"

/* Largest message the client accepts (a big account's first map). */
#define CP_NBC_MAX_RECV         (64 << 20)

/* ---- peers ------------------------------------------------------------------ */

typedef struct cp_nbc_peer {
        uint8_t priv[CP_WG_KEY_LEN];            /* secret; wiped by release */
        uint8_t pub[CP_WG_KEY_LEN];
        char pub_b64[CP_WG_KEY_B64_LEN];
        uint8_t server_pub[CP_WG_KEY_LEN];      /* valid when have_shared */
        cp_crypto_box_shared shared;            /* box key with server_pub */
        bool have_shared;
} cp_nbc_peer;

/* A new random WireGuard key pair; no server key yet. */
void cp_nbc_peer_generate(cp_nbc_peer *p);
/* The pair of an existing private key; -EINVAL if it is not usable. */
int cp_nbc_peer_from_private(cp_nbc_peer *p, const uint8_t priv[CP_WG_KEY_LEN]);
/* Derives the box key with the server's public key (one X25519); does
 * nothing when the same key is set already. -EINVAL for a low-order key. */
int cp_nbc_peer_set_server_key(cp_nbc_peer *p, const uint8_t server_pub[CP_WG_KEY_LEN]);
/* Wipes the private and the box key. Accepts NULL. */
void cp_nbc_peer_release(cp_nbc_peer *p);

/* ---- request bodies ------------------------------------------------------------ */

/* A Linux agent's PeerSystemMeta with the given hostname (cut at 63
 * characters). Self-contained: pb points into the struct, so the struct
 * must not move while pb is used. */
typedef struct cp_nbc_meta {
        Management__PeerSystemMeta pb;
        char hostname[64];
        Management__PeerCapability caps[2];
} cp_nbc_meta;

void cp_nbc_meta_init(cp_nbc_meta *m, const char *hostname);

/* EncryptedMessage{wgPubKey, nonce || box(inner)} as a byte buffer, or
 * NULL when the peer has no server key yet. */
grpc_byte_buffer *cp_nbc_seal(const cp_nbc_peer *p, const ProtobufCMessage *inner);
/* LoginRequest{meta, setupKey (may be NULL)}, sealed. */
grpc_byte_buffer *cp_nbc_login_request(const cp_nbc_peer *p, const cp_nbc_meta *meta, const char *setup_key);
/* SyncRequest{meta}, sealed. */
grpc_byte_buffer *cp_nbc_sync_request(const cp_nbc_peer *p, const cp_nbc_meta *meta);

/* The bytes of a byte buffer (malloc'd, free()); *ret_len its length.
 * NULL when bb is NULL or unreadable. bb is not destroyed. */
uint8_t *cp_nbc_bb_read(grpc_byte_buffer *bb, size_t *ret_len);
/* Opens a response envelope sealed to the peer. Returns 0 with
 * *ret_plain (malloc'd, free()) and *ret_len, or -EBADMSG (not an
 * EncryptedMessage, or the box does not open). bb is not destroyed. */
int cp_nbc_open(const cp_nbc_peer *p, grpc_byte_buffer *bb, uint8_t **ret_plain, size_t *ret_len);
/* The server key from a ServerKeyResponse; -EBADMSG if there is none. */
int cp_nbc_server_key_parse(grpc_byte_buffer *bb, uint8_t ret[CP_WG_KEY_LEN]);
/* The network map serial of a SyncResponse plaintext, or -1 when it has
 * no map (or is not a protobuf message); *ret_remote (may be NULL) gets
 * its number of remote peers. Without ret_remote only the serial is read
 * from the wire format (no unpacking, no allocation). */
int64_t cp_nbc_sync_serial(const uint8_t *plain, size_t len, size_t *ret_remote);

/* ---- channels and calls ----------------------------------------------------------- */

/* An insecure channel to target ("host:port") accepting CP_NBC_MAX_RECV
 * messages. With own_connection, the channel does not share its TCP
 * connection with other channels to the same target (a local subchannel
 * pool), so M channels are M connections. Destroy with
 * grpc_channel_destroy(). */
grpc_channel *cp_nbc_channel_new(const char *target, bool own_connection);

/* One client call. Zero it (or call_release it) before cp_nbc_call_start. */
typedef struct cp_nbc_call {
        grpc_call *call;
        grpc_byte_buffer *send;         /* the request, until release */
        grpc_byte_buffer *recv;         /* the last message received, or NULL */
        grpc_metadata_array md_in, md_trail;
        grpc_status_code status;        /* valid once the status batch completed */
        grpc_slice details;
        bool started;
} cp_nbc_call;

/* Starts method on ch with req (taken). timeout_ms <= 0: no deadline.
 *   unary (stream false): one batch, everything through the status; `tag`
 *     completes when the call is over: status and recv are then valid.
 *   stream: batch 1 {send metadata + request, half-close, receive metadata
 *     + the first message} completes on `tag`; batch 2 {status} completes
 *     on `status_tag` when the call ends. recv is NULL after batch 1 when
 *     the stream ended without a message.
 * Returns 0, or -EIO when gRPC refused the first batch (the call is
 * released). Should gRPC refuse a stream's status batch, the call is
 * cancelled, -EIO returned, and only `tag` completes: release after it. */
int cp_nbc_call_start(cp_nbc_call *c, grpc_channel *ch, grpc_completion_queue *cq, const char *method,
                      grpc_byte_buffer *req, int timeout_ms, bool stream, void *tag, void *status_tag);
/* The same with request metadata md[0..n_md) sent with the call (e.g.
 * "authorization"); md and its slices are borrowed until the first batch
 * completes. */
int cp_nbc_call_start_md(cp_nbc_call *c, grpc_channel *ch, grpc_completion_queue *cq, const char *method,
                         grpc_byte_buffer *req, int timeout_ms, bool stream, void *tag, void *status_tag,
                         grpc_metadata *md, size_t n_md);
/* Streams: receives the next message into c->recv (the previous one must
 * have been taken). Returns 0 or -EIO. */
int cp_nbc_call_recv(cp_nbc_call *c, void *tag);
/* Hands c->recv to the caller (grpc_byte_buffer_destroy), leaving NULL. */
grpc_byte_buffer *cp_nbc_call_take(cp_nbc_call *c);
/* Cancels a started call (its batches then complete); harmless after the end. */
void cp_nbc_call_cancel(cp_nbc_call *c);
/* Frees everything of the call; only once no batch is outstanding. */
void cp_nbc_call_release(cp_nbc_call *c);
/* The status details as a C string (malloc'd, free()). */
char *cp_nbc_call_details(const cp_nbc_call *c);


/* ---- blocking helpers (pluck queue, one thread) -------------------------------------- */

/* Waits for tag on a pluck queue. 0, -EIO (batch failed), -ETIMEDOUT. */
int cp_nbc_wait(grpc_completion_queue *cq, void *tag, int timeout_ms);
/* One unary call. Returns 0 with *ret_status and *ret_resp (the response
 * or NULL; the caller destroys it), or -EIO / -ETIMEDOUT when the call
 * could not be run. req is taken (NULL sends an empty message). */
int cp_nbc_unary(grpc_channel *ch, grpc_completion_queue *cq, const char *method, grpc_byte_buffer *req,
                 int timeout_ms, grpc_status_code *ret_status, grpc_byte_buffer **ret_resp);
/* GetServerKey: 0 with ret filled, -EIO / -ETIMEDOUT, -EPROTO (a non-OK
 * status), -EBADMSG (no key in the response). */
int cp_nbc_get_server_key(grpc_channel *ch, grpc_completion_queue *cq, int timeout_ms,
                          uint8_t ret[CP_WG_KEY_LEN]);
