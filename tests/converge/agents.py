"""Agents for the convergence checker: each one a thread with a WireGuard
key, doing what NetBird's agent does (tests/agent/nbagent.py speaks the
protocol): Login, then Sync, read the stream until it ends, then back off
(exponential with jitter, 0.5 s to 4 s, reset after a stream that lived)
and do it again on a replica picked at random, as a load balancer would
(agents are given every replica's address: no load balancer in front).

The stream is read in the agent's own thread, one message at a time, so a
paused agent (the slow-consumer fault) really stops reading: gRPC's flow
control window fills and the replica's send side backs up.

State per agent, under its lock: the stream generation (one more per
opened stream), whether the stream holds (open and its first map read),
the replica it is on, the last SyncResponse and, per generation, the
highest serial received (the fence sampler's proof that a stream outlived
a database read).
"""

import concurrent.futures
import itertools
import random
import threading
import time

import grpc

import nbagent
import svc

PB = nbagent.pb


class FleetAgent(threading.Thread):
    def __init__(self, idx, fleet, key, peer_id):
        super().__init__(daemon=True, name="agent-%d" % idx)
        self.idx = idx
        self.fleet = fleet
        self.key = key
        self.pub_b64 = nbagent.b64(bytes(key.public_key))
        self.peer_id = peer_id
        self.lock = threading.Lock()
        self.gen = 0
        self.holding = False
        self.replica_name = None
        self.replica_id = None
        self.last = None
        self.max_serial = {}        # generation -> highest serial read on it
        self.call = None
        self.pause_until = 0.0
        self.next_rep = None        # move_to(): where the next stream goes
        self.stop_flag = threading.Event()
        self.clients = {}           # target -> nbagent.Agent
        self.streams = 0
        self.errors = {}            # what ended streams / failed opens, counted
        self.messages = 0
        self.trace = []             # (monotonic time, serial) of every map read

    def client(self, target):
        c = self.clients.get(target)
        if c is None:
            # A small, fixed HTTP/2 receive window (no BDP growth), so an
            # agent that stops reading backs the replica's sending up after
            # a few maps instead of after megabytes.
            c = self.clients[target] = nbagent.Agent(target, private_key=self.key, timeout=10, options=[
                ("grpc.http2.lookahead_bytes", 16384), ("grpc.http2.bdp_probe", 0)])
        return c

    def last_message(self):
        with self.lock:
            return self.last, self.holding

    def snapshot(self):
        with self.lock:
            return self.holding, self.gen

    def pause(self, seconds):
        self.pause_until = time.monotonic() + seconds

    def count(self, what):
        self.errors[what] = self.errors.get(what, 0) + 1

    def run(self):
        backoff = 0.5
        rep = self.fleet.replicas[self.idx % len(self.fleet.replicas)]
        while not self.stop_flag.is_set():
            lived = self.one_stream(rep)
            if self.stop_flag.is_set():
                break
            while self.next_rep is not None and not self.stop_flag.is_set():
                nxt, self.next_rep = self.next_rep, None
                if isinstance(nxt, tuple):
                    rep = nxt[3]
                    self.one_stream(rep, opened=nxt[:3])
                else:
                    rep = nxt
                    self.one_stream(rep)
            backoff = 0.5 if lived > 5 else min(backoff * 2, 4.0)
            self.stop_flag.wait(backoff * random.uniform(0.5, 1.0))
            # As behind a load balancer: any replica, the one that just
            # failed included.
            rep = random.choice(self.fleet.replicas)

    def open_stream(self, rep):
        """GetServerKey, Login, GetServerKey, Sync (as the agent does);
        returns (call, server key) or None after counting why not."""
        try:
            c = self.client(rep.grpc_target)
            c.login(meta=nbagent.build_meta("conv-%d" % self.idx))
            server_key = c.get_server_key()
            env = c.envelope(PB.SyncRequest(meta=nbagent.build_meta("conv-%d" % self.idx)), server_key)
            return c.channel.unary_stream(nbagent.SERVICE + "Sync")(env.SerializeToString(), timeout=3600), server_key
        except nbagent.RpcFailed as e:
            self.count("open: %s" % (e.code.name if e.code else e))
        except Exception as e:
            self.count("open: %s" % type(e).__name__)
        return None

    def one_stream(self, rep, opened=None):
        """Opens a stream (or takes one opened by move_to, with its first
        message already read) and reads it until it ends; returns how long
        it held."""
        t_open = time.monotonic()
        first = None
        if opened is None:
            opened = self.open_stream(rep)
            if opened is None:
                return 0
        else:
            opened, first = opened[:2], opened[2]
        call, server_key = opened
        with self.lock:
            self.gen += 1
            gen = self.gen
            self.call = call
        self.streams += 1
        held_since = None
        try:
            for raw in itertools.chain([first] if first is not None else [], call):
                env = nbagent.parse(PB.EncryptedMessage, raw)
                msg = nbagent.parse(PB.SyncResponse, nbagent.open_box(env.body, self.key, server_key))
                self.messages += 1
                self.trace.append((time.monotonic(), msg.NetworkMap.Serial))
                with self.lock:
                    self.last = msg
                    s = msg.NetworkMap.Serial
                    if s > self.max_serial.get(gen, -1):
                        self.max_serial[gen] = s
                    if not self.holding:
                        self.holding = True
                        self.replica_name, self.replica_id = rep.name, rep.id
                        held_since = time.monotonic()
                while time.monotonic() < self.pause_until and not self.stop_flag.is_set():
                    time.sleep(0.1)
            self.count("ended OK")
        except grpc.RpcError as e:
            self.count("ended %s" % ("(moved by us)" if e.code() == grpc.StatusCode.CANCELLED else e.code().name))
        except nbagent.ProtocolError as e:
            self.count("protocol error")
            self.fleet.protocol_errors.append((self.idx, str(e)))
        finally:
            with self.lock:
                self.holding = False
                self.call = None
        return time.monotonic() - held_since if held_since else time.monotonic() - t_open - 10

    def move_to(self, rep, overlap=False):
        """The agent's next stream goes to rep. Without overlap the current
        stream is cancelled and the next opened right after (an agent
        restarted by its user). With overlap the new stream is opened and
        its first map read before the old one is cancelled (an agent that
        reconnected while its old connection still looked alive to the old
        replica): the old replica's disconnect must then be fenced off."""
        handed = None
        if overlap:
            opened = self.open_stream(rep)
            if opened is not None:
                try:
                    handed = (opened[0], opened[1], next(opened[0]), rep)
                except Exception:
                    opened[0].cancel()
        self.next_rep = handed if handed is not None else rep
        with self.lock:
            call = self.call
        if call is not None:
            call.cancel()
        return handed is not None

    def stop(self):
        self.stop_flag.set()
        with self.lock:
            call = self.call
        if call is not None:
            call.cancel()
        self.join(10)
        for c in self.clients.values():
            c.close()


class AgentFleet:
    def __init__(self, replicas, setup_key, dsn, log):
        self.replicas = replicas
        self.setup_key = setup_key
        self.dsn = dsn
        self.log = log
        self.agents = []
        self.protocol_errors = []

    def register(self, n):
        """Registers n peers (Login with the setup key), spread over the replicas."""
        def one(i):
            a = nbagent.Agent(self.replicas[i % len(self.replicas)].grpc_target)
            try:
                a.register(self.setup_key, meta=nbagent.build_meta("conv-%d" % i))
            finally:
                a.close()
            return a.key, a.pub_b64
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
            keys = list(ex.map(one, range(n)))
        ids = dict(svc.query(self.dsn, "SELECT key, id FROM peers"))
        self.agents = [FleetAgent(i, self, k, ids[pub]) for i, (k, pub) in enumerate(keys)]
        self.log("registered %d peers" % n)

    def peer_ids(self):
        return [a.peer_id for a in self.agents]

    def start(self):
        for a in self.agents:
            a.start()

    def stop(self):
        for a in self.agents:
            a.stop_flag.set()
        for a in self.agents:
            a.stop()

    def n_holding(self):
        return sum(1 for a in self.agents if a.snapshot()[0])

    def rebalance(self, rep, n):
        """Moves n agents that hold a stream elsewhere to rep, every other
        one with an overlap (move_to); returns what it did, as text."""
        others = [a for a in self.agents if a.snapshot()[0] and a.replica_name != rep.name]
        moved = random.sample(others, min(n, len(others)))
        overlapped = sum(1 for i, a in enumerate(moved) if a.move_to(rep, overlap=i % 2 == 0))
        return "%d agents move to it (%d of them open the new stream before ending the old)" % (
            len(moved), overlapped)

    def pick_holding(self):
        held = [a for a in self.agents if a.snapshot()[0]]
        return random.choice(held) if held else None

    def spread(self):
        by = {}
        for a in self.agents:
            by[a.replica_name] = by.get(a.replica_name, 0) + 1
        return ", ".join("%s: %d" % (k, v) for k, v in sorted(by.items(), key=lambda kv: str(kv[0])))

    def summary(self):
        ends = {}
        for a in self.agents:
            for k, v in a.errors.items():
                ends[k] = ends.get(k, 0) + v
        return "%d streams opened, %d messages read; stream ends and failed opens: %s; protocol errors: %d" % (
            sum(a.streams for a in self.agents), sum(a.messages for a in self.agents),
            ", ".join("%s %d" % kv for kv in sorted(ends.items())) or "none", len(self.protocol_errors))
