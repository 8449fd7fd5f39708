/*
 * mgmt-envelope.h: the outer EncryptedMessage of an agent request, read
 * before anything is known about the sender.
 *
 *   message EncryptedMessage {
 *     string wgPubKey = 1;   // the sender's WireGuard public key (base64)
 *     bytes body = 2;        // the NaCl box of the inner message
 *     int32 version = 3;     // unused by the server
 *   }
 *
 * protobuf-c's general unpacker allocates for every field it meets, also
 * for unknown ones (a struct and a copy each): 1 MiB of one-byte unknown
 * varints cost ~30 MB in ~520k allocations. This reader allocates
 * nothing: fields 1 and 2 are slices of the payload, field 3 a number,
 * every other field is stepped over; only its wire type is checked.
 *
 * Refused (-EBADMSG, *ret_why says which, for the log): a truncated field
 * or varint, a varint longer than 10 bytes, field number 0 or above
 * 2^29-1, the wire types 3 and 4 (groups, which protobuf-c never
 * supported) and 6/7, a known field with the wrong wire type, and a known
 * field that occurs twice (protobuf would keep the last one; no agent
 * sends one twice, and a second body would let a sender make the server
 * look at two). An absent field is empty (a zero-length slice, version 0),
 * as in proto3.
 *
 * Threads: pure; no state.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mgmt_envelope {
        const uint8_t *key;             /* wgPubKey: not NUL-terminated, not checked */
        size_t key_len;
        const uint8_t *body;            /* the sealed body */
        size_t body_len;
        int32_t version;
} mgmt_envelope;

/* Reads p[0..n) into *ret (slices of p: valid while p is). 0, or
 * -EBADMSG with *ret_why a static text. */
int mgmt_envelope_parse(const uint8_t *p, size_t n, mgmt_envelope *ret, const char **ret_why);
