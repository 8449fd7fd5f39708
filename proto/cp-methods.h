/*
 * cp-methods.h: the gRPC methods of management.ManagementService as data.
 *
 * gRPC core registers and dispatches methods by path and needs to know how
 * each one streams; protoc-c's service descriptor carries neither the
 * streaming kind nor the messages sealed inside EncryptedMessage bodies.
 * cp_proto_mgmt_methods[] holds all three. It is generated at build time
 * by gen-methods.py from management.proto (the "// @body" lines name the
 * sealed messages), indexed by cp_proto_mgmt_method_id below.
 *
 * Everything here is immutable static data: safe from any thread, nothing
 * to free. The descriptors point into the protoc-c output of the same
 * library (management.pb-c.h).
 */
#pragma once

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

typedef enum cp_proto_streaming {
        CP_PROTO_UNARY,                 /* one request, one response */
        CP_PROTO_SERVER_STREAMING,      /* one request, a stream of responses */
        CP_PROTO_CLIENT_STREAMING,      /* a stream of requests, one response */
        CP_PROTO_BIDI_STREAMING,        /* streams both ways */
} cp_proto_streaming;

/* One entry per rpc, in the order of the service in management.proto. The
 * generator derives each name from the rpc name (GetServerKey ->
 * GET_SERVER_KEY); renaming or adding an rpc without updating this enum
 * fails the build. */
typedef enum cp_proto_mgmt_method_id {
        CP_PROTO_MGMT_LOGIN,
        CP_PROTO_MGMT_SYNC,
        CP_PROTO_MGMT_GET_SERVER_KEY,
        CP_PROTO_MGMT_IS_HEALTHY,
        CP_PROTO_MGMT_GET_DEVICE_AUTHORIZATION_FLOW,
        CP_PROTO_MGMT_GET_PKCE_AUTHORIZATION_FLOW,
        CP_PROTO_MGMT_SYNC_META,
        CP_PROTO_MGMT_LOGOUT,
        CP_PROTO_MGMT_JOB,
        CP_PROTO_MGMT_EXTEND_AUTH_SESSION,
        CP_PROTO_MGMT_CREATE_EXPOSE,
        CP_PROTO_MGMT_RENEW_EXPOSE,
        CP_PROTO_MGMT_STOP_EXPOSE,
        _CP_PROTO_MGMT_MAX,
} cp_proto_mgmt_method_id;

/* management.ProxyService (proxy_service.proto): every body is plain. */
typedef enum cp_proto_proxy_method_id {
        CP_PROTO_PROXY_GET_MAPPING_UPDATE,
        CP_PROTO_PROXY_SYNC_MAPPINGS,
        CP_PROTO_PROXY_SEND_ACCESS_LOG,
        CP_PROTO_PROXY_AUTHENTICATE,
        CP_PROTO_PROXY_SEND_STATUS_UPDATE,
        CP_PROTO_PROXY_CREATE_PROXY_PEER,
        CP_PROTO_PROXY_GET_OIDCURL,
        CP_PROTO_PROXY_VALIDATE_SESSION,
        CP_PROTO_PROXY_VALIDATE_TUNNEL_PEER,
        CP_PROTO_PROXY_CHECK_LLM_POLICY_LIMITS,
        CP_PROTO_PROXY_RECORD_LLM_USAGE,
        _CP_PROTO_PROXY_MAX,
} cp_proto_proxy_method_id;

typedef struct cp_proto_method {
        const char *name;               /* "Login", "isHealthy", ... */
        const char *path;               /* "/management.ManagementService/Login" */
        cp_proto_streaming streaming;
        /* The messages on the wire: EncryptedMessage, Empty or
         * ServerKeyResponse. */
        const ProtobufCMessageDescriptor *request;
        const ProtobufCMessageDescriptor *response;
        /* The messages sealed inside EncryptedMessage.body, or NULL when
         * that direction is plaintext. For Job the request side is what
         * the agent sends (JobResponse) and the response side what the
         * server sends (JobRequest). */
        const ProtobufCMessageDescriptor *request_body;
        const ProtobufCMessageDescriptor *response_body;
} cp_proto_method;

/* All methods, indexed by cp_proto_mgmt_method_id. */
extern const cp_proto_method cp_proto_mgmt_methods[];
/* ProxyService's methods, indexed by cp_proto_proxy_method_id. */
extern const cp_proto_method cp_proto_proxy_methods[];

/* The method whose path is exactly path (case-sensitive, as gRPC paths
 * are), or NULL. path may be NULL. */
const cp_proto_method *cp_proto_mgmt_method_find(const char *path);

/* gRPC's name of a status code ("OK", "CANCELLED", ...,
 * "UNAUTHENTICATED"; "UNKNOWN_STATUS" beyond): the wire protocol's
 * codes, for logs and tools on both sides. */
const char *cp_proto_status_name(int code);
