/*
 * fuzz_realip: X-Forwarded-For and X-Real-IP as a trusted proxy's client
 * sends them (services/management/runtime/mgmt-realip.c), and the
 * --trusted-proxies list parser. Input lines: the first is the call's
 * peer address, the second the X-Forwarded-For value, the third the
 * X-Real-IP value, the fourth (when present) a trusted-proxies list
 * tried on its own. Every call's peer is inside the fixed trusted
 * prefixes, so the headers are always read.
 */
#include "cp/base.h"
#include "mgmt-realip.h"

#include <arpa/inet.h>
#include <grpc/slice.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static mgmt_realip *trusted;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        cp_error err = { 0 };

        if (mgmt_realip_new("10.0.0.0/8, fd00::/8, ::1, 192.0.2.1", &trusted, &err) < 0 || !trusted)
                abort();
        return 0;
}

static const char *line(const char **p, const char *end, size_t *len) {
        const char *s = *p, *nl;

        if (s >= end)
                return NULL;
        nl = memchr(s, '\n', (size_t) (end - s));
        *len = (size_t) ((nl ? nl : end) - s);
        *p = nl ? nl + 1 : end;
        return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *p = (const char *) data, *end = p + size;
        const char *ip, *xff, *xri, *list;
        size_t ip_len = 0, xff_len = 0, xri_len = 0, list_len = 0;
        grpc_metadata md[2];
        grpc_metadata_array arr = { 0 };
        char addr[64];

        ip = line(&p, end, &ip_len);
        xff = line(&p, end, &xff_len);
        xri = line(&p, end, &xri_len);
        list = line(&p, end, &list_len);

        (void) snprintf(addr, sizeof addr, "%.*s", ip ? (int) (ip_len < 63 ? ip_len : 63) : 0, ip ? ip : "");
        if (xff) {
                md[arr.count].key = grpc_slice_from_static_string("x-forwarded-for");
                md[arr.count++].value = grpc_slice_from_copied_buffer(xff, xff_len);
        }
        if (xri) {
                md[arr.count].key = grpc_slice_from_static_string("x-real-ip");
                md[arr.count++].value = grpc_slice_from_copied_buffer(xri, xri_len);
        }
        arr.metadata = md;
        arr.capacity = arr.count;
        mgmt_realip_apply(trusted, &arr, addr, sizeof addr);
        /* The answer is an address or the peer's text as it was. */
        if (memchr(addr, '\0', sizeof addr) == NULL)
                abort();
        for (size_t i = 0; i < arr.count; i++)
                grpc_slice_unref(md[i].value);

        if (list) {
                _cleanup_free_ char *s = cp_xstrndup(list, list_len);
                mgmt_realip *r = NULL;
                cp_error err = { 0 };
                if (mgmt_realip_new(s, &r, &err) == 0)
                        (void) mgmt_realip_free(r);
        }
        return 0;
}
