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
