/*
 * mgmt-service.h: the method table of management.ManagementService.
 *
 * Every rpc of the service is registered, from the generated table
 * cp_proto_mgmt_methods[] (proto/cp-methods.h): the encrypted ones go
 * through the agent edge (mgmt-agent.h) to their handler (Login and
 * SyncMeta and Logout in mgmt-login.c, ExtendAuthSession in mgmt-auth.c,
 * the OAuth flows here), Sync to the Sync hub (mgmt-sync.h), GetServerKey
 * and isHealthy are answered here on the CQ thread, and the rest
 * UNIMPLEMENTED the way grpc-go answers a method it does not implement.
 *
 * This is the only file that knows every handler: the edge does not
 * include the handlers, so agent -> login -> sync -> agent is no cycle.
 */
#pragma once

#include "mgmt-agent.h"
#include "mgmt-grpc.h"

/* Fills out with the rows to register, one per rpc of the service, in
 * cp_proto_mgmt_method_id order. The rows expect the mgmt_agent as the
 * gRPC server's userdata; they point to static data only. */
#define MGMT_SERVICE_N_METHODS ((size_t) _CP_PROTO_MGMT_MAX)
void mgmt_service_methods(mgmt_rpc_method out[MGMT_SERVICE_N_METHODS]);
