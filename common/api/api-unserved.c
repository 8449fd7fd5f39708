/*
 * Resources this server does not hold yet: networks (with
 * their resources and routers), custom DNS zones (with their records),
 * the geolocation lists and user invites.
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
 * (networks: networks; zones: dns; locations:
 * any signed-in user), so a caller who may not read or write the
 * resource still gets 403 first, as from NetBird.
 */
#include "api-int.h"

#include <ctype.h>

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

UNSERVED(network, "networks")
UNSERVED(resource, "network resources")
UNSERVED(router, "network routers")
UNSERVED(zone, "dns zones")
UNSERVED(record, "dns records")

/* NetBird checks the code's form before it looks for its database. */
static int cities(api_ctx *c) {
        const char *cc = c->param[0];

        if (strlen(cc) != 2 || !isalpha((unsigned char) cc[0]) || !isalpha((unsigned char) cc[1]))
                return api_error(c, 422, "invalid country code");
        return empty_list(c);
}

/* NetBird's answer to every invite route when it runs without its
 * embedded IdP, which is what this server reports
 * (settings.embedded_idp_enabled false). */
static int invites(api_ctx *c) {
        return api_error(c, 412, "invite links are only available with embedded identity provider");
}

const api_route api_unserved_routes[] = {
        { "GET", "/api/networks", API_MOD_NETWORKS, API_READ, empty_list },
        { "POST", "/api/networks", API_MOD_NETWORKS, API_CREATE, network_create },
        { "GET", "/api/networks/routers", API_MOD_NETWORKS, API_READ, empty_list },
        { "GET", "/api/networks/resources", API_MOD_NETWORKS, API_READ, empty_list },
        { "GET", "/api/networks/{networkId}", API_MOD_NETWORKS, API_READ, network_one },
        { "PUT", "/api/networks/{networkId}", API_MOD_NETWORKS, API_UPDATE, network_one },
        { "DELETE", "/api/networks/{networkId}", API_MOD_NETWORKS, API_DELETE, network_one },
        { "GET", "/api/networks/{networkId}/resources", API_MOD_NETWORKS, API_READ, empty_list },
        { "POST", "/api/networks/{networkId}/resources", API_MOD_NETWORKS, API_CREATE, resource_create },
        { "GET", "/api/networks/{networkId}/resources/{resourceId}", API_MOD_NETWORKS, API_READ, resource_one },
        { "PUT", "/api/networks/{networkId}/resources/{resourceId}", API_MOD_NETWORKS, API_UPDATE, resource_one },
        { "DELETE", "/api/networks/{networkId}/resources/{resourceId}", API_MOD_NETWORKS, API_DELETE,
          resource_one },
        { "GET", "/api/networks/{networkId}/routers", API_MOD_NETWORKS, API_READ, empty_list },
        { "POST", "/api/networks/{networkId}/routers", API_MOD_NETWORKS, API_CREATE, router_create },
        { "GET", "/api/networks/{networkId}/routers/{routerId}", API_MOD_NETWORKS, API_READ, router_one },
        { "PUT", "/api/networks/{networkId}/routers/{routerId}", API_MOD_NETWORKS, API_UPDATE, router_one },
        { "DELETE", "/api/networks/{networkId}/routers/{routerId}", API_MOD_NETWORKS, API_DELETE, router_one },

        { "GET", "/api/dns/zones", API_MOD_DNS, API_READ, empty_list },
        { "POST", "/api/dns/zones", API_MOD_DNS, API_CREATE, zone_create },
        { "GET", "/api/dns/zones/{zoneId}", API_MOD_DNS, API_READ, zone_one },
        { "PUT", "/api/dns/zones/{zoneId}", API_MOD_DNS, API_UPDATE, zone_one },
        { "DELETE", "/api/dns/zones/{zoneId}", API_MOD_DNS, API_DELETE, zone_one },
        { "GET", "/api/dns/zones/{zoneId}/records", API_MOD_DNS, API_READ, empty_list },
        { "POST", "/api/dns/zones/{zoneId}/records", API_MOD_DNS, API_CREATE, record_create },
        { "GET", "/api/dns/zones/{zoneId}/records/{recordId}", API_MOD_DNS, API_READ, record_one },
        { "PUT", "/api/dns/zones/{zoneId}/records/{recordId}", API_MOD_DNS, API_UPDATE, record_one },
        { "DELETE", "/api/dns/zones/{zoneId}/records/{recordId}", API_MOD_DNS, API_DELETE, record_one },

        { "GET", "/api/locations/countries", API_MOD_SELF, API_READ, empty_list },
        { "GET", "/api/locations/countries/{country}/cities", API_MOD_SELF, API_READ, cities },

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
