#include "cp/base.h"
#include "mgmt-envelope.h"

#define WIRE_VARINT 0
#define WIRE_I64 1
#define WIRE_LEN 2
#define WIRE_I32 5

#define FIELD_KEY 1
#define FIELD_BODY 2
#define FIELD_VERSION 3
#define FIELD_MAX ((1u << 29) - 1)

/* A base-128 varint at *pp (at most 10 bytes, < end). Advances *pp. */
static int read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *ret) {
        const uint8_t *p = *pp;
        uint64_t v = 0;

        for (unsigned i = 0; i < 10; i++) {
                if (p >= end)
                        return -EBADMSG;
                uint8_t b = *p++;
                if (i == 9 && b > 1)
                        return -EBADMSG;        /* past 64 bits */
                v |= (uint64_t) (b & 0x7f) << (7 * i);
                if (!(b & 0x80)) {
                        *pp = p;
                        *ret = v;
                        return 0;
                }
        }
        return -EBADMSG;
}

static int bad(const char **ret_why, const char *why) {
        *ret_why = why;
        return -EBADMSG;
}

int mgmt_envelope_parse(const uint8_t *p, size_t n, mgmt_envelope *ret, const char **ret_why) {
        const uint8_t *end = p + n;
        bool seen[FIELD_VERSION + 1] = { false };
        uint64_t tag, v;

        *ret = (mgmt_envelope) { .key = p, .body = p };
        *ret_why = NULL;
        while (p < end) {
                if (read_varint(&p, end, &tag) < 0)
                        return bad(ret_why, "truncated field tag");
                uint64_t field = tag >> 3;
                unsigned wire = (unsigned) (tag & 7);
                if (field == 0 || field > FIELD_MAX)
                        return bad(ret_why, "invalid field number");
                if (field <= FIELD_VERSION) {
                        if (seen[field])
                                return bad(ret_why, "a field occurs twice");
                        seen[field] = true;
                        if (wire != (field == FIELD_VERSION ? WIRE_VARINT : WIRE_LEN))
                                return bad(ret_why, "a field has the wrong wire type");
                }
                switch (wire) {
                case WIRE_VARINT:
                        if (read_varint(&p, end, &v) < 0)
                                return bad(ret_why, "truncated varint");
                        if (field == FIELD_VERSION)
                                ret->version = (int32_t) (uint32_t) v;  /* as proto3 truncates int32 */
                        break;
                case WIRE_I64:
                case WIRE_I32: {
                        size_t w = wire == WIRE_I64 ? 8 : 4;
                        if ((size_t) (end - p) < w)
                                return bad(ret_why, "truncated fixed-size field");
                        p += w;
                        break;
                }
                case WIRE_LEN:
                        if (read_varint(&p, end, &v) < 0)
                                return bad(ret_why, "truncated length");
                        if (v > (uint64_t) (end - p))
                                return bad(ret_why, "a length runs past the message");
                        if (field == FIELD_KEY) {
                                ret->key = p;
                                ret->key_len = (size_t) v;
                        } else if (field == FIELD_BODY) {
                                ret->body = p;
                                ret->body_len = (size_t) v;
                        }
                        p += v;
                        break;
                default:
                        return bad(ret_why, "unsupported wire type");
                }
        }
        return 0;
}
