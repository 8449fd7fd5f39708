"""tests/bench/bench-grpc-queues.py HARNESS [--active K] [--idle LIST] [--queues LIST] [--rounds R] [--lock FILE]

The gRPC server's cost per delivered message against the number of
streams it holds, with one completion queue and with several (issue 16:
"no per-event cost that grows with the streams held"). No database: the
server is tests/service/mgmt-grpc-harness (mgmt-grpc.c with a Watch/Push
fan-out whose chunks are copied on workers that then start the sends, as
the Sync fan-out does), the client grpcio's asyncio API.

Per configuration (queues Q, idle streams S): S Hold streams that never
get a message (each keeps a RECV_CLOSE_ON_SERVER tag outstanding on its
queue, as an idle Sync stream does), K Watch streams over C connections,
then R pushes of a 1 KiB message to the K streams, one at a time, each
waited for until every stream has it. Printed per configuration: server
CPU (user + system, /proc) per delivered message, and the time from the
push to the last stream's receive (client side, p50 over R); each row's
CPU ratio against Q=1 with no idle stream, measured in the same run.

Never part of tests/run; prints figures, never fails on a slow machine.
--lock FILE holds flock(FILE) around each configuration (its streams
opening and its pushes), released between configurations. --perf records the server with perf during the
pushes and prints the share of its samples in libgrpc's cq_check_tag
(the scan of a queue's outstanding tags on every completion) and the top
symbols."""

import argparse
import asyncio
import fcntl
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "service"))
import grpc  # noqa: E402
import grpc.aio  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(harness, queues, tmp):
    out = open(os.path.join(tmp, "harness-%d.log" % queues), "w")
    p = subprocess.Popen([harness, "2000", str(queues)], stdout=out, stderr=subprocess.STDOUT)
    port = None
    deadline = time.monotonic() + 20
    while port is None:
        with open(out.name) as f:
            for line in f:
                if '"listening"' in line:
                    port = int(line.split('"port":"')[1].split('"')[0])
        if port is None:
            if p.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("harness did not start: " + open(out.name).read())
            time.sleep(0.05)
    return p, port, out.name


# Debian's libgrpc.so.29.0.0 (1.51.1) is stripped: perf shows its static
# cq_check_tag as bare addresses. Its code lies in [0x4f1400, 0x4f1500) of
# that build (the scan loop "cmp %rbx,(%rax); jne" at 0x4f1433; found with
# objdump -d); another build of the library shows 0 here.
CHECK_TAG = (0x4f1400, 0x4f1500)


def perf_top(data):
    r = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none",
                        "--percent-limit", "0", "--sort", "dso,symbol"],
                       capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.strip() and not l.startswith("#")]
    check = 0.0
    for l in lines:
        if "cq_check_tag" in l:
            check += float(l.split("%")[0])
        elif "libgrpc.so.29.0.0" in l and "[.] 0x" in l:
            addr = int(l.split("[.] ")[1].split()[0], 16)
            if CHECK_TAG[0] <= addr < CHECK_TAG[1]:
                check += float(l.split("%")[0])
    return check, lines[:6]


async def run_config(harness, queues, idle, active, conns, rounds, tmp, perf=False):
    p, port, logname = start(harness, queues, tmp)
    opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 1 << 20)]
    chans = [grpc.aio.insecure_channel("127.0.0.1:%d" % port, options=opts) for _ in range(conns)]
    got = [0] * active
    want = {"n": 0}
    done_ev = asyncio.Event()
    remaining = {"n": 0}
    holds = []
    watches = []

    async def watch(k, ch):
        call = ch.unary_stream("/cptest.Harness/Watch")(b"")
        watches.append(call)
        try:
            async for m in call:
                n = int(m[:6])
                if n > got[k]:
                    got[k] = n
                    if n == want["n"]:
                        remaining["n"] -= 1
                        if remaining["n"] == 0:
                            done_ev.set()
        except grpc.aio.AioRpcError:
            pass

    def count_log(msg):
        with open(logname) as f:
            return sum(1 for line in f if msg in line)

    try:
        for i in range(idle):
            holds.append(chans[i % conns].unary_stream("/cptest.Harness/Hold")(b""))
        tasks = [asyncio.create_task(watch(k, chans[k % conns])) for k in range(active)]
        deadline = time.monotonic() + 300
        while count_log('"holding call"') < idle or count_log('"watching call"') < active:
            if time.monotonic() > deadline:
                raise SystemExit("streams did not open")
            await asyncio.sleep(0.2)
        push = chans[0].unary_unary("/cptest.Harness/Push")
        # one warm-up push, not measured
        times = []
        c0 = None
        rec = None
        pdata = os.path.join(tmp, "perf-%d-%d.data" % (queues, idle))
        for r in range(rounds + 1):
            if r == 1:
                c0 = cpu_s(p.pid)
                if perf:
                    rec = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-o", pdata, "-p",
                                            str(p.pid)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
                    await asyncio.sleep(0.5)
            want["n"] = r + 1
            remaining["n"] = active
            done_ev.clear()
            t0 = time.monotonic()
            await push((b"%06d" % (r + 1)) + b"x" * 1018, timeout=60)
            await asyncio.wait_for(done_ev.wait(), 120)
            if r >= 1:
                times.append((time.monotonic() - t0) * 1000)
        cpu = cpu_s(p.pid) - c0
        if rec:
            rec.send_signal(2)
            rec.wait(60)
        for c in holds + watches:
            c.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return cpu / (rounds * active) * 1e6, statistics.median(times), perf_top(pdata) if perf else None
    finally:
        for ch in chans:
            await ch.close()
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("harness")
    ap.add_argument("--active", type=int, default=2000)
    ap.add_argument("--idle", default="0,20000")
    ap.add_argument("--queues", default="1,4")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--lock")
    ap.add_argument("--perf", action="store_true")
    a = ap.parse_args()
    base = None
    print("gRPC server cost per delivered message (1 KiB, %d active streams over %d connections, %d pushes)"
          % (a.active, a.conns, a.rounds))
    print("%-7s %-13s %-18s %-24s %s" % ("queues", "idle streams", "server CPU us/msg", "push -> last recv p50",
                                          "CPU / (1 queue, 0 idle)"))
    with tempfile.TemporaryDirectory(prefix="cp-bgq.") as tmp:
        for q in [int(x) for x in a.queues.split(",")]:
            for s in [int(x) for x in a.idle.split(",")]:
                lock_fd = None
                if a.lock:
                    lock_fd = open(a.lock, "a")
                    fcntl.flock(lock_fd, fcntl.LOCK_EX)
                try:
                    us, ms, prof = await run_config(a.harness, q, s, a.active, a.conns, a.rounds, tmp, a.perf)
                finally:
                    if lock_fd:
                        fcntl.flock(lock_fd, fcntl.LOCK_UN)
                        lock_fd.close()
                if not base:
                    base = us
                print("%-7d %-13d %-18.1f %-24s %.2f" % (q, s, us, "%.1f ms" % ms,
                                                         us / base if base else float("nan")), flush=True)
                if prof:
                    print("        perf: cq_check_tag %.1f %% of the server's samples; top:" % prof[0])
                    for line in prof[1]:
                        print("          " + line.strip())


if __name__ == "__main__":
    asyncio.run(main())
    # grpcio's asyncio channels may keep the interpreter from exiting
    sys.stdout.flush()
    os._exit(0)
