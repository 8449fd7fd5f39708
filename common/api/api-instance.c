/*
 * /api/instance (openapi InstanceStatus) and /api/instance/version
 * (InstanceVersionInfo).
 *
 * There is no embedded identity provider here, so an instance never
 * waits for its first owner: setup_required is always false (accounts
 * come from `netbird-mgmt bootstrap`). The version endpoint reports the
 * running version only: NetBird looks the newest releases up on the
 * internet, which this server never does, so the optional *_available_version
 * fields are left out and management_update_available is false.
 */
#include "api-int.h"

static int instance_status(api_ctx *c) {
        static const char body[] = "{\"setup_required\":false}";

        return api_reply_text(c, 200, body, sizeof body - 1);
}

static int version_info(api_ctx *c) {
        json_t *v = json_pack("{s:s, s:b}", "management_current_version", c->api->version,
                              "management_update_available", 0);
        int r = api_reply_json(c, 200, v);

        json_decref(v);
        return r;
}

/* NetBird serves the status without authentication (the dashboard asks
 * before anyone logged in) and the version to any authenticated user. */
const api_route api_instance_routes[] = {
        { "GET", "/api/instance", API_MOD_PUBLIC, API_READ, instance_status },
        { "GET", "/api/instance/version", API_MOD_SELF, API_READ, version_info },
        { NULL },
};
