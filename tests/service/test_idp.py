"""netbird-mgmt with an IdP configured (HttpConfig pointing at the loopback
TestIdP of tests/idp/testidp.py): the signing keys are fetched in the
background, an IdP that is down at start keeps /readyz at 200 but says why
IdP tokens are refused (docs/auth.md, "Key fetching and readiness"), and
/metrics counts the fetches and the keys loaded.
"""

import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "idp"))

import svc  # noqa: E402
import testidp  # noqa: E402
from svc import Server, base_args, http, http_json, test  # noqa: E402
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def parse(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, "not a sample line: %r" % line
            out[(m.group(1), tuple(sorted(LABEL.findall(m.group(2) or ""))))] = float(m.group(3))
    return out


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def metrics(srv):
    status, _, body = http("GET", srv.url("/metrics"))
    assert status == 200, status
    return parse(body.decode())


def wait_until(pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


@test
def idp_down_at_start_then_up():
    dsn, _ = svc.new_db()
    idp = testidp.TestIdP()
    svc.defer(idp.stop)
    idp.down = True
    cfg = svc.write_json({"HttpConfig": idp.http_config()})
    srv = Server(base_args(config=cfg), env=svc.dsn_env(dsn))

    # Down: still ready (200), degraded with the reason.
    # The IdP counting a request is not the server having its answer: wait
    # for the server's own count of failed fetches.
    wait_until(lambda: idp.fetches >= 1, "a JWKS fetch")
    wait_until(lambda: value(metrics(srv), "netbird_cp_jwt_key_fetches_total", result="failed") >= 1,
               "a failed fetch counted")
    status, _, body = http_json("GET", srv.url("/readyz"))
    assert status == 200, (status, body)
    assert body["status"] == "degraded", body
    assert body["degraded"] == "idp", body
    assert body["error"].startswith("idp: no signing keys yet: "), body
    assert "503" in body["error"], body
    m = metrics(srv)
    assert value(m, "netbird_cp_jwt_signing_keys") == 0, m
    assert value(m, "netbird_cp_jwt_key_fetches_total", result="failed") >= 1, m
    assert value(m, "netbird_cp_jwt_key_fetches_total", result="ok") == 0, m

    # Up: the background retry loads the keys; /readyz is plain ready.
    idp.down = False
    wait_until(lambda: value(metrics(srv), "netbird_cp_jwt_signing_keys") == 2, "keys loaded")
    status, _, body = http_json("GET", srv.url("/readyz"))
    assert (status, body) == (200, {"status": "ready"}), (status, body)
    m = metrics(srv)
    assert value(m, "netbird_cp_jwt_key_fetches_total", result="ok") >= 1, m
    assert value(m, "netbird_cp_jwt_tokens_total", result="accepted") == 0, m

    rc, _ = srv.stop()
    assert rc == 0, (rc, srv.stderr())


@test
def no_idp_configured_shows_no_jwt_metrics():
    dsn, _ = svc.new_db()
    srv = Server(base_args(), env=svc.dsn_env(dsn))
    status, _, body = http_json("GET", srv.url("/readyz"))
    assert (status, body) == (200, {"status": "ready"}), (status, body)
    status, _, text = http("GET", srv.url("/metrics"))
    assert b"netbird_cp_jwt_" not in text


if __name__ == "__main__":
    sys.exit(svc.run_all())
