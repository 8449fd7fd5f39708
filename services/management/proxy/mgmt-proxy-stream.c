/*
 * mgmt-proxy-stream.c: GetMappingUpdate and SyncMappings (placeholder:
 * answered UNIMPLEMENTED until the streams land).
 */
#include "cp/base.h"
#include "mgmt-proxy-int.h"

void mgmt_proxy_stream_on_call(mgmt_proxy *p, mgmt_call *c, bool bidi) {
        const cp_proto_method *m =
                &cp_proto_proxy_methods[bidi ? CP_PROTO_PROXY_SYNC_MAPPINGS : CP_PROTO_PROXY_GET_MAPPING_UPDATE];
        char msg[128];

        (void) snprintf(msg, sizeof msg, "method %s not implemented", m->name);
        mgmt_proxy_log_outcome(c, m, NULL, GRPC_STATUS_UNIMPLEMENTED, msg, NULL);
        mgmt_call_finish(c, GRPC_STATUS_UNIMPLEMENTED, msg);
}

void mgmt_proxy_stream_on_close(mgmt_proxy *p, mgmt_call *c, bool cancelled) {
}

void mgmt_proxy_on_grpc_start(mgmt_grpc *g, mgmt_proxy *p) {
        p->grpc = g;
}

void mgmt_proxy_changed(mgmt_proxy *p, int64_t seq) {
}

void mgmt_proxy_token_revoked(mgmt_proxy *p, const char *token_id) {
}

void mgmt_proxy_tick(mgmt_proxy *p) {
}

void mgmt_proxy_drain(mgmt_proxy *p) {
}
