/*
 * What this server does not hold yet: user invites (NetBird's embedded-IdP
 * invite links).
 *
 * The stock dashboard reads the invite list on the users page and shows an
 * error toast for anything but a 200, so the list answers what is true
 * here: an empty JSON array. The writes answer what NetBird answers
 * without its embedded IdP (412).
 */
#include "api-int.h"

static int empty_list(api_ctx *c) {
        return api_reply_text(c, 200, "[]", 2);
}

/* NetBird's answer to every invite route when it runs without its
 * embedded IdP, which is what this server reports
 * (settings.embedded_idp_enabled false). */
static int invites(api_ctx *c) {
        return api_error(c, 412, "invite links are only available with embedded identity provider");
}

const api_route api_unserved_routes[] = {
        /* NetBird answers the list 412 too. The dashboard asks for it
         * on the users page before it has read the account's
         * embedded_idp_enabled (an undefined flag turns its fetch on),
         * and shows a 412 as an error toast: an empty list is as true.
         * Permission as NetBird's when it serves them: users, read. */
        { "GET", "/api/users/invites", API_MOD_USERS, API_READ, empty_list },
        /* The IdP check comes first in NetBird, before the permission. */
        { "POST", "/api/users/invites", API_MOD_SELF, API_CREATE, invites },
        { "DELETE", "/api/users/invites/{inviteId}", API_MOD_SELF, API_DELETE, invites },
        { "POST", "/api/users/invites/{inviteId}/regenerate", API_MOD_SELF, API_UPDATE, invites },
        { NULL },
};
