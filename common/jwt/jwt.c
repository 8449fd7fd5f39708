/*
 * Placeholder: the interface of cp/jwt.h, refusing every token until the
 * validator lands (branch wt-jwt).
 */
#include "cp/base.h"
#include "cp/jwt.h"

#include <jansson.h>

struct cp_jwt {
        int unused;
};

int cp_jwt_new(const cp_jwt_config *cfg, cp_jwt **ret, cp_error *reterr) {
        (void) cfg;
        *ret = cp_xcalloc(1, sizeof **ret);
        (void) reterr;
        return 0;
}

cp_jwt *cp_jwt_free(cp_jwt *j) {
        free(j);
        return NULL;
}

int cp_jwt_validate(cp_jwt *j, const char *token, cp_jwt_claims **ret, cp_error *reterr) {
        (void) j;
        (void) token;
        (void) ret;
        return cp_error_set(reterr, -EAGAIN, "JWT validation is not built yet");
}

int cp_jwt_claims_strings(const cp_jwt_claims *claims, const char *name, const char ***ret) {
        (void) claims;
        (void) name;
        *ret = cp_xcalloc(1, sizeof **ret);
        return 0;
}

cp_jwt_claims *cp_jwt_claims_free(cp_jwt_claims *c) {
        if (!c)
                return NULL;
        free(c->user_id);
        free(c->email);
        free(c->name);
        free(c->account_id);
        free(c->domain);
        free(c->domain_category);
        json_decref(c->payload);
        free(c);
        return NULL;
}

bool cp_jwt_status(cp_jwt *j, char *buf, size_t len) {
        (void) j;
        (void) snprintf(buf, len, "JWT validation is not built yet");
        return false;
}

void cp_jwt_issuer(cp_jwt *j, char *buf, size_t len) {
        (void) j;
        if (len)
                buf[0] = '\0';
}

void cp_jwt_get_stats(cp_jwt *j, cp_jwt_stats *ret) {
        (void) j;
        memset(ret, 0, sizeof *ret);
}
