/*
 * mgmt-netconf.h: what management.json tells agents, read once at start.
 *
 * NetBird's management.json carries the addresses agents are given in
 * every LoginResponse (and later in Sync): STUN servers (Stuns), TURN
 * servers and their credentials (TURNConfig), relay servers and the secret
 * their tokens are signed with (Relay), the signal server (Signal); plus
 * the OAuth flows handed out by GetDeviceAuthorizationFlow and
 * GetPKCEAuthorizationFlow, and the HttpConfig values the SSH JWT settings
 * come from. mgmt_netconf_load() reads those keys from the parsed file
 * (cp_config.source.file) into a mgmt_netconf; a wrong type or value is a
 * configuration error that names the key, the same as for our own
 * settings. Keys match case-insensitively, as Go's encoding/json does.
 *
 * Every one of those keys can also come from the environment, which wins
 * over the file as for every other setting: NB_MGMT_STUNS,
 * NB_MGMT_TURN_CONFIG, NB_MGMT_RELAY, NB_MGMT_SIGNAL,
 * NB_MGMT_DEVICE_AUTHORIZATION_FLOW and NB_MGMT_PKCE_AUTHORIZATION_FLOW
 * hold the key's whole JSON value (replacing the file's key, not merged
 * into it); NB_MGMT_AUTH_ISSUER, NB_MGMT_AUTH_AUDIENCE,
 * NB_MGMT_AUTH_KEYS_LOCATION, NB_MGMT_EXTRA_AUTH_AUDIENCE,
 * NB_MGMT_AUTH_USER_ID_CLAIM and NB_MGMT_OIDC_CONFIG_ENDPOINT hold the
 * HttpConfig strings as plain text. (HttpConfig.IdpSignKeyRefreshEnabled
 * is a row of the settings table: --idp-sign-key-refresh-enabled.)
 * Errors in a variable name the variable.
 *
 * Credentials (netbird-protocol.md section 1.5):
 *   TURN, time-based   user = decimal Unix expiry, password =
 *                      base64(HMAC-SHA1(TURNConfig.Secret, user))
 *   TURN, static       Username / Password of each Turns[] entry
 *   relay              payload = decimal Unix expiry, signature =
 *                      base64(HMAC-SHA256(SHA-256(Relay.Secret), payload))
 * The TTLs (CredentialsTTL, default 12 h) give the expiry.
 *
 * Lifetime: owned by the manager for the process lifetime, read-only
 * after load, so any thread may read it. mgmt_netconf_free() wipes the
 * secrets.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/strbuf.h"
#include "management.pb-c.h"
#include "mgmt-arena.h"

struct json_t;

typedef struct mgmt_host {
        char *uri;
        Management__HostConfig__Protocol protocol;
        char *username;                 /* "" when not given */
        char *password;
} mgmt_host;

/* ProviderConfig of an OAuth flow, as the file gives it. */
typedef struct mgmt_provider {
        char *client_id, *client_secret, *domain, *audience;
        char *device_auth_endpoint, *token_endpoint, *authorization_endpoint, *scope;
        bool use_id_token;
        char **redirect_urls;
        size_t n_redirect_urls;
        bool disable_prompt_login;
        uint32_t login_flag;
} mgmt_provider;

typedef struct mgmt_netconf {
        mgmt_host *stuns;
        size_t n_stuns;

        bool has_turn;                  /* TURNConfig present */
        bool turn_time_based;
        int64_t turn_ttl_s;
        char *turn_secret;
        mgmt_host *turns;
        size_t n_turns;

        char **relay_urls;              /* empty: no relay */
        size_t n_relay_urls;
        int64_t relay_ttl_s;
        uint8_t relay_key[32];          /* SHA-256 of Relay.Secret */
        bool relay_secret_empty;

        bool has_signal;
        mgmt_host signal;

        /* DeviceAuthorizationFlow: configured unless absent or provider
         * "none"; provider_ok is false for a provider name the protocol
         * has no value for (the RPC then answers INVALID_ARGUMENT, as
         * NetBird does). */
        bool device_flow;
        bool device_provider_ok;
        char *device_provider_name;
        mgmt_provider device;
        bool pkce_flow;
        mgmt_provider pkce;

        /* HttpConfig, for PeerConfig.sshConfig.jwtConfig and the IdP
         * token validator (cp_jwt); "" when absent. */
        char *auth_issuer;
        char *auth_audience;
        char *auth_keys_location;
        char *extra_auth_audience;
        char *auth_user_id_claim;
        char *oidc_config_endpoint;

        /* The IdP token validator (borrowed; NULL without an IdP), set by
         * the manager before any thread reads the netconf: with an OIDC
         * config endpoint, the discovered issuer and jwks_uri replace
         * AuthIssuer and AuthKeysLocation in the SSH JWTConfig (NetBird's
         * ApplyOIDCConfig). */
        struct cp_jwt *jwt;
} mgmt_netconf;

/* Reads the keys above from file (may be NULL: nothing configured) and
 * the environment envp (NULL: the process environment; reading it is not
 * thread-safe, so load in main before other threads start); path names
 * the file in messages. On failure nothing is returned and reterr names
 * the key and where it came from ("TURNConfig.Turns[0].Proto in
 * /etc/...: ...", "Stuns[0].URI in environment variable NB_MGMT_STUNS:
 * ..."). */
int mgmt_netconf_load(const struct json_t *file, const char *path, char *const *envp, mgmt_netconf **ret,
                      cp_error *reterr);
/* Appends the --help lines for the keys above and their variables. */
void mgmt_netconf_usage(cp_strbuf *out);
/* Wipes the secrets and frees. Accepts NULL; returns NULL. */
mgmt_netconf *mgmt_netconf_free(mgmt_netconf *n);

/* Settings that load (NetBird accepts them too) but are almost certainly
 * mistakes, e.g. relay addresses without a secret: calls warn(text,
 * userdata) for each. */
void mgmt_netconf_check(const mgmt_netconf *n, void (*warn)(const char *text, void *userdata), void *userdata);

/* A time-limited credential: decimal Unix expiry and its base64 HMAC. */
typedef struct mgmt_token {
        char payload[24];
        char signature[48];
} mgmt_token;

/* TURN credential expiring at now_s + turn_ttl_s (HMAC-SHA1 with the TURN
 * secret). */
void mgmt_netconf_turn_token(const mgmt_netconf *n, int64_t now_s, mgmt_token *ret);
/* Relay token expiring at now_s + relay_ttl_s (HMAC-SHA256 keyed with
 * SHA-256 of the relay secret). */
void mgmt_netconf_relay_token(const mgmt_netconf *n, int64_t now_s, mgmt_token *ret);

/* The NetbirdConfig of a LoginResponse: stuns; turns (time-based
 * credentials when TURNConfig.TimeBasedCredentials, else the static ones);
 * signal; relay with a fresh token when relay addresses are configured.
 * Built in a (strings point into n or a); NULL never. */
Management__NetbirdConfig *mgmt_netconf_build(const mgmt_netconf *n, int64_t now_s, mgmt_arena *a);

/* Credential refresh on open Sync streams (netbird-protocol.md section
 * 1.5): the interval in milliseconds, 3/4 of the shortest TTL among the
 * credentials that expire (time-based TURN credentials, the relay token
 * when relay addresses are configured); 0 when nothing expires (no relay,
 * TURN absent or static): no refresh. */
int64_t mgmt_netconf_refresh_ms(const mgmt_netconf *n);

/* The NetbirdConfig of a refresh push: only turns with fresh time-based
 * credentials (when TURNConfig.TimeBasedCredentials) and relay with a
 * fresh token (when relay addresses are configured; always together, as
 * a config without relay wipes the agent's relay addresses). Built in a;
 * NULL when mgmt_netconf_refresh_ms() is 0. */
Management__NetbirdConfig *mgmt_netconf_build_refresh(const mgmt_netconf *n, int64_t now_s, mgmt_arena *a);

/* PeerConfig.sshConfig.jwtConfig for an SSH-enabled peer: issuer
 * (HttpConfig.AuthIssuer), audience (AuthAudience), keys location
 * (AuthKeysLocation or <issuer>/.well-known/jwks.json). NULL when no
 * audience or no issuer is configured. */
Management__JWTConfig *mgmt_netconf_jwt_config(const mgmt_netconf *n, mgmt_arena *a);
