/*
 * What this server does not hold yet: user invites (NetBird's embedded-IdP
 * invite links) and remote jobs (debug bundles over the Job stream).
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

/* ---- remote jobs (/api/peers/{peerId}/jobs) -------------------------------------------------
 * NetBird sends a job (a debug bundle) to a peer over the agent's Job
 * stream and stores it. This server answers Job UNIMPLEMENTED
 * (docs/protocol.md, "Job"), so no peer is ever connected for jobs and
 * none is stored: the routes answer what NetBird answers for a peer
 * without a Job stream. The checks come in NetBird's order (the job's
 * validation, the peer, its version, its stream). */

#define REMOTE_JOBS_MIN_VERSION "0.64.0"

static const char SQL_JOB_PEER_ACCOUNT[] = "SELECT account_id FROM peers WHERE id = $1";
static const char SQL_JOB_PEER_VERSION[] = "SELECT meta_wt_version FROM peers WHERE account_id = $1 AND id = $2";

/* NetBird's GetAccountIDByPeerID check of the list and get routes. */
static int job_peer_check(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { c->param[0] };
        int r = api_sql(c, SQL_JOB_PEER_ACCOUNT, 1, p, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return api_error(c, 404, "peer %s account not found", c->param[0]);
        if (strcmp(cp_store_rows_get(rows, 0, 0), c->account_id) != 0)
                return api_error(c, 403, "peer is not part of this account");
        return 0;
}

static int jobs_list(api_ctx *c) {
        int r = job_peer_check(c);

        return r < 0 ? r : api_reply_text(c, 200, "[]", 2);
}

static int job_get(api_ctx *c) {
        int r = job_peer_check(c);

        return r < 0 ? r : api_error(c, 404, "job %s not found", c->param[1]);
}

/* go-version's ">= min" on the part before the first '-'; false when it
 * does not parse (NetBird refuses those too). */
static bool version_at_least(const char *v, int maj, int min, int patch) {
        long part[3] = { 0, 0, 0 };
        const char *s = v;

        if (*s == 'v')
                s++;
        for (int i = 0; i < 3; i++) {
                char *end;
                if (*s < '0' || *s > '9')
                        return false;
                part[i] = strtol(s, &end, 10);
                s = end;
                if (*s == '.' && i < 2) {
                        s++;
                        continue;
                }
                break;
        }
        if (*s && *s != '-')
                return false;
        if (part[0] != maj)
                return part[0] > maj;
        if (part[1] != min)
                return part[1] > min;
        return part[2] >= patch;
}

static bool development_version(const char *v) {
        return strncmp(v, "development", 11) == 0 || strncmp(v, "ci-", 3) == 0 || strncmp(v, "dev-", 4) == 0;
}

/* NetBird's types.NewJob: 400 with its texts. */
static int job_validate(api_ctx *c) {
        json_t *body = api_body(c), *workload, *params, *v;
        const char *type;

        if (!body)
                return API_FAIL;
        workload = json_object_get(body, "workload");
        if (!workload || json_is_null(workload))
                return api_error(c, 400, "could not determine job type: unexpected end of JSON input");
        if (!json_is_object(workload))
                return api_bad_json(c);
        v = json_object_get(workload, "type");
        if (v && !json_is_null(v) && !json_is_string(v))
                return api_bad_json(c);
        type = v && json_is_string(v) ? json_string_value(v) : "";
        if (!*type)
                return api_error(c, 400, "job type is required");
        if (strcmp(type, "bundle") != 0)
                return api_error(c, 400, "unsupported job type: %s", type);
        params = json_object_get(workload, "parameters");
        json_t *bf = params ? json_object_get(params, "bundle_for") : NULL;
        json_t *bt = params ? json_object_get(params, "bundle_for_time") : NULL;
        json_t *lc = params ? json_object_get(params, "log_file_count") : NULL;
        json_t *an = params ? json_object_get(params, "anonymize") : NULL;
        if ((params && !json_is_object(params) && !json_is_null(params)) || (bf && !json_is_boolean(bf)) ||
            (bt && !json_is_integer(bt)) || (lc && !json_is_integer(lc)) || (an && !json_is_boolean(an)))
                return api_error(c, 400, "invalid parameters for bundle job");
        json_int_t time = bt ? json_integer_value(bt) : 0, count = lc ? json_integer_value(lc) : 0;
        if (bf && json_is_true(bf) && (time < 1 || time > 5))
                return api_error(c, 400, "bundle_for_time must be between 1 and 5, got %" JSON_INTEGER_FORMAT, time);
        if (count < 1 || count > 1000)
                return api_error(c, 400, "log-file-count must be between 1 and 1000, got %" JSON_INTEGER_FORMAT,
                                 count);
        return 0;
}

static int job_create(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int r = job_validate(c);

        if (r < 0)
                return r;
        const char *p[2] = { c->account_id, c->param[0] };
        r = api_sql(c, SQL_JOB_PEER_VERSION, 2, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return api_error(c, 404, "peer not found: %s", c->param[0]);
        const char *ver = cp_store_rows_get(rows, 0, 0);
        if (!ver)
                ver = "";
        if (!development_version(ver) && !version_at_least(ver, 0, 64, 0))
                return api_error(c, 412, "peer version %s does not meet the minimum required version %s for remote "
                                 "jobs", ver, REMOTE_JOBS_MIN_VERSION);
        /* NetBird's answer while the peer has no Job stream open, which
         * here is always. */
        return api_error(c, 400, "peer not connected");
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
        { "GET", "/api/peers/{peerId}/jobs", API_MOD_REMOTE_JOBS, API_READ, jobs_list },
        { "POST", "/api/peers/{peerId}/jobs", API_MOD_REMOTE_JOBS, API_CREATE, job_create },
        { "GET", "/api/peers/{peerId}/jobs/{jobId}", API_MOD_REMOTE_JOBS, API_READ, job_get },
        { NULL },
};
