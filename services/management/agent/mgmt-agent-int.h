/*
 * mgmt-agent-int.h: what the agent edge (mgmt-agent.c) shares with the
 * handlers of its bigger RPCs (mgmt-login.c). Not for other modules.
 *
 * One mgmt_agent_op is one encrypted RPC on its way through a worker:
 * built on the CQ thread when the call arrives, filled on a worker (the
 * envelope is opened, the handler runs, the answer is sealed), and
 * answered and freed back on the CQ thread. Everything it allocates lives
 * in its arena.
 */
#pragma once

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

#include "cp/crypto-box.h"
#include "cp/geo.h"
#include "cp/store-peers.h"
#include "cp-methods.h"
#include "management.pb-c.h"
#include "mgmt-agent.h"
#include "mgmt-arena.h"

/* NetBird's texts that more than one handler sends, verbatim (agents
 * match on some of them; netbird-protocol.md section 3.4). */
#define MGMT_MSG_EXPIRED "peer login has expired, please log in once more"
#define MGMT_MSG_NOT_OWNER "peer is already registered by a different User or a Setup Key"
#define MGMT_MSG_BLOCKED "user is blocked"

/* The largest sealed plaintext of a request that carries a
 * PeerSystemMeta (Login, Sync, SyncMeta); the arithmetic is in
 * mgmt-agent.c. */
#define MGMT_AGENT_MAX_PLAIN_META (256 * 1024)
/* The most the op's arena may hold while protobuf-c decodes the inner
 * message (the opened plaintext, up to 256 KiB, included). The largest
 * legitimate LoginRequest (251 KiB) decodes into 514 KiB
 * (test-mgmt-envelope measures it: a struct and a pointer per entry, a
 * copy of each string, the unpacker's scratch); crafted input of the same
 * size reaches 60 bytes per byte (a 2-byte empty networkAddresses entry
 * becomes a pointer, a 48-byte struct and the unpacker's scratch): 15 MiB.
 * 2 MiB, well over twice the legitimate peak with its plaintext, refuses
 * that early: 8 workers hold at most 16 MiB of decoded requests. */
#define MGMT_AGENT_UNPACK_BUDGET (2 * 1024 * 1024)

/* sessionExpiresAt in a's memory: the deadline, or present but empty for
 * 0 ("no expiry"; netbird-protocol.md section 6.4). mgmt-auth.c. */
Google__Protobuf__Timestamp *mgmt_session_expires(mgmt_arena *a, int64_t unix_ns);

typedef struct mgmt_agent_op {
        const mgmt_agent *agent;
        mgmt_call *call;                /* only the "any thread" accessors */
        const cp_proto_method *method;
        mgmt_agent_handler handler;
        grpc_byte_buffer *payload;      /* freed by the worker once opened */
        size_t queued;                  /* payload bytes counted as waiting for a worker */
        mgmt_arena arena;

        /* Filled by the edge before the handler runs. */
        char peer_key[CP_WG_KEY_B64_LEN];       /* the sender's key, canonical base64 */
        uint8_t peer_pub[CP_WG_KEY_LEN];
        /* The server public key the request opened with (current or
         * previous): the answer is sealed with the same pair and carries
         * this key, which is the one the agent holds. */
        char server_key[CP_WG_KEY_B64_LEN];
        const ProtobufCMessage *request;        /* the opened body, in the arena */

        /* Filled by the handler. */
        grpc_status_code status;
        const char *message;            /* status details, in the arena; NULL for OK */
        const ProtobufCMessage *response;       /* to seal (or to send plain when the
                                                 * method's response is plaintext);
                                                 * NULL = an empty message */
        char account[40];               /* for the log line, "" if unknown */
        bool registration;              /* Login took the setup-key path (metrics) */
        char detail[200];               /* extra log text (a store error), "" if none */

        /* Filled by the edge after the handler: the bytes to send. */
        uint8_t *reply;
        size_t reply_len;
} mgmt_agent_op;

/* Opens op->payload: its size against the method's limit, the
 * EncryptedMessage (read in place by mgmt-envelope.h, nothing allocated),
 * the sender's key (op->peer_key, op->peer_pub), the box (shared is
 * initialised: the caller releases it, also on failure) and only then the
 * inner message (op->request, unpacked under MGMT_AGENT_UNPACK_BUDGET).
 * Sizes and the budget fail with RESOURCE_EXHAUSTED "request message too
 * large", the rest with NetBird's INVALID_ARGUMENT texts; each refusal is
 * counted (netbird_cp_requests_refused_total). The box is tried
 * with the current server key, then the previous one, then, when neither
 * opens it, once more after mgmt_keys_reload_after_miss() found newer
 * keys; op->server_key says which one opened it. Returns 0, or -1 with
 * op's outcome set to NetBird's failure (§2.2). */
int mgmt_agent_open_request(mgmt_agent_op *op, cp_crypto_box_shared *shared);

/* Seals plain[0..len) with shared and wraps it in an EncryptedMessage
 * carrying server_key (the public key shared was made with): the packed
 * bytes in one malloc'd buffer (free(); mgmt_call_send_take() takes it).
 * NULL when sealing failed (reterr says why). */
uint8_t *mgmt_agent_seal_msg(const char *server_key, const cp_crypto_box_shared *shared, const void *plain,
                             size_t len, size_t *ret_len, cp_error *reterr);

/* The one "rpc" log line of a call (mgmt-agent.c). */
void mgmt_agent_log_outcome(mgmt_call *c, const cp_proto_method *m, const char *peer_key, const char *account,
                            grpc_status_code status, const char *message, const char *detail);

/* Sets the op's outcome: a status and a formatted message (for clients). */
void mgmt_agent_fail(mgmt_agent_op *op, grpc_status_code status, const char *fmt, ...) _printf_(3, 4);

/* Who a JWT on Login or ExtendAuthSession resolved to (mgmt-auth.c). */
typedef struct mgmt_auth_user {
        char user_id[256];
        char account_id[64];
        char email[256];                /* the token's email claim, "" if none */
        bool blocked;
        bool pending_approval;
} mgmt_auth_user;

/* The JWT pipeline shared by Login and ExtendAuthSession (mgmt-auth.c):
 * validation, the one-time claim and the identity resolution, up to
 * three attempts 200 ms apart (the wait ends when the call is cancelled).
 * 0 with *ret filled, or -1 with op's outcome set to NetBird's failure.
 * No IdP configured (agent->jwt NULL): PermissionDenied, a clear text. */
int mgmt_auth_jwt(mgmt_agent_op *op, const char *token, mgmt_auth_user *ret);
/* ExtendAuthSession (mgmt-auth.c). */
void mgmt_extend_session(mgmt_agent_op *op);

/* The Login handler (mgmt-login.c). */
void mgmt_login(mgmt_agent_op *op);
/* SyncMeta and Logout (mgmt-login.c): they share its peer lookup. */
void mgmt_sync_meta(mgmt_agent_op *op);
void mgmt_logout(mgmt_agent_op *op);

/* Shared with the Sync open (mgmt-sync.c). PeerSystemMeta -> the store's
 * form, in op's arena; -1 with op's outcome set when it has too many
 * entries. */
int mgmt_login_meta(mgmt_agent_op *op, const Management__PeerSystemMeta *pm, cp_store_peer_meta *ret);
/* The location of the connection address ip (mgmt-agent.c), as NetBird's
 * resolvePeerLocation: *where filled from *loc (both the caller's) and
 * returned; NULL = keep what is stored: no address, no geolocation
 * database, or a failed lookup (logged). An address the database does
 * not know gives the empty location, as NetBird's empty record does. */
const cp_store_peer_location *mgmt_peer_location(const mgmt_agent *ag, const char *ip, cp_geo_location *loc,
                                                 cp_store_peer_location *where);
/* An SSO peer whose login has run out (§3.2); setup-key peers never. */
bool mgmt_login_expired(const cp_store_peer *p, const cp_store_account_settings *st, int64_t now_ns);
