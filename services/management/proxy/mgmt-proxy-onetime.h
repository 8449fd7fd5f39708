/*
 * mgmt-proxy-onetime.h: the one-time tokens of ProxyMapping.auth_token,
 * with which a proxy's embedded client creates its peer
 * (CreateProxyPeer).
 *
 * Stateless, so a snapshot of 10,000 mappings writes no row: a token is
 * base64url (no padding) of expiry (8 bytes, Unix seconds, big endian)
 * || nonce (16 random bytes) || HMAC-SHA256 over "v1", the service id,
 * the account id (each length-prefixed), the expiry and the nonce, keyed
 * with a key derived from the DataStoreEncryptionKey (mgmt_proxy_new), so
 * a token minted on one replica verifies on every other. Valid for 5
 * minutes, like NetBird's. Single use is the verifier's business:
 * CreateProxyPeer inserts the returned hash into proxy_used_tokens (a
 * second insert of the same hash is a reused token).
 *
 * Threads: any; the hub's key never changes after mgmt_proxy_new.
 */
#pragma once

#include <stdint.h>

#include "mgmt-proxy.h"

#define MGMT_PROXY_ONETIME_TTL_S 300
/* 56 bytes in base64url without padding: 75 characters + NUL. */
#define MGMT_PROXY_ONETIME_LEN 76

/* A fresh token for (service_id, account_id), valid until now_s + TTL. */
void mgmt_proxy_onetime_new(const mgmt_proxy *p, const char *service_id, const char *account_id, int64_t now_s,
                            char out[MGMT_PROXY_ONETIME_LEN]);
/* 0 when token was minted by a replica of this deployment for exactly
 * (service_id, account_id) and is not past its expiry at now_s; then
 * ret_hash_hex (may be NULL) gets hex(SHA-256(token)), the key of
 * proxy_used_tokens, and *ret_expires_s (may be NULL) its expiry.
 * -EINVAL when malformed or forged or for another service or account,
 * -ETIME when expired. Comparisons are constant-time. */
int mgmt_proxy_onetime_verify(const mgmt_proxy *p, const char *token, const char *service_id,
                              const char *account_id, int64_t now_s, char ret_hash_hex[65], int64_t *ret_expires_s);
