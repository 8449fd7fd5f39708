/*
 * api-peers.h: what the two files of the peers routes share (api-peers.c
 * the handlers, api-peers-list.c the JSON, the list and the caches); not
 * exported.
 */
#pragma once

#include "api-int.h"
#include "cp/netmap.h"

/* The caller's account as the peers routes need it. */
typedef struct account_info {
        int64_t serial;
        char domain[256];               /* the FQDN suffix: the account's or the server's */
        char network[64];               /* network_net, "100.64.0.0/16" */
        bool view_blocked;              /* settings_regular_users_view_blocked */
        bool has_v6;                    /* network_net_v6 is set */
} account_info;

/* Which peers a list shows; NULL = no condition. name and ip match as
 * substrings (of the name; of the IPv4 or IPv6 address). */
typedef struct peer_filter {
        const char *name;
        const char *ip;
        const char *user_id;
        const char *id;
} peer_filter;

/* The account's network-map snapshot at acc->serial or newer: kept from
 * an earlier request or read in the request's transaction. *ret is a new
 * reference (cp_netmap_account_unref). */
int api_peers__snapshot(api_ctx *c, const account_info *acc, cp_netmap_account **ret);

/* Replies with the peer (NetBird's Peer); 404 "peer not found: <id>"
 * when it is not in the account. */
int api_peers__reply_peer(api_ctx *c, const account_info *acc, const char *id);

/* Replies with the peers matching f (NetBird's PeerBatch list, with
 * accessible_peers_count). */
int api_peers__list(api_ctx *c, const account_info *acc, const peer_filter *f);
