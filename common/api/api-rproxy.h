/*
 * api-rproxy.h: what the reverse-proxy resources share (api-services.c,
 * api-rproxy.c); not exported.
 *
 * Clusters are the cluster addresses of rows in the proxies table. As in
 * NetBird, a cluster is "active" for an account while one of its proxies
 * is connected with a heartbeat in the last two minutes, and an account
 * sees the shared clusters (proxies without an account) plus its own
 * ("bring your own proxy").
 */
#pragma once

#include "api-int.h"

/* DeriveClusterFromDomain: the active cluster whose address is the
 * domain or a suffix of it, else the target cluster of the account's
 * custom domain that matches longest. No match: 412 "could not derive
 * cluster from domain ..." and API_FAIL. */
int api_rproxy_derive_cluster(api_ctx *c, const char *domain, char *out, size_t outsz);
/* The same without an error response: 1 found, 0 none, API_FAIL on a
 * database error. */
int api_rproxy_derive_cluster_quiet(api_ctx *c, const char *domain, char *out, size_t outsz);

/* A capability column of proxies (supports_custom_ports,
 * require_subdomain, private, supports_crowdsec) over the cluster's active
 * proxies: 1 some proxy claims it (crowdsec: every proxy that reported
 * claims it), 0 reported but false, -1 nobody reported it, -2 database
 * error (response set). */
int api_rproxy_capability(api_ctx *c, const char *cluster, const char *column);

/* validateSubdomainRequirement: 422 "domain X requires a subdomain label"
 * when domain is the cluster's own address and the cluster requires a
 * subdomain. */
int api_rproxy_check_subdomain(api_ctx *c, const char *domain, const char *cluster);

/* 409 "domain already taken" when a service other than exclude_id (of
 * any account) serves domain. */
int api_rproxy_domain_taken(api_ctx *c, const char *domain, const char *exclude_id);
