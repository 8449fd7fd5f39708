"""netbird-mgmt command line and configuration errors, against the real binary.

Most cases fail before the store is opened, so they need no database; the
few that start the server skip without CP_TEST_PG_DSN.
"""

import json
import os
import socket

import svc
from svc import test, run, check_usage_error


@test
def no_arguments_prints_usage_and_exits_2():
    r = run([])
    assert r.rc == 2, r
    assert "Usage:" in r.err and "management" in r.err, r
    assert r.out == "", r


@test
def help_and_version():
    r = run(["--help"])
    assert r.rc == 0 and "bootstrap" in r.out and "migrate" in r.out, r
    r = run(["management", "--help"])
    assert r.rc == 0, r
    for needle in ("--port", "--http-port", "--postgres-dsn", "NB_STORE_ENGINE_POSTGRES_DSN",
                   "NB_MGMT_PORT", "NB_SQL_MAX_OPEN_CONNS", "NB_CACHE_REDIS_ADDRESS",
                   "HttpConfig.CertFile", "--shutdown-timeout", "--disable-legacy-port"):
        assert needle in r.out, (needle, r)
    assert "--account-name" not in r.out, r
    r = run(["bootstrap", "--help"])
    assert r.rc == 0 and "--account-name" in r.out and "--setup-key-ttl" in r.out, r
    r = run(["version"])
    assert r.rc == 0 and r.out.startswith("netbird-mgmt "), r


@test
def unknown_command():
    check_usage_error(run(["serve"]), 'unknown command "serve"')


@test
def unknown_flag_names_the_flag():
    r = run(["management", "--frobnicate", "1"])
    check_usage_error(r, "unknown flag --frobnicate", "management --help")
    r = run(["management", "--port=1", "--no-such-thing=yes"])
    check_usage_error(r, "--no-such-thing")
    # bootstrap's own flags exist only there
    check_usage_error(run(["management", "--account-name", "x"]), "unknown flag --account-name")


@test
def bad_values_name_the_key():
    check_usage_error(run(["management", "--port", "abc"]), "--port", '"abc"')
    check_usage_error(run(["management", "--http-port=99999"]), "--http-port", "65535")
    check_usage_error(run(["management", "--log-level", "loud"]), "--log-level", '"loud"', "trace")
    check_usage_error(run(["management", "--shutdown-timeout", "soonish"]), "--shutdown-timeout", "duration")
    check_usage_error(run(["management", "--disable-legacy-port=maybe"]), "--disable-legacy-port",
                      "true or false")
    check_usage_error(run(["management", "--db-pool-size", "0"]), "--db-pool-size")
    check_usage_error(run(["management", "--port"]), "--port needs a value")
    check_usage_error(run(["bootstrap", "--setup-key-ttl", "later"]), "--setup-key-ttl")


@test
def env_bad_value_names_the_variable():
    check_usage_error(run(["management"], env={"NB_MGMT_HTTP_PORT": "abc"}),
                      "environment variable NB_MGMT_HTTP_PORT", '"abc"')
    check_usage_error(run(["management"], env={"NB_SQL_MAX_OPEN_CONNS": "many"}),
                      "environment variable NB_SQL_MAX_OPEN_CONNS")
    check_usage_error(run(["management"], env={"NB_MGMT_LOG_LEVEL": "shout"}),
                      "environment variable NB_MGMT_LOG_LEVEL")
    check_usage_error(run(["management"], env={"NETBIRD_STORE_ENGINE": "sqlite"}),
                      "environment variable NETBIRD_STORE_ENGINE", "postgres")


@test
def json_bad_values_name_the_key():
    cases = [
        ({"ControlPlane": {"Port": "x"}}, "ControlPlane.Port"),
        ({"ControlPlane": {"ShutdownTimeout": "eventually"}}, "ControlPlane.ShutdownTimeout"),
        ({"HttpConfig": {"CertFile": 5}}, "HttpConfig.CertFile"),
        ({"HttpConfig": []}, "HttpConfig"),
        ({"DataStoreEncryptionKey": "dG9vIHNob3J0"}, "DataStoreEncryptionKey"),
        ({"StoreConfig": {"Engine": "sqlite"}}, "StoreConfig.Engine"),
    ]
    for obj, key in cases:
        path = svc.write_json(obj)
        r = run(["management", "--config", path])
        check_usage_error(r, key, path)
    path = svc.write_json(None, text='{"Stuns": [')
    check_usage_error(run(["management", "--config", path]), "cannot parse config file", "line")


@test
def sqlite_engine_is_explained():
    path = svc.write_json({"StoreConfig": {"Engine": "sqlite"}})
    r = run(["management", "--config", path])
    check_usage_error(r, '"sqlite"', "StoreConfig.Engine", "only the postgres store engine is supported",
                      "NB_STORE_ENGINE_POSTGRES_DSN")


@test
def bad_trusted_proxies_are_refused():
    r = run(["management", "--trusted-proxies", "10.0.0.0/8, 10.0.0.0/99"])
    check_usage_error(r, "--trusted-proxies", '"10.0.0.0/99" is not an IP address or prefix')
    r = run(["management", "--trusted-proxies", "proxy.example.com"])
    check_usage_error(r, '"proxy.example.com" is not an IP address or prefix')


@test
def letsencrypt_is_refused():
    r = run(["management", "--letsencrypt-domain", "mgmt.example.com"])
    check_usage_error(r, "--letsencrypt-domain", "ACME/Let's Encrypt is not supported",
                      "--cert-file and --cert-key")
    path = svc.write_json({"HttpConfig": {"LetsEncryptDomain": "mgmt.example.com"}})
    check_usage_error(run(["management", "--config", path]), "HttpConfig.LetsEncryptDomain")
    # NetBird's templates carry an empty value: that is fine
    path = svc.write_json({"HttpConfig": {"LetsEncryptDomain": ""}})
    check_usage_error(run(["management", "--config", path]), "NB_STORE_ENGINE_POSTGRES_DSN")


@test
def cert_file_needs_cert_key():
    check_usage_error(run(["management", "--cert-file", "/tmp/x.crt"]), "--cert-file is set",
                      "--cert-key is not")
    check_usage_error(run(["management"], env={"NB_MGMT_CERT_KEY": "/tmp/x.key"}), "--cert-key is set",
                      "environment variable NB_MGMT_CERT_KEY")


@test
def missing_dsn_names_the_variable():
    for cmd in ("management", "migrate", "bootstrap"):
        check_usage_error(run([cmd, "--config="]), "NB_STORE_ENGINE_POSTGRES_DSN")


@test
def explicit_config_file_must_exist():
    check_usage_error(run(["management", "--config", "/nonexistent/management.json"]),
                      "/nonexistent/management.json", "flag --config")
    check_usage_error(run(["management"], env={"NB_MGMT_CONFIG": "/nonexistent/m.json"}),
                      "environment variable NB_MGMT_CONFIG")


@test
def config_errors_are_also_logged_as_json():
    # management logs to stdout (console); one-shot commands log to stderr
    r = run(["management", "--port", "abc"])
    assert r.rc == 2, r
    logs = svc.json_lines(r.out)
    assert any(l["level"] == "error" and "--port" in l.get("error", "") for l in logs), r
    r = run(["bootstrap", "--port", "abc"])
    assert r.rc == 2 and r.out == "", r
    lines = [l for l in r.err.splitlines() if l.startswith("{")]
    assert any("--port" in json.loads(l).get("error", "") for l in lines), r


@test
def bad_certificate_files():
    d = svc.tmpdir()
    crt, key = os.path.join(d, "x.crt"), os.path.join(d, "x.key")
    with open(crt, "w") as f:
        f.write("not a certificate\n")
    with open(key, "w") as f:
        f.write("not a key\n")
    r = run(["management", "--cert-file", crt, "--cert-key", key, "--postgres-dsn", "host=/nonexistent"] +
            svc.KEY_ARGS)
    check_usage_error(r, crt, "no PEM certificate")
    r = run(["management", "--cert-file", os.path.join(d, "missing.crt"), "--cert-key", key,
             "--postgres-dsn", "host=/nonexistent"] + svc.KEY_ARGS)
    check_usage_error(r, "missing.crt")


@test
def data_store_encryption_key_is_required():
    # Checked before anything else is started: exit 2 with how to make one.
    r = run(["management", "--config=", "--postgres-dsn", "host=/nonexistent"])
    check_usage_error(r, "no DataStoreEncryptionKey configured", "every replica", "openssl rand -base64 32",
                      "NB_MGMT_DATA_STORE_ENCRYPTION_KEY", "--data-store-encryption-key")
    assert any(l["level"] == "error" and "DataStoreEncryptionKey" in l.get("error", "")
               for l in svc.json_lines(r.out)), r
    r = run(["management", "--config=", "--postgres-dsn", "host=/nonexistent",
             "--data-store-encryption-key", "c2hvcnQta2V5"])
    check_usage_error(r, "--data-store-encryption-key", "32 bytes")
    assert "c2hvcnQta2V5" not in r.err + r.out, r       # secrets are never echoed
    path = svc.write_json({"DataStoreEncryptionKey": "not base64!"})
    check_usage_error(run(["management", "--config", path, "--postgres-dsn", "host=/nonexistent"]),
                      "DataStoreEncryptionKey in " + path)


@test
def netbird_config_errors_name_the_key():
    def check(conf, *needles):
        path = svc.write_json(conf)
        r = run(["management", "--config", path, "--postgres-dsn", "host=/nonexistent"] + svc.KEY_ARGS)
        check_usage_error(r, path, *needles)
    check({"TURNConfig": {"Turns": [{"Proto": "quic", "URI": "turn:x:3478"}]}},
          "TURNConfig.Turns[0].Proto", '"quic"', "udp, tcp, http, https, dtls")
    check({"TURNConfig": {"Turns": [{"Proto": "udp", "URI": ""}]}}, "TURNConfig.Turns[0].URI", "empty")
    check({"TURNConfig": {"CredentialsTTL": "soon"}}, "TURNConfig.CredentialsTTL", "duration")
    check({"Relay": {"Addresses": "rels://relay.example:443"}}, "Relay.Addresses", "an array")
    check({"Stuns": {"URI": "stun:x:3478"}}, "Stuns", "expected an array, got an object")
    check({"Signal": {"Proto": "https"}}, "Signal.URI")
    check({"PKCEAuthorizationFlow": {"ProviderConfig": {"RedirectURLs": [1]}}},
          "PKCEAuthorizationFlow.ProviderConfig.RedirectURLs[0]", "a string")
    check({"DeviceAuthorizationFlow": {"ProviderConfig": {"UseIDToken": "yes"}}},
          "DeviceAuthorizationFlow.ProviderConfig.UseIDToken")


@test
def netbird_config_env_errors_name_the_variable():
    # The agent-facing keys may come from the environment as JSON; a bad
    # value is a configuration error naming the variable, not the file.
    path = svc.write_json({"Stuns": [{"Proto": "udp", "URI": "stun:file:3478"}]})

    def check(env, *needles):
        r = run(["management", "--config", path, "--postgres-dsn", "host=/nonexistent"] + svc.KEY_ARGS, env=env)
        check_usage_error(r, *needles)
        assert path not in r.err, r
    check({"NB_MGMT_STUNS": '[{"Proto": "udp", "URI": '}, "environment variable NB_MGMT_STUNS", "not JSON")
    check({"NB_MGMT_STUNS": '[{"Proto": "quic", "URI": "stun:x:3478"}]'},
          "Stuns[0].Proto in environment variable NB_MGMT_STUNS", '"quic"')
    check({"NB_MGMT_TURN_CONFIG": '{"Turns": [{"Proto": "udp", "URI": ""}]}'},
          "TURNConfig.Turns[0].URI in environment variable NB_MGMT_TURN_CONFIG", "empty")
    check({"NB_MGMT_RELAY": '["rels://relay.example:443"]'}, "Relay in environment variable NB_MGMT_RELAY",
          "expected an object, got an array")
    check({"NB_MGMT_SIGNAL": "signal.example:443"}, "environment variable NB_MGMT_SIGNAL", "not JSON")
    check({"NB_MGMT_DEVICE_AUTHORIZATION_FLOW": '{"ProviderConfig": {"LoginFlag": 999}}'},
          "DeviceAuthorizationFlow.ProviderConfig.LoginFlag in environment variable "
          "NB_MGMT_DEVICE_AUTHORIZATION_FLOW", "0 to 255")
    check({"NB_MGMT_PKCE_AUTHORIZATION_FLOW": '{"ProviderConfig": {"RedirectURLs": "http://x/"}}'},
          "PKCEAuthorizationFlow.ProviderConfig.RedirectURLs in environment variable "
          "NB_MGMT_PKCE_AUTHORIZATION_FLOW", "an array")
    r = run(["management", "--help"])
    for var in ("NB_MGMT_STUNS", "NB_MGMT_TURN_CONFIG", "NB_MGMT_RELAY", "NB_MGMT_SIGNAL",
                "NB_MGMT_DEVICE_AUTHORIZATION_FLOW", "NB_MGMT_PKCE_AUTHORIZATION_FLOW", "NB_MGMT_AUTH_ISSUER",
                "NB_MGMT_AUTH_AUDIENCE", "NB_MGMT_AUTH_KEYS_LOCATION", "NB_MGMT_EXTRA_AUTH_AUDIENCE",
                "NB_MGMT_AUTH_USER_ID_CLAIM", "NB_MGMT_OIDC_CONFIG_ENDPOINT"):
        assert var in r.out, (var, r)


@test
def unreachable_database_is_a_runtime_failure():
    port = svc.free_port()      # nothing listens there
    r = run(["management", "--config=", "--listen-address", "127.0.0.1",
             "--postgres-dsn", "host=127.0.0.1 port=%d user=x dbname=x connect_timeout=5" % port] + svc.KEY_ARGS)
    assert r.rc == 1, r
    assert "PostgreSQL" in r.err, r
    svc.check_sanitizer_clean(r.err)
    r = run(["migrate", "--config=", "--postgres-dsn",
             "host=127.0.0.1 port=%d user=x dbname=x connect_timeout=5" % port])
    assert r.rc == 1 and r.out == "", r


@test
def port_in_use_is_a_runtime_failure():
    dsn, _ = svc.new_db()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        r = run(["management"] + svc.base_args(port=busy), env=svc.dsn_env(dsn), timeout=60)
        assert r.rc == 1, r
        assert "cannot listen for gRPC" in r.err, r
        r = run(["management"] + svc.base_args(http_port=busy), env=svc.dsn_env(dsn), timeout=60)
        assert r.rc == 1, r
        assert "cannot listen for HTTP" in r.err, r
    svc.check_sanitizer_clean(r.err)


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
