/*
 * fuzz_bus: what a bus message goes through on a replica. The bytes are
 * read as Redis's wire protocol by hiredis's reader (the one the bus's
 * connection uses); every pub/sub "message" reply's payload, and the
 * whole input as a bare payload, go to cp_bus_parse_payload(), the parser
 * the bus calls for each message (common/bus/bus.c, handle_message).
 */
#include "cp/base.h"
#include "cp/bus.h"

#include <hiredis/hiredis.h>
#include <hiredis/read.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void parse(const char *p, size_t n) {
        char id[CP_BUS_ACCOUNT_ID_MAX + 1];
        int64_t serial = -1, sent = -1;

        if (cp_bus_parse_payload(p, n, id, &serial, &sent) == 0) {
                /* What the parser promises: a printable id, values >= 0. */
                size_t len = strlen(id);
                if (len == 0 || len > CP_BUS_ACCOUNT_ID_MAX || serial < 0 || sent < 0)
                        abort();
        }
}

/* hiredis 0.14 allocates an array of the announced size before its
 * elements arrive ("*2337203600\r\n" asks for 18 GB): only a Redis server
 * can send that, and the bus trusts its Redis, so the harness keeps the
 * announced counts and lengths small (docs/fuzzing.md). */
static bool resp_bounded(const uint8_t *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                if (p[i] != '*' && p[i] != '$')
                        continue;
                size_t d = 0;
                while (i + 1 + d < n && (p[i + 1 + d] >= '0' && p[i + 1 + d] <= '9'))
                        d++;
                if (d > 4)
                        return false;
        }
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        redisReader *rd;
        void *reply = NULL;

        parse((const char *) data, size);
        if (!resp_bounded(data, size))
                return 0;

        rd = redisReaderCreate();
        if (!rd)
                return 0;
        /* The bus reads replies of at most a few hundred bytes; the cap
         * only keeps hiredis's own buffer small. */
        if (redisReaderFeed(rd, (const char *) data, size) == REDIS_OK) {
                for (int i = 0; i < 64 && redisReaderGetReply(rd, &reply) == REDIS_OK && reply; i++) {
                        redisReply *r = reply;
                        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
                            r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "message") == 0 &&
                            r->element[2]->type == REDIS_REPLY_STRING)
                                parse(r->element[2]->str, r->element[2]->len);
                        freeReplyObject(reply);
                        reply = NULL;
                }
        }
        redisReaderFree(rd);
        return 0;
}
