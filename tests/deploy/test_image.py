"""The container image (deploy/image/build), built here without Docker and
run from its own files.

The image is built (or reused when its inputs did not change: the build
script keeps a hash of them), unpacked with umoci, and its entrypoint run
the way a container runtime would: the image config's user, environment,
entrypoint, cmd and working directory, in a mount and PID namespace
(unshare) with the unpacked root filesystem bind-mounted read-only
(chroot), a tmpfs on /tmp, /proc and a few /dev nodes; the network is the
host's loopback. netbird-cp-admin from the image applies the migrations and
creates an account on the test PostgreSQL; netbird-mgmt from the image
serves /healthz and /readyz and registers an agent over gRPC, which gets
its map.

Needs root (namespaces, chroot, the image's file owners) and the Debian
mirror the first time (the rootfs is cached); without them the cases SKIP
with the reason. The build output is in CP_IMAGE_OUT (meson: build/image).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import k8s  # noqa: E402
import svc  # noqa: E402
from svc import test  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.path.join(ROOT, "deploy", "image", "build")
DOCKERFILE = os.path.join(ROOT, "deploy", "image", "Dockerfile")
PACKAGES = os.path.join(ROOT, "deploy", "image", "packages.txt")
OUT = os.environ.get("CP_IMAGE_OUT") or os.path.join(ROOT, "build", "image")
BUILD_TIMEOUT = 1500

UID = 65532
ENTRYPOINT = ["/usr/bin/netbird-mgmt"]
CMD = ["management"]
PORTS = {"33073/tcp", "33080/tcp"}

# The sandbox: a private mount namespace and PID namespace; the rootfs
# bind-mounted onto itself and remounted read-only; tmpfs /tmp; /proc; the
# /dev nodes a runtime gives; then chroot (nsenter --root) as the image's
# user with exactly the given environment. $1 rootfs, $2 user:group, $3 workdir, then
# KEY=VALUE... -- argv.
SANDBOX = r'''
set -eu
r=$1 user=$2 wd=$3
shift 3
mount --make-rprivate /
mount --bind "$r" "$r"
mount -o remount,bind,ro,nosuid,nodev "$r"
mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev tmpfs "$r/tmp"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount -t tmpfs -o mode=0755,size=1m,nosuid tmpfs "$r/dev"
for n in null zero full random urandom; do
        : >"$r/dev/$n"
        mount --bind "/dev/$n" "$r/dev/$n"
done
mount -o remount,ro,bind "$r/dev"
envs=
while [ "$1" != -- ]; do envs="$envs
$1"; shift; done
shift
IFS='
'
# nsenter: chroot to the rootfs, the working directory in it, the user's
# uid and gid (supplementary groups dropped), then exec.
exec env -i $envs nsenter --root="$r" --wd="$r$wd" -S "${user%%:*}" -G "${user##*:}" "$@"
'''


class Image:
    """The built image: image.env, the layout, its config, the unpacked rootfs."""
    done = None
    error = None


def build_image():
    """Builds (or reuses) the image once per run and unpacks it."""
    if Image.error:
        raise Image.error
    if Image.done:
        return Image.done
    try:
        Image.done = _build_image()
        return Image.done
    except (svc.Skip, AssertionError) as e:
        Image.error = e
        raise


def _build_image():
    if os.geteuid() != 0:
        k8s.skip("needs root: mmdebstrap's root mode, namespaces and chroot")
    for tool in ("mmdebstrap", "umoci", "unshare", "nsenter", "chroot"):
        if subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True).returncode:
            k8s.skip("%s not installed (deploy/install-deps installs it)" % tool)
    t0 = time.monotonic()
    p = subprocess.run([BUILD, "--out", OUT], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    print("# deploy/image/build: exit %d in %.0fs" % (p.returncode, time.monotonic() - t0))
    for line in p.stderr.splitlines()[-12:]:
        print("#   " + line)
    if p.returncode == 77:
        k8s.skip("the Debian mirror is unreachable: " + p.stderr.strip().splitlines()[-1])
    assert p.returncode == 0, "deploy/image/build failed:\n%s" % p.stderr[-4000:]
    env = {}
    with open(os.path.join(OUT, "image.env")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            env[k] = v
    layout, version = env["LAYOUT"], env["VERSION"]
    index = json.load(open(os.path.join(layout, "index.json")))
    refs = {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m for m in index["manifests"]}
    assert version in refs, "tag %s not in %s" % (version, list(refs))
    manifest = json.load(open(blob(layout, refs[version]["digest"])))
    config = json.load(open(blob(layout, manifest["config"]["digest"])))
    bundle = os.path.join(OUT, "test-bundle")
    subprocess.run(["rm", "-rf", bundle], check=True)
    p = subprocess.run(["umoci", "unpack", "--image", "%s:%s" % (layout, version), bundle],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, "umoci unpack: %s" % p.stderr
    return {"env": env, "manifest": manifest, "config": config, "rootfs": os.path.join(bundle, "rootfs"),
            "bundle": bundle}


def blob(layout, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def image_env(img, extra=None):
    env = dict(e.split("=", 1) for e in img["config"]["config"].get("Env", []))
    env.update(extra or {})
    return env


def sandbox_argv(img, argv, env):
    """The command that runs argv (a path inside the image first) in the
    sandbox as the image's user."""
    cfg = img["config"]["config"]
    user = cfg.get("User") or "0:0"
    if ":" not in user:
        user += ":" + user
    return (["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", SANDBOX, "sandbox",
             img["rootfs"], user, cfg.get("WorkingDir") or "/"]
            + ["%s=%s" % kv for kv in env.items()] + ["--"] + list(argv))


def run_in_image(img, argv, env, timeout=120):
    p = subprocess.run(sandbox_argv(img, argv, env), capture_output=True, text=True, timeout=timeout)
    return svc.Result(p, p.stdout, p.stderr)


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def image_process(srv, rootfs, timeout=20):
    """The host PID of the image's netbird-mgmt under unshare."""
    want = os.path.join(rootfs, "usr/bin/netbird-mgmt")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in children(srv.proc.pid):
            try:
                if os.readlink("/proc/%d/exe" % c) == want:
                    return c
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError("no netbird-mgmt process under unshare pid %d" % srv.proc.pid)


def root_mount_options(pid):
    """The mount options of the process's / (mountinfo field 6)."""
    with open("/proc/%d/mountinfo" % pid) as f:
        for line in f:
            fields = line.split()
            if fields[4] == "/":
                return set(fields[5].split(","))
    raise AssertionError("no / in /proc/%d/mountinfo" % pid)


def status_ids(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "Groups", "CapEff", "CapPrm"):
                out[k] = v.split()
    return out


# ---- the image's build inputs ------------------------------------------------

def packages_section(name):
    sec, out = None, []
    for line in open(PACKAGES):
        m = re.match(r"#\s*\[(\w+)\]", line)
        if m:
            sec = m.group(1)
            continue
        word = line.split("#", 1)[0].strip()
        if word and sec == name:
            out.append(word)
    return out


def dockerfile():
    """Instructions of the Dockerfile's last stage as (KEYWORD, text), with
    continuation lines joined; and the whole file's instructions."""
    text = open(DOCKERFILE).read().replace("\\\n", " ")
    instrs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kw, _, rest = line.partition(" ")
        instrs.append((kw.upper(), rest.strip()))
    last_from = max(i for i, (k, _) in enumerate(instrs) if k == "FROM")
    return instrs[last_from:], instrs


@test
def dockerfile_agrees_with_the_build_script():
    """Same package list (read from packages.txt, not copied), same user,
    entrypoint, cmd, workdir, ports and environment as the built image."""
    img = build_image()
    final, every = dockerfile()
    froms = [r for k, r in every if k == "FROM"]
    assert len(froms) >= 2 and froms[0].startswith("debian:bookworm") and \
        final[0][1].startswith("debian:bookworm-slim"), froms
    # The runtime stage installs what packages.txt lists, by reading it.
    runs = [r for k, r in final if k == "RUN"]
    copies = [r for k, r in final if k == "COPY"]
    assert any("deploy/image/packages.txt" in c for c in copies), copies
    assert any("packages.txt" in r and "apt-get install" in r for r in runs), runs
    # and strips setuid/setgid bits after it, as deploy/image/build does
    assert any("-perm /6000" in r and "chmod a-s" in r for r in runs), runs
    assert "-perm /6000" in open(BUILD).read()
    cfg = img["config"]["config"]
    one = {k: r for k, r in final if k in ("USER", "ENTRYPOINT", "CMD", "WORKDIR")}
    assert one["USER"] == cfg["User"], (one["USER"], cfg["User"])
    assert json.loads(one["ENTRYPOINT"]) == cfg["Entrypoint"], one["ENTRYPOINT"]
    assert json.loads(one["CMD"]) == cfg["Cmd"], one["CMD"]
    assert one["WORKDIR"] == cfg["WorkingDir"], one["WORKDIR"]
    exposed = set()
    for k, r in final:
        if k == "EXPOSE":
            exposed |= {p if "/" in p else p + "/tcp" for p in r.split()}
    assert exposed == set(cfg["ExposedPorts"]), (exposed, cfg["ExposedPorts"])
    denv = {}
    for k, r in final:
        if k == "ENV":
            for kv in r.split():
                key, _, v = kv.partition("=")
                denv[key] = v.strip('"')
    ienv = image_env(img)
    assert denv == ienv, "Dockerfile ENV %r != image Env %r" % (denv, ienv)
    # Its builder installs every library header package deploy/install-deps
    # installs for the build (a new dependency must reach both).
    deps = open(os.path.join(ROOT, "deploy", "install-deps")).read()
    deps = re.sub(r"(?m)^test_pkgs=\(.*?\)$", "", deps)  # tests only (tests/sql)
    dev = set(re.findall(r"\b(lib[\w.+-]+-dev)\b", deps)) | {"protobuf-c-compiler", "protobuf-compiler"}
    build_runs = " ".join(r for k, r in every[:every.index(final[0])] if k == "RUN")
    missing = sorted(d for d in dev if not re.search(r"(^|\s)%s(\s|$)" % re.escape(d), build_runs))
    assert not missing, "Dockerfile's build stage lacks %s" % missing
    # And its user is created with the same uid, and the same files go in.
    body = open(DOCKERFILE).read()
    assert str(UID) in body and "/usr/share/netbird-cp/migrations" in body, "uid / migrations path"


@test
def package_list_is_what_the_binaries_link():
    """packages.txt's [linked] section is exactly the owners of the
    libraries the image's binaries name as NEEDED (the build script stops
    on a drift; this checks that the list it reads is the committed one)."""
    img = build_image()
    needed = set()
    for b in ("usr/bin/netbird-mgmt", "usr/bin/netbird-cp-admin"):
        out = subprocess.run(["readelf", "-d", os.path.join(img["rootfs"], b)], capture_output=True,
                             text=True, check=True).stdout
        needed |= set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out))
    assert "libgrpc.so.29" in needed and "libpq.so.5" in needed, needed
    cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    owners = set()
    for so in needed:
        m = re.search(r"^\s*%s \(libc6,x86-64[^)]*\) => (\S+)" % re.escape(so), cache, re.M)
        assert m, "%s not on this machine" % so
        q = subprocess.run(["dpkg-query", "-S", m.group(1)], capture_output=True, text=True)
        if q.returncode:
            q = subprocess.run(["dpkg-query", "-S", os.path.realpath(m.group(1))], capture_output=True,
                               text=True)
        assert q.returncode == 0, q.stderr
        owners.add(q.stdout.split(":", 1)[0].split(",")[0].strip())
    assert owners == set(packages_section("linked")), (sorted(owners), packages_section("linked"))
    shipped = open(os.path.join(img["rootfs"], "usr/share/netbird-cp/packages.txt")).read()
    assert shipped == open(PACKAGES).read(), "the image was built from another packages.txt"


@test
def a_drifted_package_list_stops_the_build():
    """A library the binaries link but packages.txt lacks, or a listed
    package nothing links, stops deploy/image/build with both named."""
    build_image()
    lines = open(PACKAGES).read().splitlines()
    drifted = [l for l in lines if l.strip() != "libpq5"]
    at = drifted.index("# [extra] packages the binaries use without linking them") \
        if "# [extra] packages the binaries use without linking them" in drifted else None
    assert at is not None, "packages.txt has no [extra] marker line"
    drifted.insert(at, "libyaml-0-2")
    path = os.path.join(svc.tmpdir(), "packages.txt")
    open(path, "w").write("\n".join(drifted) + "\n")
    env = dict(os.environ, IMAGE_PACKAGES_FILE=path)
    p = subprocess.run([BUILD, "--out", OUT, "--check-packages"], capture_output=True, text=True, env=env,
                       timeout=BUILD_TIMEOUT)
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    assert "linked but not listed: libpq5" in p.stderr, p.stderr[-2000:]
    assert "listed but not linked: libyaml-0-2" in p.stderr, p.stderr[-2000:]
    assert "--update-packages" in p.stderr, p.stderr[-2000:]
    p = subprocess.run([BUILD, "--out", OUT, "--check-packages"], capture_output=True, text=True,
                       timeout=BUILD_TIMEOUT)
    assert p.returncode == 0, p.stderr[-2000:]
    # The check left the built image as it was.
    assert os.path.exists(os.path.join(OUT, ".inputs"))


@test
def an_unreachable_mirror_exits_77():
    """Without the Debian mirror (and no cached rootfs) the build says so
    and exits 77, which this test turns into SKIP; the image already built
    stays."""
    img = build_image()
    with svc.socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]         # bound, never listening: refused
        env = dict(os.environ, DEBIAN_MIRROR="http://127.0.0.1:%d/debian" % closed,
                   NETBIRD_CP_IMAGE_CACHE=svc.tmpdir())
        p = subprocess.run([BUILD, "--out", OUT], capture_output=True, text=True, env=env,
                           timeout=BUILD_TIMEOUT)
    assert p.returncode == 77, (p.returncode, p.stderr[-2000:])
    assert "unreachable" in p.stderr, p.stderr
    assert os.path.exists(img["env"]["ARCHIVE"]) and os.path.exists(os.path.join(OUT, ".inputs"))
    p = subprocess.run([BUILD, "--out", OUT], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert p.returncode == 0 and "up to date" in p.stderr, p.stderr[-2000:]


@test
def image_config():
    img = build_image()
    cfg = img["config"]
    c = cfg["config"]
    assert cfg["os"] == "linux" and cfg["architecture"] == "amd64", cfg
    assert c["User"] == "%d:%d" % (UID, UID), c["User"]
    assert c["Entrypoint"] == ENTRYPOINT and c["Cmd"] == CMD, (c["Entrypoint"], c["Cmd"])
    assert set(c["ExposedPorts"]) == PORTS, c["ExposedPorts"]
    assert c["WorkingDir"] == "/var/lib/netbird", c["WorkingDir"]
    env = image_env(img)
    assert env["NB_MGMT_PORT"] == "33073" and env["NB_MGMT_HTTP_PORT"] == "33080", env
    assert "PATH" in env and not any("DSN" in k or "KEY" in k for k in env), env
    labels = c["Labels"]
    version = img["env"]["VERSION"]
    assert labels["org.opencontainers.image.version"] == version, labels
    assert labels["org.opencontainers.image.title"] == "netbird-cp", labels
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == rev, (labels, rev)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", labels["org.opencontainers.image.created"]), labels
    assert re.match(r"^[0-9A-Za-z_.-]+$", version) and version.startswith(("0", "1", "2", "3", "4", "5", "6",
                                                                          "7", "8", "9")), version
    pv = subprocess.run([BUILD, "--print-version"], capture_output=True, text=True, check=True).stdout.strip()
    assert pv == version, (pv, version)
    # Two layers: Debian's, then ours.
    assert len(img["manifest"]["layers"]) == 2, img["manifest"]["layers"]
    # The archives exist; the oci-archive is the layout.
    assert os.path.getsize(img["env"]["ARCHIVE"]) > 1 << 20
    names = subprocess.run(["tar", "tf", img["env"]["ARCHIVE"]], capture_output=True, text=True,
                           check=True).stdout.split()
    assert "./index.json" in names and "./oci-layout" in names, names[:10]
    # docker-archive (skopeo) for `docker load`: tagged netbird-cp:VERSION.
    if img["env"].get("DOCKER_ARCHIVE"):
        p = subprocess.run(["tar", "-xOf", img["env"]["DOCKER_ARCHIVE"], "manifest.json"], capture_output=True,
                           check=True)
        tags = json.loads(p.stdout)[0]["RepoTags"]
        # skopeo writes the name fully qualified; docker load shows it short
        assert tags in ([img["env"]["REF"]], ["docker.io/library/" + img["env"]["REF"]]), tags
    size = int(img["env"]["ROOTFS_BYTES"])
    print("# image %s: %.1f MiB unpacked, %.1f MiB oci-archive" % (
        img["env"]["REF"], size / 1048576.0, int(img["env"]["ARCHIVE_BYTES"]) / 1048576.0))
    assert size < 120 << 20, "image grew to %d bytes" % size


@test
def image_contents():
    """Binaries, migrations, user, CA bundle; no shell, no package manager."""
    img = build_image()
    r = img["rootfs"]
    for b in ENTRYPOINT + ["/usr/bin/netbird-cp-admin"]:
        st = os.stat(r + b)
        assert st.st_mode & 0o111 and st.st_uid == 0, b
    mig = os.path.join(ROOT, "sql", "migrations")
    ours = sorted(os.listdir(mig))
    theirs = sorted(os.listdir(r + "/usr/share/netbird-cp/migrations"))
    assert ours == theirs, (ours, theirs)
    for n in ours:
        assert open(os.path.join(mig, n), "rb").read() == \
            open(r + "/usr/share/netbird-cp/migrations/" + n, "rb").read(), n
    assert "netbird:x:%d:%d:" % (UID, UID) in open(r + "/etc/passwd").read()
    assert "netbird:x:%d:" % UID in open(r + "/etc/group").read()
    ca = open(r + "/etc/ssl/certs/ca-certificates.crt").read()
    assert ca.count("BEGIN CERTIFICATE") > 100, "CA bundle"
    assert os.path.getsize(r + "/usr/share/iso-codes/json/iso_3166-1.json") > 10000
    for absent in ("/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/apt", "/usr/bin/apt-get", "/usr/bin/dpkg"):
        assert not os.path.lexists(r + absent) or not os.path.exists(r + absent), absent
    # Writable by the image's user: nothing (the root filesystem may be read-only).
    # Setuid or setgid: nothing (deploy/image/build strips the bits).
    writable = []
    setid = []
    for d, dirs, files in os.walk(r):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            if st.st_uid == UID or (not os.path.islink(p) and st.st_mode & 0o002 and p != r + "/tmp"):
                writable.append(p[len(r):])
            if not os.path.islink(p) and not os.path.isdir(p) and st.st_mode & 0o6000:
                setid.append("%s %o" % (p[len(r):], st.st_mode))
    assert not writable, writable
    assert not setid, setid


@test
def every_elf_resolves_inside_the_image():
    """Each ELF file's libraries, as the image's own loader resolves them
    in the image (ld.so --list in a chroot, what ldd does)."""
    img = build_image()
    r = img["rootfs"]
    elves = []
    for d, _, files in os.walk(r):
        for n in files:
            p = os.path.join(d, n)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            with open(p, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    elves.append(p[len(r):])
    assert len(elves) > 40, elves
    bad = []
    for e in elves:
        p = subprocess.run(["chroot", r, "/lib64/ld-linux-x86-64.so.2", "--list", e],
                           capture_output=True, text=True, timeout=30)
        text = p.stdout + p.stderr
        if "not found" in text or (p.returncode != 0 and "statically linked" not in text
                                   and "not a dynamic" not in text):
            bad.append("%s: rc %d %s" % (e, p.returncode, text.strip()[:300]))
    print("# %d ELF files checked" % len(elves))
    assert not bad, "\n".join(bad)
    # And the entrypoint's libraries all come from the image.
    p = subprocess.run(["chroot", r, "/lib64/ld-linux-x86-64.so.2", "--list", ENTRYPOINT[0]],
                       capture_output=True, text=True, check=True)
    assert "libgrpc.so.29 => /" in p.stdout, p.stdout


@test
def serves_an_agent_from_a_read_only_root():
    """The image's migrate and account create, then its entrypoint as uid
    65532 on a read-only root: health, readiness, an agent registers and
    gets its map, SIGTERM ends it cleanly."""
    img = build_image()
    svc.needs_db()
    dsn, _ = svc.new_db()
    db_env = {"NB_STORE_ENGINE_POSTGRES_DSN": dsn}

    r = run_in_image(img, ["/usr/bin/netbird-cp-admin", "migrate"], image_env(img, db_env))
    assert r.rc == 0, r
    applied = svc.query(dsn, "SELECT count(*) FROM schema_migrations")[0][0] if svc.query(
        dsn, "SELECT to_regclass('schema_migrations') IS NOT NULL")[0][0] else None
    tables = svc.query(dsn, "SELECT count(*) FROM pg_tables WHERE tablename IN ('accounts', 'peers')")[0][0]
    assert tables == 2, (tables, applied, r)
    r = run_in_image(img, ["/usr/bin/netbird-cp-admin", "account", "create"], image_env(img, db_env))
    assert r.rc == 0, r
    from fixture import parse_env_output
    created = parse_env_output(r.out)
    assert created.get("SETUP_KEY") and created.get("ACCOUNT_ID"), r

    grpc_port, http_port = svc.free_port(), svc.free_port()
    env = image_env(img, dict(db_env, NB_MGMT_PORT=str(grpc_port), NB_MGMT_HTTP_PORT=str(http_port),
                              NB_MGMT_LISTEN_ADDRESS="127.0.0.1",
                              NB_MGMT_DATA_STORE_ENCRYPTION_KEY=svc.DATA_KEY,
                              NB_MGMT_REPLICA_NAME="image-test"))
    if svc.REDIS_URL:
        env["NB_MGMT_REDIS_URL"] = svc.REDIS_URL
    cfg = img["config"]["config"]
    srv = svc.Server([], command=sandbox_argv(img, cfg["Entrypoint"] + cfg["Cmd"], env))
    assert (srv.grpc_port, srv.http_port) == (grpc_port, http_port)
    pid = image_process(srv, img["rootfs"])

    ids = status_ids(pid)
    assert ids["Uid"] == [str(UID)] * 4 and ids["Gid"] == [str(UID)] * 4, ids
    assert ids.get("Groups", []) in ([], [str(UID)]), ids
    # No capabilities: a pod's `capabilities: drop: [ALL]` takes nothing it uses.
    assert int(ids["CapEff"][0], 16) == 0 and int(ids["CapPrm"][0], 16) == 0, ids
    opts = root_mount_options(pid)
    assert "ro" in opts, opts
    assert os.readlink("/proc/%d/root" % pid) == img["rootfs"], os.readlink("/proc/%d/root" % pid)
    assert os.readlink("/proc/%d/cwd" % pid) == img["rootfs"] + "/var/lib/netbird"
    penv = dict(kv.split("=", 1) for kv in open("/proc/%d/environ" % pid).read().split("\0") if "=" in kv)
    assert penv == env, set(penv) ^ set(env)

    st, _, body = svc.http("GET", srv.url("/healthz"))
    assert st == 200, (st, body)
    deadline = time.monotonic() + 30
    while True:
        st, _, body = svc.http("GET", srv.url("/readyz"))
        if st == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert st == 200, (st, body, srv.stdout()[-3000:])

    import nbagent
    a = nbagent.Agent("127.0.0.1:%d" % grpc_port)
    svc.defer(a.close)
    resp = a.register(created["SETUP_KEY"], meta=nbagent.build_meta("image-peer"))
    assert resp.peerConfig.address, resp
    stream = a.sync(meta=nbagent.build_meta("image-peer"))
    first = stream.next(timeout=15)
    assert first.HasField("NetworkMap") and first.NetworkMap.peerConfig.address == resp.peerConfig.address, first
    peers = svc.query(dsn, "SELECT name, peer_status_connected FROM peers")
    assert peers == [("image-peer", True)], peers
    stream.cancel()

    # The log said nothing about files it could not write.
    logs = srv.logs()
    assert not [l for l in logs if l.get("level") in ("error", "fatal")], [l for l in logs if l.get("level") == "error"]
    # SIGTERM to the process, as a runtime stops a container: it drains and
    # exits 0 (unshare passes its status on).
    os.kill(pid, signal.SIGTERM)
    rc = srv.wait(30)
    assert rc == 0, (rc, srv.stdout()[-2000:], srv.stderr()[-2000:])


@test
def root_filesystem_is_read_only_to_the_process():
    """The image's binary, told to write outside /tmp, cannot: its log file
    under / fails with EROFS; under /tmp (the tmpfs) it works."""
    img = build_image()
    svc.needs_db()
    dsn, _ = svc.new_db()
    base = {"NB_STORE_ENGINE_POSTGRES_DSN": dsn}
    r = run_in_image(img, ["/usr/bin/netbird-mgmt", "migrate", "--log-file", "/var/lib/netbird/mgmt.log"],
                     image_env(img, base))
    assert r.rc != 0 and "Read-only file system" in r.err, r
    assert not os.path.exists(img["rootfs"] + "/var/lib/netbird/mgmt.log")
    r = run_in_image(img, ["/usr/bin/netbird-mgmt", "migrate", "--log-file", "/tmp/mgmt.log"],
                     image_env(img, base))
    assert r.rc == 0, r
    assert not os.path.exists(img["rootfs"] + "/tmp/mgmt.log"), "the tmpfs went to the image's files"


@test
def a_rebuild_gives_the_same_image():
    """Built again from the same inputs (the cached rootfs, the same
    binaries, SOURCE_DATE_EPOCH): the same manifest digest. Runs last: it
    replaces the layout the other cases read."""
    img = build_image()

    def rebuild():
        p = subprocess.run([BUILD, "--out", OUT, "--rebuild"], capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT)
        assert p.returncode == 0, p.stderr[-3000:]
        env = dict(l.split("=", 1) for l in open(os.path.join(OUT, "image.env")).read().splitlines() if "=" in l)
        return env["MANIFEST_DIGEST"], "rootfs: cached" in p.stderr

    before = img["env"]["MANIFEST_DIGEST"]
    digest, cached = rebuild()
    if not cached:
        # The cached rootfs had expired (ROOTFS_MAX_AGE_DAYS) since the
        # image was built: Debian's packages may have changed. Compare two
        # builds from the new one.
        before = digest
        digest, cached = rebuild()
        assert cached
    assert digest == before, (digest, before)


if __name__ == "__main__":
    sys.exit(svc.run_all())
