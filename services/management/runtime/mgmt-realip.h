/*
 * The agent's real address behind a reverse proxy (NetBird's gRPC realip
 * interceptor, management/internals/server/boot.go), trusted only from
 * the proxies the operator names (--trusted-proxies, docs/config.md).
 *
 * When the TCP peer of a call is inside one of the trusted prefixes, the
 * address comes from the headers NetBird reads, in its order:
 * X-Forwarded-For (the rightmost entry that is not itself a trusted
 * proxy), X-Real-IP only when there is no X-Forwarded-For (a client
 * may send its own X-Real-IP through a proxy that appends to
 * X-Forwarded-For). Anything unparsable is ignored: the peer address
 * stays. Without trusted prefixes (the default) the headers are never
 * read. Immutable after creation; any thread.
 */
#pragma once

#include <grpc/grpc.h>
#include <stdbool.h>
#include <stddef.h>

#include "cp/error.h"

typedef struct mgmt_realip mgmt_realip;

/* list: comma-separated IPv4/IPv6 prefixes ("10.0.0.0/8, ::1/128"; a bare
 * address is a /32 or /128). NULL or "" gives *ret = NULL (trust none).
 * -EINVAL names the bad entry. */
int mgmt_realip_new(const char *list, mgmt_realip **ret, cp_error *reterr);
/* Accepts NULL; returns NULL. */
mgmt_realip *mgmt_realip_free(mgmt_realip *r);

/* True when ip (text) is in a trusted prefix; false for a NULL r. */
bool mgmt_realip_trusts(const mgmt_realip *r, const char *ip);

/* Replaces ip (the call's peer address, text, in a buffer of cap bytes)
 * with the forwarded address when ip is trusted. r may be NULL. */
void mgmt_realip_apply(const mgmt_realip *r, const grpc_metadata_array *md, char *ip, size_t cap);
/* The same for HTTP (the REST API's client address): the values of the
 * X-Forwarded-For and X-Real-IP headers (NULL when absent). */
void mgmt_realip_apply_headers(const mgmt_realip *r, const char *xff, const char *xri, char *ip, size_t cap);
