"""The convergence checker's workload (REST changes through random
replicas) and its fence sampler.

Workload: four groups, two policies between them (the account's default
"All" policy is deleted, so group and policy changes change who sees
whom), two routes; then, every ~0.2 s, one of: a group's members
replaced, a policy's groups or enabled flag changed, a peer renamed, a
route's enabled flag / distribution groups / routing peer changed. Calls
that fail during a fault (connection refused, 5xx while PostgreSQL is
away) are counted, not fatal: the convergence check only needs the
database to be the truth.

Sampler (the reasoning of tests/deploy/test_rolling.py's Sampler): a
sample is R1 (every agent's holding flag and stream generation), then in
one statement the peer rows D and the account's serial S_D, then, a
moment later, R2. An agent holding the same generation in R1 and R2
whose row D shows disconnected is a candidate; it is a violation if that
same stream later read a map with a serial above S_D (the stream was
open before D was read and was still served after a commit that came
after D). Candidates whose stream ended are settled by the reconnect;
those with no later map are undecidable and printed as such. The same
sample checks the token order: a connected row's session token never
goes below a token seen connected before for that peer.
"""

import random
import threading
import time
import urllib.error

import svc


class Workload(threading.Thread):
    def __init__(self, replicas, token, dsn, account, peer_ids, log):
        super().__init__(daemon=True, name="workload")
        self.replicas = replicas
        self.token = token
        self.dsn = dsn
        self.account = account
        self.peers = list(peer_ids)
        self.log = log
        self.stop_flag = threading.Event()
        self.burst = threading.Event()     # set: changes back to back (the slow-consumer fault)
        self.ok = {}
        self.failed = {}
        self.groups = []            # [id, name, members]
        self.policies = []          # [id, name, src, dst, enabled]
        self.routes = []            # [id, body]
        self.renames = 0
        self.error = None

    # ---- REST ------------------------------------------------------------------

    def call(self, method, path, body=None, rep=None):
        """One REST call through a random live replica; (status, body) or
        (None, error text)."""
        live = [r for r in self.replicas if r.alive()] or self.replicas
        rep = rep or random.choice(live)
        try:
            return svc.rest(rep, method, path, self.token, body, timeout=15)
        except (urllib.error.URLError, OSError) as e:
            return None, repr(e)

    def must(self, method, path, body=None):
        for _ in range(10):
            st, b = self.call(method, path, body)
            if st == 200:
                return b
            time.sleep(0.5)
        raise AssertionError("%s %s failed: %r %r" % (method, path, st, b))

    # ---- setup -----------------------------------------------------------------

    def pick(self, lo, hi):
        return random.sample(self.peers, random.randint(lo, min(hi, len(self.peers))))

    def policy_body(self, p):
        _, name, src, dst, enabled = p
        return {"name": name, "enabled": enabled, "rules": [
            {"name": name, "enabled": True, "action": "accept", "bidirectional": True, "protocol": "all",
             "sources": [self.groups[src][0]], "destinations": [self.groups[dst][0]]}]}

    def setup(self):
        for pol in self.must("GET", "/api/policies"):
            self.must("DELETE", "/api/policies/" + pol["id"])
        for i in range(4):
            name = "conv-g%d" % i
            members = self.pick(3, len(self.peers) // 2)
            g = self.must("POST", "/api/groups", {"name": name, "peers": members})
            self.groups.append([g["id"], name, members])
        for i, (src, dst) in enumerate([(0, 1), (2, 2)]):
            p = [None, "conv-p%d" % i, src, dst, True]
            p[0] = self.must("POST", "/api/policies", self.policy_body(p))["id"]
            self.policies.append(p)
        for i in range(2):
            body = {"description": "conv-r%d" % i, "network_id": "conv-net%d" % i, "enabled": True,
                    "peer": random.choice(self.peers), "network": "10.%d.0.0/16" % (100 + i), "metric": 100,
                    "masquerade": False, "groups": [self.groups[i + 1][0]], "keep_route": False}
            self.routes.append([self.must("POST", "/api/routes", body)["id"], body])
        self.log("workload set up: 4 groups, 2 policies (the default one deleted), 2 routes")

    # ---- changes ---------------------------------------------------------------

    def step(self):
        kind = random.choice(["group", "group", "policy", "peer", "route"])
        if kind == "group":
            g = random.choice(self.groups)
            members = self.pick(2, len(self.peers) // 2)
            st, _ = self.call("PUT", "/api/groups/" + g[0], {"name": g[1], "peers": members})
            if st == 200:
                g[2] = members
        elif kind == "policy":
            p = random.choice(self.policies)
            q = list(p)
            if random.random() < 0.3:
                q[4] = not q[4]
            else:
                q[2], q[3] = random.randrange(4), random.randrange(4)
            st, _ = self.call("PUT", "/api/policies/" + p[0], self.policy_body(q))
            if st == 200:
                p[:] = q
        elif kind == "peer":
            self.renames += 1
            pid = random.choice(self.peers)
            st, _ = self.call("PUT", "/api/peers/" + pid, {
                "name": "conv-%d-%d" % (self.renames, random.randrange(1000)), "ssh_enabled": False,
                "login_expiration_enabled": False, "inactivity_expiration_enabled": False})
        else:
            r = random.choice(self.routes)
            body = dict(r[1])
            x = random.random()
            if x < 0.3:
                body["enabled"] = not body["enabled"]
            elif x < 0.6:
                body["groups"] = [random.choice(self.groups)[0]]
            else:
                body["peer"] = random.choice(self.peers)
            st, _ = self.call("PUT", "/api/routes/" + r[0], body)
            if st == 200:
                r[1] = body
        key = kind
        if st == 200:
            self.ok[key] = self.ok.get(key, 0) + 1
        else:
            k = "%s %s" % (key, st if st is not None else "no answer")
            self.failed[k] = self.failed.get(k, 0) + 1

    def final_change(self, rep):
        """A rename of one peer through rep, retried until acknowledged."""
        pid = random.choice(self.peers)
        for _ in range(20):
            st, b = self.call("PUT", "/api/peers/" + pid, {
                "name": "conv-final", "ssh_enabled": False, "login_expiration_enabled": False,
                "inactivity_expiration_enabled": False}, rep=rep)
            if st == 200:
                return
            time.sleep(0.5)
        raise AssertionError("the final change through %s failed: %r %r" % (rep.name, st, b))

    def run(self):
        try:
            while not self.stop_flag.is_set():
                self.step()
                if not self.burst.is_set():
                    self.stop_flag.wait(random.uniform(0.1, 0.3))
        except Exception as e:
            self.error = e

    def stop(self):
        self.stop_flag.set()
        self.join(30)
        assert not self.is_alive(), "the workload thread did not stop"
        if self.error:
            raise self.error

    def summary(self):
        return "%d changes acknowledged (%s); %d failed during faults (%s)" % (
            sum(self.ok.values()), ", ".join("%s %d" % kv for kv in sorted(self.ok.items())),
            sum(self.failed.values()), ", ".join("%s: %d" % kv for kv in sorted(self.failed.items())) or "none")


class Sampler(threading.Thread):
    GRACE = 0.5

    def __init__(self, dsn, account, fleet):
        super().__init__(daemon=True, name="sampler")
        self.dsn = dsn
        self.account = account
        self.fleet = fleet
        self.stop_flag = threading.Event()
        self.samples = 0
        self.candidates = []        # (agent, generation, S_D)
        self.token_samples = 0
        self.token_drops = []       # (peer id, token, highest token seen before)
        self.max_token = {}
        self.db_errors = 0
        self.error = None

    def rows(self):
        got = svc.query(self.dsn, (
            "SELECT p.id, p.peer_status_connected, p.peer_status_session_started_at, a.network_serial"
            " FROM accounts a LEFT JOIN peers p ON p.account_id = a.id WHERE a.id = '%s'" % self.account))
        return {r[0]: (r[1], r[2]) for r in got if r[0] is not None}, (got[0][3] if got else 0)

    def run(self):
        try:
            while not self.stop_flag.is_set():
                r1 = [a.snapshot() for a in self.fleet.agents]
                try:
                    d, serial = self.rows()
                except Exception:           # PostgreSQL restarting: no sample
                    self.db_errors += 1
                    self.stop_flag.wait(0.5)
                    continue
                self.stop_flag.wait(self.GRACE)
                r2 = [a.snapshot() for a in self.fleet.agents]
                for a, (h1, g1), (h2, g2) in zip(self.fleet.agents, r1, r2):
                    connected, tok = d.get(a.peer_id, (None, 0))
                    if h1 and h2 and g1 == g2 and connected is False:
                        self.candidates.append((a, g1, serial))
                    if connected:
                        self.token_samples += 1
                        seen = self.max_token.get(a.peer_id, 0)
                        if tok < seen:
                            self.token_drops.append((a.peer_id, tok, seen))
                        self.max_token[a.peer_id] = max(seen, tok)
                self.samples += 1
        except Exception as e:
            self.error = e

    def stop(self):
        self.stop_flag.set()
        self.join(30)
        if self.error:
            raise self.error

    def decide(self):
        """(violations, settled by a reconnect, undecidable)."""
        violations, reconnected, undecided = [], 0, 0
        for a, gen, serial in self.candidates:
            with a.lock:
                later = a.max_serial.get(gen, -1)
                cur = a.gen
            if later > serial:
                violations.append((a.idx, a.peer_id, gen, serial, later))
            elif cur != gen:
                reconnected += 1
            else:
                undecided += 1
        return violations, reconnected, undecided
