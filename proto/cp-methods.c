#include "cp/base.h"
#include "cp-methods.h"

const cp_proto_method *cp_proto_mgmt_method_find(const char *path) {
        if (!path)
                return NULL;
        /* Thirteen entries: a linear scan beats any index we could build. */
        for (size_t i = 0; i < _CP_PROTO_MGMT_MAX; i++)
                if (strcmp(cp_proto_mgmt_methods[i].path, path) == 0)
                        return &cp_proto_mgmt_methods[i];
        return NULL;
}

const char *cp_proto_status_name(int code) {
        static const char *const names[] = {
                "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                "UNAUTHENTICATED",
        };

        return code >= 0 && (size_t) code < ELEMENTSOF(names) ? names[code] : "UNKNOWN_STATUS";
}
