"""The bus on a Redis with a password (requirepass) and with an ACL user
of only what the bus needs: replicas authenticate on every connection and
fan out through it; a wrong password (or none) is a clear 503 on /readyz
(failed "bus") for a replica never ready yet, "degraded" with Redis's
reason for one that was, and a metric, not a silent loss of fan-out; the
password appears in no log line and no /readyz body. docs/database-ha.md."""

import os
import secrets
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
from fixture import Deployment, wait_until  # noqa: E402
from nbagent import build_meta, remote_keys  # noqa: E402
from redisfix import OwnRedis  # noqa: E402
from svc import test  # noqa: E402

PASSWORD = "s3cret/p@ss:" + secrets.token_hex(4)
ENCODED = PASSWORD.replace("%", "%25").replace("/", "%2F").replace("@", "%40").replace(":", "%3A")
# The narrowest ACL that works: the bus's one channel, PUBLISH, SUBSCRIBE
# (AUTH is always allowed; PING for operators' health checks).
ACL_USER = ["--user", "default", "off",
            "--user", "netbird", "on", ">" + PASSWORD, "resetchannels", "&nbcp-acl:account-serial",
            "-@all", "+publish", "+subscribe", "+ping"]


def replica(dep, url, prefix, wait_bus=True):
    srv = dep.start("--redis-url", url, "--bus-channel-prefix", prefix, "--serial-check-interval", "0s",
                    "--log-level", "debug")
    if wait_bus:
        srv.wait_log(lambda o: o.get("msg") == "bus subscribed")
    return srv


def readyz(srv):
    status, _, body = svc.http_json("GET", srv.url("/readyz"))
    return status, body




def no_secret(srv, *texts):
    for where, text in (("stdout", srv.stdout()), ("stderr", srv.stderr())) + tuple(
            ("text", t) for t in texts):
        assert PASSWORD not in text and ENCODED not in text, "password in %s:\n%s" % (where, text)


def fan_out(dep, r1, r2):
    """A peer registering on r2 reaches a's stream on r1 by the bus (the
    serial check is off)."""
    a = dep.agent(r1)
    a.register(dep.setup_key, meta=build_meta("alpha-" + secrets.token_hex(3)))
    s = a.sync()
    s.next(timeout=15)
    b = dep.agent(r2)
    b.register(dep.setup_key, meta=build_meta("bravo-" + secrets.token_hex(3)))
    m = s.wait_for(lambda m: b.pub_b64 in remote_keys(m), timeout=10)
    assert m.NetworkMap.Serial == dep.network_serial()
    s.cancel()


@test
def password_fans_out_and_never_shows():
    svc.needs_db()
    redis = OwnRedis("--requirepass", PASSWORD)
    dep = Deployment()
    url = redis.url(":" + ENCODED) + "/0"
    r1 = replica(dep, url, "nbcp-pw")
    r2 = replica(dep, url, "nbcp-pw")
    fan_out(dep, r1, r2)
    for srv in (r1, r2):
        status, body = readyz(srv)
        assert status == 200 and body == {"status": "ready"}, (status, body)
        assert svc.metric(srv, "netbird_cp_bus_connected") == 1
        assert svc.metric(srv, "netbird_cp_bus_auth_failures_total") == 0
    # Redis restarts: both connections authenticate again.
    redis.stop()
    redis.start()
    wait_until(lambda: svc.metric(r1, "netbird_cp_bus_connected") == 1 and readyz(r1)[0] == 200, timeout=20,
               what="r1 back on the bus")
    wait_until(lambda: svc.metric(r2, "netbird_cp_bus_connected") == 1, timeout=20, what="r2 back on the bus")
    fan_out(dep, r1, r2)
    no_secret(r1)
    no_secret(r2)


@test
def acl_user_fans_out():
    svc.needs_db()
    redis = OwnRedis(*ACL_USER)
    dep = Deployment()
    url = redis.url("netbird:" + ENCODED)
    r1 = replica(dep, url, "nbcp-acl")
    r2 = replica(dep, url, "nbcp-acl")
    fan_out(dep, r1, r2)
    assert readyz(r1)[0] == 200 and readyz(r2)[0] == 200
    no_secret(r1)
    no_secret(r2)


def refused(dep, url, prefix, needle):
    srv = replica(dep, url, prefix, wait_bus=False)
    wait_until(lambda: readyz(srv)[0] == 503, timeout=15, what="/readyz 503")
    status, body = readyz(srv)
    assert body["status"] == "not ready" and body["failed"] == "bus", body
    assert body["error"].startswith("Redis refused "), body
    assert needle in body["error"], body
    wait_until(lambda: (svc.metric(srv, "netbird_cp_bus_auth_failures_total") or 0) >= 1, timeout=10,
               what="auth failures counted")
    assert svc.metric(srv, "netbird_cp_bus_connected") == 0
    line = srv.wait_log(lambda o: o.get("msg", "").startswith("the bus cannot work"))
    assert needle in line.get("error", ""), line
    # Still alive and serving /healthz: only readiness is withdrawn.
    assert svc.http("GET", srv.url("/healthz"))[0] == 200
    no_secret(srv, str(body))
    return srv


@test
def wrong_password_is_503_with_the_reason():
    svc.needs_db()
    redis = OwnRedis("--requirepass", PASSWORD)
    dep = Deployment()
    wrong = "not-" + secrets.token_hex(4)
    srv = refused(dep, redis.url(":" + wrong), "nbcp-wrong", "WRONGPASS")
    assert wrong not in srv.stdout() and wrong not in srv.stderr()
    srv2 = refused(dep, redis.url(), "nbcp-none", "NOAUTH")
    # The operator fixes Redis (here: drops the password): ready again.
    redis.stop()
    redis.extra = []
    redis.start()
    wait_until(lambda: readyz(srv2)[0] == 200, timeout=20, what="ready once Redis accepts us")
    srv2.wait_log(lambda o: o.get("msg") == "Redis accepts our credentials again")


@test
def credential_change_degrades_a_ready_replica():
    """Redis's password changes under running replicas: they stay ready
    (200 "degraded", failed part "bus" with Redis's reason; serving works
    by the serial check) instead of all leaving the load balancer at once,
    and count the refusals. A new replica with the old password is 503."""
    svc.needs_db()
    redis = OwnRedis("--requirepass", PASSWORD)
    dep = Deployment()
    url = redis.url(":" + ENCODED)
    r1 = replica(dep, url, "nbcp-rot")
    wait_until(lambda: readyz(r1)[0] == 200, timeout=20, what="r1 ready")
    # Ready "once" is the readiness checker's verdict after the bus got
    # through: let it run twice (MGMT_READY_INTERVAL_MS is 2 s).
    time.sleep(4.5)
    assert readyz(r1)[0] == 200
    redis.stop()
    redis.extra = ["--requirepass", "rotated-" + secrets.token_hex(4)]
    redis.start()
    wait_until(lambda: readyz(r1)[1].get("degraded") == "bus" and "WRONGPASS" in readyz(r1)[1].get("error", ""),
               timeout=20, what="r1 degraded by the refusal")
    status, body = readyz(r1)
    assert status == 200 and body["status"] == "degraded", (status, body)
    assert body["error"].startswith("Redis refused authentication"), body
    wait_until(lambda: (svc.metric(r1, "netbird_cp_bus_auth_failures_total") or 0) >= 1, timeout=10,
               what="auth failures counted")
    assert svc.metric(r1, "netbird_cp_ready") == 1
    no_secret(r1, str(body))
    # A new pod with the old Secret never takes traffic.
    refused(dep, url, "nbcp-rot", "WRONGPASS")
    assert readyz(r1)[0] == 200


@test
def acl_without_the_channel_is_503():
    svc.needs_db()
    redis = OwnRedis(*ACL_USER)
    dep = Deployment()
    refused(dep, redis.url("netbird:" + ENCODED), "nbcp-otherprefix", "NOPERM")


@test
def admin_publish_authenticates():
    """netbird-cp-admin's bus hint (tenant suspend) sends AUTH too: the
    stream on a replica ends through the bus alone (no serial check); a
    wrong password is a warning naming Redis's refusal, not the password."""
    svc.needs_db()
    redis = OwnRedis("--requirepass", PASSWORD)
    dep = Deployment()
    url = redis.url(":" + ENCODED)
    r1 = replica(dep, url, "nbcp-admin")
    a = dep.agent(r1)
    a.register(dep.setup_key, meta=build_meta("admin-" + secrets.token_hex(3)))
    s = a.sync()
    s.next(timeout=15)
    wrong = "not-" + secrets.token_hex(4)
    r = svc.admin(["tenant", "suspend", dep.account_id, "--redis-url", redis.url(":" + wrong),
                   "--bus-channel-prefix", "nbcp-admin"], env=dep.env())
    assert "WRONGPASS" in r.err and wrong not in r.out + r.err, r
    r = svc.admin(["tenant", "resume", dep.account_id], env=dep.env())
    assert r.rc == 0, r
    r = svc.admin(["tenant", "suspend", dep.account_id, "--redis-url", url, "--bus-channel-prefix",
                   "nbcp-admin"], env=dep.env())
    assert r.rc == 0 and PASSWORD not in r.out + r.err and ENCODED not in r.out + r.err, r
    s.wait_end(timeout=15)


if __name__ == "__main__":
    svc.run_all()
