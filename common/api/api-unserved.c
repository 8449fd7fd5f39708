/*
 * Resources this server does not hold yet: posture checks and user invites.
 *
 * The stock dashboard reads their lists on most pages and shows an error
 * toast for anything but a 200. So the list routes answer what is true
 * here: an empty JSON array (no such object can exist on this server).
 * Everything that would name or make one (GET of one id, POST, PUT,
 * DELETE) says plainly that the feature is not served: 404 for an id (it
 * cannot exist), 422 for a create, both in NetBird's error body.
 * Invites are listed empty too; their writes answer what NetBird
 * answers without its embedded IdP (412).
 *
 * Each route carries the permission module NetBird's own module checks
 * (posture checks: policies), so a caller who may not read or write the
 * resource still gets 403 first, as from NetBird.
 */
#include "api-int.h"

static int empty_list(api_ctx *c) {
        return api_reply_text(c, 200, "[]", 2);
}

/* A create (422) and an id route (404) per feature, worded alike. */
#define UNSERVED(prefix, what)                                                          \
        static int prefix##_create(api_ctx *c) {                                        \
                return api_error(c, 422, what " are not served by this server yet");    \
        }                                                                               \
        static int prefix##_one(api_ctx *c) {                                           \
                return api_error(c, 404, what " are not served by this server yet");    \
        }

UNSERVED(posture, "posture checks")

/* NetBird's answer to every invite route when it runs without its
 * embedded IdP, which is what this server reports
 * (settings.embedded_idp_enabled false). */
static int invites(api_ctx *c) {
        return api_error(c, 412, "invite links are only available with embedded identity provider");
}

const api_route api_unserved_routes[] = {
        { "GET", "/api/posture-checks", API_MOD_POLICIES, API_READ, empty_list },
        { "POST", "/api/posture-checks", API_MOD_POLICIES, API_CREATE, posture_create },
        { "GET", "/api/posture-checks/{postureCheckId}", API_MOD_POLICIES, API_READ, posture_one },
        { "PUT", "/api/posture-checks/{postureCheckId}", API_MOD_POLICIES, API_UPDATE, posture_one },
        { "DELETE", "/api/posture-checks/{postureCheckId}", API_MOD_POLICIES, API_DELETE, posture_one },


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
