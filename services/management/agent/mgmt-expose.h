/*
 * mgmt-expose.h: CreateExpose, RenewExpose and StopExpose of
 * management.ManagementService (mgmt-expose.c): a peer exposes one of
 * its local ports as a temporary reverse-proxy service (NetBird's
 * "netbird expose"), keeps it alive, and stops it. The rows are
 * cp/store-expose.h's; expired ones are swept with the ephemeral peers
 * (mgmt-sync-checks.c).
 */
#pragma once

#include <stdint.h>

#include "mgmt-agent.h"

struct mgmt_agent_op;

/* The encrypted handlers (run on a worker through mgmt_agent_offload). */
void mgmt_create_expose(struct mgmt_agent_op *op);
void mgmt_renew_expose(struct mgmt_agent_op *op);
void mgmt_stop_expose(struct mgmt_agent_op *op);

/* Tells the proxies' streams that the mapping change log reached seq (a
 * commit of this replica wrote it) through a->proxy_changed. Any thread. */
void mgmt_expose_changed(const mgmt_agent *a, int64_t seq);
