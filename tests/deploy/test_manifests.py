"""deploy/k8s against Kubernetes' schemas and against the real binaries.

Renders the base and every overlay with kustomize (kubectl's built-in
kustomize v4+), validates every object with the npm validator in
k8s-validate/ (kubernetes-models and its prometheus-operator and traefik
packages), and checks that what the manifests tell the binaries (command,
flags, environment, ports, probe paths, management.json, the Redis ACL)
is what the binaries built here accept and serve. The binaries' paths:
argv[1] = netbird-mgmt (meson), NETBIRD_ADMIN = netbird-cp-admin.

Without kubectl or kustomize v4+ the kubectl of an npm package pinned in
k8s-validate/ renders; without any of them the cases that need rendered
objects skip, saying so; without node and npm the schema cases skip. With
CP_TEST_REQUIRE_DEPLOY=1 (.ci/run) each of those skips is a failure.
"""

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, HERE)

import k8s                                          # noqa: E402
import svc                                          # noqa: E402
from svc import test                                # noqa: E402

CNPG = {("postgresql.cnpg.io/v1", "Cluster"), ("postgresql.cnpg.io/v1", "Pooler")}

_cmd = None
_rendered = {}


def kustomize():
    global _cmd
    if _cmd is None:
        try:
            _cmd, version = k8s.kustomize_command()
        except k8s.InstallError as e:
            k8s.skip("no kubectl with kustomize v4+, and the npm package with one did not install: %s" % e)
        if _cmd is None:
            k8s.skip("no kubectl with kustomize v4+, no kustomize, no node and npm for the packaged "
                     "kubectl (docs/kubernetes.md, 'Tests')")
        print("# rendering with %s" % version)
    return _cmd


# The dev overlay's Secret comes from files the operator writes (git
# ignores them); the tests render a temporary copy with these.
DEV_REDIS_PASSWORD = "5f" * 32
DEV_SECRET_ENV = ("postgres-dsn=host=postgres.netbird-dev.svc port=5432 dbname=netbird user=netbird "
                  "password=test-only sslmode=prefer\n"
                  "datastore-encryption-key=dGVzdC1vbmx5LXRlc3Qtb25seS10ZXN0LW9ubHktdGU=\n"
                  "redis-password=%s\n" % DEV_REDIS_PASSWORD)


def dev_files():
    return {"secret.env": DEV_SECRET_ENV, "redis-users.acl": k8s.users_acl(DEV_REDIS_PASSWORD)}


def rendered(name):
    """Objects of 'base', of an overlay, or of 'component:NAME' (the base
    with that component alone), rendered once."""
    if name not in _rendered:
        if name.startswith("component:"):
            _rendered[name] = k8s.render_component(kustomize(), name.split(":", 1)[1])
        elif name == "dev":
            _rendered[name] = k8s.render_copy(kustomize(), "dev", dev_files())
        else:
            path = os.path.join(k8s.K8S, "base") if name == "base" else os.path.join(k8s.K8S, "overlays", name)
            _rendered[name] = k8s.render(kustomize(), path)
    return _rendered[name]


def components_in_overlays():
    used = set()
    for n in k8s.overlays():
        kz = k8s.load_yaml(os.path.join(k8s.K8S, "overlays", n, "kustomization.yaml"))
        for c in kz.get("components") or []:
            used.add(os.path.basename(os.path.normpath(c)))
    return used


def every_rendering():
    """The base, every overlay, and the base with each component that no
    overlay uses (so that every file is rendered and checked)."""
    alone = sorted(set(k8s.components()) - components_in_overlays())
    return ["base"] + k8s.overlays() + ["component:" + c for c in alone]


def binaries():
    admin = os.environ.get("NETBIRD_ADMIN", "")
    if not admin or not os.access(admin, os.X_OK):
        k8s.skip("NETBIRD_ADMIN does not name netbird-cp-admin")
    return k8s.Binaries(svc.BINARY, admin)


def needs_node():
    if not shutil.which("node") or not shutil.which("npm"):
        k8s.skip("node and npm are needed for the schema validator")
    k8s.install_validator()


def one(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


def mgmt_deployment(objects):
    return one(objects, "Deployment", "netbird-mgmt")


def main_container(x):
    """The netbird-mgmt container of a Deployment or of a pod spec."""
    spec = x["spec"]["template"]["spec"] if x.get("kind") == "Deployment" else x
    return [c for c in spec["containers"] if c["name"] == "netbird-mgmt"][0]


def management_json(objects):
    """The ConfigMap's management.json and the path the replicas read it at."""
    dep = mgmt_deployment(objects)
    c = main_container(dep)
    args = c["args"]
    config_path = args[args.index("--config") + 1]
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    for m in c["volumeMounts"]:
        if config_path.startswith(m["mountPath"].rstrip("/") + "/"):
            key = config_path[len(m["mountPath"].rstrip("/")) + 1:]
            cm_name = vols[m["name"]]["configMap"]["name"]
            cm = one(objects, "ConfigMap", cm_name)
            assert key in cm["data"], (key, sorted(cm["data"]))
            return cm["data"][key], config_path
    raise AssertionError("--config %s is on no volume mounted from a ConfigMap" % config_path)


# ---- rendering ---------------------------------------------------------------

@test
def kustomize_renders_base_and_every_overlay():
    names = every_rendering()
    assert set(k8s.overlays()) >= {"dev", "cnpg", "external-db"}, names
    for n in names:
        objs = rendered(n)
        kinds = sorted({o["kind"] for o in objs})
        print("# %s: %d objects (%s)" % (n, len(objs), ", ".join(kinds)))
        mgmt_deployment(objs)
        for kind in ("Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap",
                     "NetworkPolicy", "ServiceMonitor", "ServiceAccount"):
            assert any(o["kind"] == kind for o in objs), (n, kind)
        if n != "base" and not n.startswith("component:"):
            ns = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
            assert len(ns) == 1 and None not in ns, (n, ns)
            assert any(o["kind"] == "Secret" for o in objs) or n != "dev", n


@test
def the_packaged_kubectl_renders_like_the_machines():
    """The fallback for machines without kubectl 1.21+: the kubectl of the
    npm package pinned in k8s-validate's lockfile (checked by sha256)
    renders every overlay to the same objects."""
    if not shutil.which("node") or not shutil.which("npm"):
        k8s.skip("node and npm are needed for the packaged kubectl")
    packaged = k8s.packaged_kubectl()
    out = subprocess.run([packaged, "version", "--client", "-o", "json"], capture_output=True, text=True,
                         timeout=60).stdout
    v = json.loads(out)
    assert v["clientVersion"]["gitVersion"] == k8s.PACKAGED_KUBECTL[2], v
    assert v["kustomizeVersion"].startswith("v5."), v
    cmd = [packaged, "kustomize"]
    if kustomize() == cmd:
        print("# the packaged kubectl is the one rendering here")
        return
    for n in ("base", "cnpg", "external-db"):
        path = os.path.join(k8s.K8S, "base") if n == "base" else os.path.join(k8s.K8S, "overlays", n)
        assert k8s.render(cmd, path) == rendered(n), n
    assert k8s.render_copy(cmd, "dev", dev_files()) == rendered("dev")


@test
def the_dev_overlay_needs_the_operators_secret_files():
    """No secret is committed: the dev overlay renders only once the
    operator has written secret.env and redis-users.acl (git ignores both;
    the .example shows the format), and the generated Secret holds what
    they say."""
    dev = os.path.join(k8s.K8S, "overlays", "dev")
    assert os.path.isfile(os.path.join(dev, "secret.env.example"))
    names = ["deploy/k8s/overlays/dev/secret.env", "deploy/k8s/overlays/dev/redis-users.acl"]
    ignored = subprocess.run(["git", "-C", k8s.ROOT, "check-ignore"] + names, capture_output=True, text=True)
    assert ignored.stdout.split() == names, ("must be git-ignored", ignored.stdout, ignored.stderr)
    tracked = subprocess.run(["git", "-C", k8s.ROOT, "ls-files", "deploy/k8s"], capture_output=True,
                             text=True).stdout.split()
    assert not [t for t in tracked if t.endswith(("/secret.env", "/redis-users.acl"))], tracked
    for missing in ("secret.env", "redis-users.acl"):
        files = dev_files()
        del files[missing]
        try:
            k8s.render_copy(kustomize(), "dev", files)
        except AssertionError as e:
            assert missing in str(e), e
            continue
        raise AssertionError("the dev overlay rendered without %s" % missing)
    import base64
    secret = one(rendered("dev"), "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(data) == {"postgres-dsn", "datastore-encryption-key", "redis-password", "redis-users.acl"}, data
    assert data["redis-password"] == DEV_REDIS_PASSWORD
    assert DEV_REDIS_PASSWORD not in data["redis-users.acl"], "the ACL file holds the cleartext"


@test
def every_component_renders():
    """Each component is in an overlay or, if none uses it yet, rendered
    with the base alone (every_rendering); either way all its objects
    reach the other tests."""
    used = components_in_overlays()
    assert set(k8s.components()) >= used, (used, k8s.components())
    for c in sorted(set(k8s.components()) - used):
        objs = rendered("component:" + c)
        print("# component %s is in no overlay: rendered with the base alone (%d objects)" % (c, len(objs)))
    kustomize()
    for n in k8s.overlays():
        rendered(n)
    # What each component adds appears in an overlay's output.
    allobjs = [o for n in k8s.overlays() for o in rendered(n)]
    for kind, name in (("Deployment", "netbird-redis"), ("Ingress", "netbird-mgmt-grpc"),
                       ("IngressRoute", "netbird-mgmt"), ("Job", "netbird-cp-migrate")):
        assert any(o["kind"] == kind and o["metadata"]["name"] == name for o in allobjs), (kind, name)


# ---- schemas -----------------------------------------------------------------

def check_schemas(objects, label):
    results = k8s.validate(objects)
    assert len(results) == len(objects), (len(results), len(objects))
    bad = []
    unschemaed = []
    for r in results:
        if r["result"] == "valid":
            continue
        if r["result"] == "no-schema" and (r["apiVersion"], r["kind"]) in CNPG:
            unschemaed.append("%s %s" % (r["kind"], r["name"]))
            continue
        bad.append(r)
    assert not bad, "%s: %s" % (label, json.dumps(bad, indent=1))
    return len(results) - len(unschemaed), unschemaed


@test
def every_object_validates_against_kubernetes_schemas():
    needs_node()
    total = 0
    for n in every_rendering():
        ok, unschemaed = check_schemas(rendered(n), n)
        total += ok
        print("# %s: %d objects valid%s" % (n, ok, (", no schema package for: " + ", ".join(unschemaed))
                                          if unschemaed else ""))
    ex = os.path.join(k8s.K8S, "overlays", "external-db", "secret.example.yaml")
    ok, _ = check_schemas([k8s.load_yaml(ex)], "secret.example.yaml")
    assert total > 30 and ok == 1, total


@test
def no_object_has_a_field_its_type_does_not_declare():
    """Misspelt fields pass the JSON schemas (they allow extra properties)
    and the API server drops them; the packages' TypeScript declarations
    catch them (k8s.typecheck). One compile for every rendering."""
    needs_node()
    objs = []
    labels = []
    for n in every_rendering():
        for o in rendered(n):
            objs.append(o)
            labels.append("%s: %s/%s" % (n, o["kind"], o["metadata"]["name"]))
    objs.append(k8s.load_yaml(os.path.join(k8s.K8S, "overlays", "external-db", "secret.example.yaml")))
    labels.append("secret.example.yaml")
    # and one misspelt field, which must be the only error
    bad = copy.deepcopy(mgmt_deployment(rendered("base")))
    c = main_container(bad)
    c["readinesProbe"] = c.pop("readinessProbe")
    objs.append(bad)
    labels.append("the misspelt one")
    errors = k8s.typecheck(objs)
    assert len(errors) == 1 and errors[0][0] == len(objs) - 1 and "readinesProbe" in errors[0][1], \
        "\n".join("%s: %s" % (labels[i] if i is not None else "?", m) for i, m in errors)


@test
def the_api_server_s_other_rules_hold():
    """Rules the API server applies that schemas cannot express
    (k8s.api_server_checks); then wrong objects show each rule fails."""
    count = 0
    for n in every_rendering():
        for o in rendered(n):
            errs = k8s.api_server_checks(o)
            assert not errs, (n, errs)
            count += 1
    dep = mgmt_deployment(rendered("base"))

    def errs(mutate, obj=dep):
        x = copy.deepcopy(obj)
        mutate(x)
        return k8s.api_server_checks(x)

    assert errs(lambda x: main_container(x)["ports"][0].__setitem__("name", "grpc-for-the-agents"))
    assert errs(lambda x: main_container(x)["env"].append({"name": "NB MGMT", "value": "x"}))
    assert errs(lambda x: main_container(x)["readinessProbe"]["httpGet"].__setitem__("port", "htp"))
    assert errs(lambda x: x["spec"]["template"]["metadata"]["labels"].pop("app.kubernetes.io/component"))
    assert errs(lambda x: x["metadata"].__setitem__("name", "Netbird_Mgmt"))
    assert errs(lambda x: x["spec"]["template"]["spec"]["initContainers"][0].__setitem__("name", "netbird-mgmt"))
    svc_obj = one(rendered("base"), "Service")
    assert errs(lambda x: x["metadata"].__setitem__("name", "1netbird"), svc_obj)    # DNS-1035
    pdb = one(rendered("base"), "PodDisruptionBudget")
    assert errs(lambda x: x["spec"].__setitem__("minAvailable", 2), pdb)
    cm = one(rendered("base"), "ConfigMap")
    assert errs(lambda x: x["data"].__setitem__("management json", "{}"), cm)
    print("# %d objects" % count)


@test
def the_validator_rejects_broken_objects():
    needs_node()
    dep = copy.deepcopy(mgmt_deployment(rendered("base")))
    bad_port = copy.deepcopy(dep)
    main_container(bad_port["spec"]["template"]["spec"])["ports"][0]["containerPort"] = "grpc"
    no_containers = copy.deepcopy(dep)
    del no_containers["spec"]["template"]["spec"]["containers"]
    bad_probe = copy.deepcopy(dep)
    main_container(bad_probe["spec"]["template"]["spec"])["readinessProbe"]["periodSeconds"] = "5s"
    sm = copy.deepcopy(one(rendered("base"), "ServiceMonitor"))
    sm["spec"]["endpoints"] = "http"
    hpa = copy.deepcopy(one(rendered("base"), "HorizontalPodAutoscaler"))
    del hpa["spec"]["maxReplicas"]
    ir = copy.deepcopy(one(rendered("external-db"), "IngressRoute"))
    ir["spec"]["routes"][0]["services"][0]["port"] = {"name": "grpc"}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "data": {"k": "not base64!"}}
    unknown = {"apiVersion": "example.com/v1", "kind": "Nothing", "metadata": {"name": "x"}}
    results = k8s.validate([bad_port, no_containers, bad_probe, sm, hpa, ir, secret, unknown])
    got = [r["result"] for r in results]
    assert got == ["invalid"] * 7 + ["no-schema"], json.dumps(results, indent=1)
    assert any("containerPort" in e for e in results[0]["errors"]), results[0]
    assert any("containers" in e for e in results[1]["errors"]), results[1]


@test
def cloudnativepg_objects_hold_together():
    """No schema package exists for CloudNativePG's CRDs: check by hand
    the fields the overlay relies on, and that the replicas' DSN and
    password point at the Pooler and the Cluster's generated Secret."""
    objs = rendered("cnpg")
    cluster = one(objs, "Cluster")
    pooler = one(objs, "Pooler")
    cs = cluster["spec"]
    assert isinstance(cs["instances"], int) and cs["instances"] >= 2, cs
    assert cs["storage"]["size"], cs
    initdb = cs["bootstrap"]["initdb"]
    ps = pooler["spec"]
    assert ps["cluster"]["name"] == cluster["metadata"]["name"], (ps, cluster["metadata"])
    assert ps["type"] == "rw", ps
    assert ps["pgbouncer"]["poolMode"] in ("session", "transaction"), ps
    for k, v in (ps["pgbouncer"].get("parameters") or {}).items():
        assert isinstance(v, str), (k, v)           # the CRD's map of strings
    # Connections: every pooler instance's server connections together stay
    # under max_connections with headroom, and one instance can hold every
    # client (session mode: a client beyond the pool waits for good).
    pp = ps["pgbouncer"]["parameters"]
    per_instance = min(int(pp["default_pool_size"]), int(pp.get("max_db_connections", "0")) or 10 ** 9)
    max_conn = int(cs["postgresql"]["parameters"]["max_connections"])
    assert ps["instances"] * per_instance + 40 <= max_conn, (ps["instances"], per_instance, max_conn)
    hpa = one(objs, "HorizontalPodAutoscaler")
    h = binaries().help(k8s.ENTRYPOINT, "management")
    clients = hpa["spec"]["maxReplicas"] * (int(h.flags["--db-pool-size"]["default"]) + 1) + 2
    assert per_instance >= clients, (per_instance, clients)
    print("# pooler: %d x %d server connections of max_connections %d; %d clients at most"
          % (ps["instances"], per_instance, max_conn, clients))
    for k, v in (cs.get("postgresql", {}).get("parameters") or {}).items():
        assert isinstance(v, str), (k, v)
    kz = k8s.load_yaml(os.path.join(k8s.K8S, "overlays", "cnpg", "kustomization.yaml"))
    text = open(os.path.join(k8s.K8S, "overlays", "cnpg", "kustomization.yaml")).read()
    dsn_line = [l for l in text.splitlines() if "host=" in l][0]
    dsn = dict(kv.split("=", 1) for kv in dsn_line.strip("# ").split())
    assert dsn["host"] == pooler["metadata"]["name"], dsn
    assert dsn["dbname"] == initdb["database"] and dsn["user"] == initdb["owner"], (dsn, initdb)
    assert "password" not in dsn, dsn
    assert kz["namespace"]
    for where, c in k8s.image_containers(objs):
        pw = [e for e in c.get("env") or [] if e["name"] == "PGPASSWORD"]
        assert pw, where
        ref = pw[0]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": cluster["metadata"]["name"] + "-app", "key": "password"}, (where, ref)


@test
def the_cnpg_overlay_narrows_the_replicas_egress():
    """5432 only to the Pooler's pods, 6379 only to the Redis pods, DNS and
    443 kept; the other overlays keep the base's open ports."""
    objs = rendered("cnpg")
    pol = one(objs, "NetworkPolicy", "netbird-mgmt")
    pooler = one(objs, "Pooler")
    redis_labels = one(objs, "Deployment", "netbird-redis")["spec"]["template"]["metadata"]["labels"]
    by_port = {}
    for rule in pol["spec"]["egress"]:
        for p in rule["ports"]:
            by_port.setdefault(p["port"], []).append(rule.get("to"))
    assert set(by_port) == {53, 5432, 6379, 443}, by_port
    assert by_port[5432] == [[{"podSelector": {"matchLabels": {"cnpg.io/poolerName": pooler["metadata"]["name"]}}}]], \
        by_port[5432]
    [[sel]] = by_port[6379]
    ml = sel["podSelector"]["matchLabels"]
    assert ml and ml.items() <= redis_labels.items() and ml.get("app.kubernetes.io/component") == "redis", ml
    assert by_port[443] == [None] and all(t is None for t in by_port[53]), by_port
    base = one(rendered("base"), "NetworkPolicy", "netbird-mgmt")
    assert [p["port"] for r in base["spec"]["egress"] for p in r["ports"]] == [53, 53, 5432, 6379, 443], base


def sync_wave(o):
    return int((o["metadata"].get("annotations") or {}).get("argocd.argoproj.io/sync-wave", "0"))


@test
def the_migration_job_runs_after_the_database_under_argo():
    """A PreSync hook runs before the Namespace and the Cluster exist, so a
    first install fails: the Job is a Sync hook in a wave after the
    Cluster's and before the Deployment's, and retries long enough for a
    new Cluster to start."""
    objs = rendered("cnpg")
    job = one(objs, "Job", "netbird-cp-migrate")
    ann = job["metadata"]["annotations"]
    assert ann["argocd.argoproj.io/hook"] == "Sync", ann
    assert job["spec"]["backoffLimit"] >= 15 and job["spec"]["activeDeadlineSeconds"] == 1800, job["spec"]
    ns, cluster, pooler = one(objs, "Namespace"), one(objs, "Cluster"), one(objs, "Pooler")
    dep = mgmt_deployment(objs)
    waves = [sync_wave(x) for x in (ns, cluster, job, dep)]
    print("# Argo CD sync waves: Namespace %d, Cluster %d, Job %d, Deployment %d" % tuple(waves))
    assert waves == sorted(set(waves)), waves
    assert sync_wave(pooler) <= sync_wave(job) - 1, sync_wave(pooler)


# ---- the binaries ----------------------------------------------------------------

@test
def args_and_env_are_what_the_binaries_accept():
    b = binaries()
    pending = []
    seen = 0
    for n in every_rendering():
        for where, c in k8s.image_containers(rendered(n)):
            errors = k8s.check_container(c, b, pending)
            assert not errors, "%s: %s: %s" % (n, where, errors)
            seen += 1
    for p in sorted(set(pending)):
        print("# not in this binary yet: %s" % p)
    assert seen >= 8, seen


@test
def the_checker_catches_wrong_names():
    b = binaries()
    c = copy.deepcopy(main_container(mgmt_deployment(rendered("base"))))
    assert k8s.check_container(c, b) == []

    def errs(mutate):
        x = copy.deepcopy(c)
        mutate(x)
        return k8s.check_container(x, b)

    assert any("--frobnicate" in e for e in errs(lambda x: x["args"].append("--frobnicate")))
    assert any("--http-prot" in e for e in errs(lambda x: x["args"].extend(["--http-prot", "1"])))
    assert any("NB_MGMT_HTTP_PROT" in e for e in
               errs(lambda x: x["env"].append({"name": "NB_MGMT_HTTP_PROT", "value": "1"})))
    assert any("NB_STORE_ENGINE_POSTGRESS_DSN" in e for e in
               errs(lambda x: x["env"].append({"name": "NB_STORE_ENGINE_POSTGRESS_DSN", "value": "x"})))
    # a helper variable nobody uses, and a reference to an undefined one
    assert any("REDIS_PASS" in e for e in
               errs(lambda x: x["env"].insert(0, {"name": "REDIS_PASS", "value": "x"})))

    def undefined_ref(x):
        for e in x["env"]:
            if e["name"] == "NB_CACHE_REDIS_ADDRESS":
                e["value"] = "redis://u:$(REDIS_PASSWD)@h:6379"
    assert any("REDIS_PASSWD" in e for e in errs(undefined_ref))

    def ref_after(x):       # defined after its use: the kubelet leaves $(X) as it is
        x["env"] = [e for e in x["env"] if e["name"] != "REDIS_PASSWORD"] + \
            [e for e in x["env"] if e["name"] == "REDIS_PASSWORD"]
    assert any("not defined before" in e for e in errs(ref_after))
    assert any("no command" in e for e in errs(lambda x: x.__setitem__("args", ["serve"])))
    assert any("not a program" in e for e in errs(lambda x: x.__setitem__("command", ["/bin/sh"])))
    init = copy.deepcopy(mgmt_deployment(rendered("base"))["spec"]["template"]["spec"]["initContainers"][0])
    init["args"] = ["migrate", "--data-store-encryption-key", "x"]      # migrate takes no key
    assert any("--data-store-encryption-key" in e for e in k8s.check_container(init, b))


@test
def the_guide_s_admin_commands_exist():
    """Every netbird-cp-admin command line in docs/kubernetes.md's code
    blocks names a command and flags the binary has."""
    import shlex
    b = binaries()
    text = open(os.path.join(k8s.ROOT, "docs", "kubernetes.md")).read()
    blocks = text.split("```")[1::2]
    seen = 0
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if "netbird-cp-admin " not in line:
                continue
            words = shlex.split(line.split("netbird-cp-admin ", 1)[1], comments=True)
            errors = k8s.check_container({"command": [k8s.ADMIN], "args": words}, b)
            assert not errors, (line, errors)
            seen += 1
    assert seen >= 3, seen


@test
def ports_probes_and_references_agree():
    h = binaries().help(k8s.ENTRYPOINT, "management")
    defaults = {"grpc": int(h.flags["--port"]["default"]), "http": int(h.flags["--http-port"]["default"])}
    services = set()
    for proto in ("management.proto", "proxy_service.proto"):
        pkg = None
        for line in open(os.path.join(k8s.ROOT, "proto", proto)):
            w = line.split()
            if w[:1] == ["package"]:
                pkg = w[1].rstrip(";")
            elif w[:1] == ["service"]:
                services.add("/%s.%s/" % (pkg, w[1]))
    for n in every_rendering():
        objs = rendered(n)
        dep = mgmt_deployment(objs)
        pod = dep["spec"]["template"]
        labels = pod["metadata"]["labels"]
        c = main_container(pod["spec"])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == defaults, (n, ports, defaults)
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz", n
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", n
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", n
        for p in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[p]["httpGet"]["port"] == "http", (n, p)

        def selects(sel):
            return sel and all(labels.get(k) == v for k, v in sel.items())
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), n
        svc_obj = one(objs, "Service", "netbird-mgmt")
        assert selects(svc_obj["spec"]["selector"]), n
        sports = {p["name"]: p for p in svc_obj["spec"]["ports"]}
        assert sports["grpc"]["targetPort"] == "grpc" and sports["grpc"]["appProtocol"] == "kubernetes.io/h2c", n
        assert sports["http"]["targetPort"] == "http", n
        sm = one(objs, "ServiceMonitor")
        assert selects(sm["spec"]["selector"]["matchLabels"]), n
        assert all(e["port"] in sports and e["path"] == "/metrics" for e in sm["spec"]["endpoints"]), n
        assert selects(one(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]), n
        assert selects(one(objs, "NetworkPolicy", "netbird-mgmt")["spec"]["podSelector"]["matchLabels"]), n
        hpa = one(objs, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": "netbird-mgmt"}, n
        assert "replicas" not in dep["spec"], (n, "the HPA owns the replica count")
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], n
        for ing in (o for o in objs if o["kind"] == "Ingress"):
            grpc = ing["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/backend-protocol")
            for rule in ing["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    be = path["backend"]["service"]
                    assert be["name"] == "netbird-mgmt" and be["port"]["name"] in sports, (n, be)
                    if grpc == "GRPC":
                        assert be["port"]["name"] == "grpc" and path["path"] in services, (n, path)
        for ir in (o for o in objs if o["kind"] == "IngressRoute"):
            for route in ir["spec"]["routes"]:
                for s in route["services"]:
                    assert s["name"] == "netbird-mgmt" and s["port"] in sports, (n, s)
                    if s["port"] == "grpc":
                        assert s["scheme"] == "h2c", (n, s)
                        for svcpath in services:
                            assert "PathPrefix(`%s`)" % svcpath in route["match"], (n, route["match"])
    assert len(services) == 2, services


# What netbird-mgmt may take after SIGTERM beyond ShutdownTimeout
# (services/management/mgmt-manager.c): SHUTDOWN_SLACK_MS (5 s) for gRPC to
# finish cancelling, then REPLICA_STOP_MS (3 s) for the replicas row and
# READY_STOP_MS (2 s) for a readiness check stuck in the store.
SHUTDOWN_AFTER_TIMEOUT = 5 + 3 + 2
GRACE_MARGIN = 2


def setting(c, cfg_controlplane, flag, env_name, file_key, default):
    """A duration setting as the binary resolves it: command line over
    environment over management.json over the built-in default."""
    args = list(c.get("args") or [])
    for k, a in enumerate(args):
        if a == flag and k + 1 < len(args):
            return k8s.seconds(args[k + 1]), "args"
        if a.startswith(flag + "="):
            return k8s.seconds(a.split("=", 1)[1]), "args"
    for e in c.get("env") or []:
        if e["name"] == env_name and "value" in e:
            return k8s.seconds(e["value"]), "env"
    if file_key in cfg_controlplane:
        return k8s.seconds(cfg_controlplane[file_key]), "management.json"
    return k8s.seconds(default), "default"


def shutdown_budget(objs, defaults):
    """(preStop, ShutdownTimeout, DrainWindow, grace) of a rendering."""
    spec = mgmt_deployment(objs)["spec"]["template"]["spec"]
    c = main_container(spec)
    prestop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    cfg = json.loads(management_json(objs)[0])
    cp = {k.lower(): v for k, v in cfg.get("ControlPlane", {}).items()}
    shutdown, src = setting(c, cp, "--shutdown-timeout", "NB_MGMT_SHUTDOWN_TIMEOUT", "shutdowntimeout",
                            defaults["--shutdown-timeout"])
    drain, _ = setting(c, cp, "--drain-window", "NB_MGMT_DRAIN_WINDOW", "drainwindow",
                       defaults["--drain-window"])
    return prestop, shutdown, drain, spec["terminationGracePeriodSeconds"], src


def grace_errors(prestop, shutdown, drain, grace):
    errs = []
    if drain >= shutdown:
        errs.append("DrainWindow %ss >= ShutdownTimeout %ss" % (drain, shutdown))
    need = prestop + shutdown + SHUTDOWN_AFTER_TIMEOUT + GRACE_MARGIN
    if grace < need:
        errs.append("grace %ss < preStop %ss + ShutdownTimeout %ss + %ss + margin %ss"
                    % (grace, prestop, shutdown, SHUTDOWN_AFTER_TIMEOUT, GRACE_MARGIN))
    return errs


@test
def grace_period_covers_prestop_and_shutdown():
    """terminationGracePeriodSeconds >= preStop + ShutdownTimeout + the
    10 s the binary may take after it (SHUTDOWN_AFTER_TIMEOUT) + a margin,
    with ShutdownTimeout read as the binary does (args, env,
    management.json, its default)."""
    h = binaries().help(k8s.ENTRYPOINT, "management")
    defaults = {f: h.flags[f]["default"] for f in ("--shutdown-timeout", "--drain-window")}
    for n in every_rendering():
        objs = rendered(n)
        dep = mgmt_deployment(objs)
        prestop, shutdown, drain, grace, src = shutdown_budget(objs, defaults)
        print("# %s: preStop %ss + ShutdownTimeout %ss (%s; DrainWindow %ss inside it) + %ss + %ss <= grace %ss"
              % (n, prestop, shutdown, src, drain, SHUTDOWN_AFTER_TIMEOUT, GRACE_MARGIN, grace))
        assert not grace_errors(prestop, shutdown, drain, grace), (n, grace_errors(prestop, shutdown, drain, grace))
        strat = dep["spec"]["strategy"]["rollingUpdate"]
        assert strat["maxUnavailable"] == 0 and strat["maxSurge"] >= 1, (n, strat)
    # an override in env or args is what counts
    base = rendered("base")
    for mutate, want in ((lambda c: c.setdefault("env", []).append({"name": "NB_MGMT_SHUTDOWN_TIMEOUT",
                                                                    "value": "25s"}), (25, "env")),
                         (lambda c: c["args"].extend(["--shutdown-timeout", "40s"]), (40, "args")),
                         (lambda c: c["args"].append("--shutdown-timeout=1m"), (60, "args"))):
        x = copy.deepcopy(base)
        mutate(main_container(mgmt_deployment(x)))
        prestop, shutdown, drain, grace, src = shutdown_budget(x, defaults)
        assert (shutdown, src) == want, (shutdown, src, want)
        assert grace_errors(prestop, shutdown, drain, grace), (shutdown, grace)
    assert k8s.seconds("1m30s") == 90 and k8s.seconds("250ms") == 0.25 and k8s.seconds("7") == 7
    for bad in ("", "10x", "s10"):
        try:
            k8s.seconds(bad)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % bad)


def hpa_metric_types(objects):
    return [m["type"] for m in one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]]


@test
def the_base_hpa_needs_no_custom_metrics():
    """An HPA with a metric it cannot read refuses to scale down, so the
    base scales on CPU alone (metrics-server) and the streams metric comes
    only with components/hpa-streams, in the overlays that also need
    prometheus-adapter."""
    assert hpa_metric_types(rendered("base")) == ["Resource"], hpa_metric_types(rendered("base"))
    with_streams = []
    for n in k8s.overlays():
        kz = k8s.load_yaml(os.path.join(k8s.K8S, "overlays", n, "kustomization.yaml"))
        uses = any(os.path.basename(os.path.normpath(c)) == "hpa-streams" for c in kz.get("components") or [])
        types = hpa_metric_types(rendered(n))
        assert types == (["Resource", "Pods"] if uses else ["Resource"]), (n, types)
        if uses:
            with_streams.append(n)
    print("# the streams metric in: %s" % ", ".join(with_streams))
    assert set(with_streams) >= {"cnpg", "external-db"} and "dev" not in with_streams, with_streams


@test
def the_prometheus_adapter_rule_serves_the_hpa_metric():
    rule = k8s.load_yaml(os.path.join(k8s.K8S, "extras", "prometheus-adapter-rules.yaml"))
    custom = rule["rules"]["custom"]
    hpa = one(rendered("cnpg"), "HorizontalPodAutoscaler")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert names, hpa
    for name in names:
        r = [x for x in custom if x["name"]["as"] == name]
        assert len(r) == 1, (name, custom)
        assert r[0]["seriesQuery"].startswith(name + "{"), r[0]
        assert set(r[0]["resources"]["overrides"]) == {"namespace", "pod"}, r[0]
        # the binary exports it (docs/metrics.md is kept in step with the code)
        assert "`%s`" % name in open(os.path.join(k8s.ROOT, "docs", "metrics.md")).read(), name


def secret_values(objects, dsn):
    """What valueFrom would give, by variable name, for a test: the test's
    database and key instead of the manifests' examples."""
    return {"NB_STORE_ENGINE_POSTGRES_DSN": dsn, "NB_MGMT_DATA_STORE_ENCRYPTION_KEY": svc.DATA_KEY,
            "REDIS_PASSWORD": "0" * 64, "POD_NAME": "netbird-mgmt-7d9f8b6c5d-x2x4q"}


@test
def a_replica_started_as_the_manifests_say_serves_its_probes():
    """The init container's command, then the server with the Deployment's
    args and env and the ConfigMap's management.json at --config (ports and
    listen address moved to free loopback ones by flags appended, which win);
    then every probe path of the manifest on the http port."""
    b = binaries()
    dsn, _ = svc.new_db()
    objs = rendered("dev")
    dep = mgmt_deployment(objs)
    spec = dep["spec"]["template"]["spec"]
    values = secret_values(objs, dsn)
    init = spec["initContainers"][0]
    env = k8s.container_env(init, values)
    r = subprocess.run([b.paths[init["command"][0]]] + init["args"], capture_output=True, text=True,
                       env=svc.clean_env(env), timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("applied "), (r.returncode, r.stdout, r.stderr)
    print("# init container: %s" % r.stdout.strip())

    c = main_container(spec)
    text, config_path = management_json(objs)
    path = os.path.join(svc.tmpdir(), "management.json")
    with open(path, "w") as f:
        f.write(text)
    args = [path if a == config_path else a for a in c["args"]]
    assert args[0] == "management", args
    env = k8s.container_env(c, values)
    env.pop("NB_CACHE_REDIS_ADDRESS", None)     # the bus: a_replica_uses_the_manifests_redis_url
    grpc, http = svc.free_port(), svc.free_port()
    s = svc.Server(args[1:] + ["--listen-address", "127.0.0.1", "--port", str(grpc), "--http-port", str(http)],
                   env=env, command=[svc.BINARY, "management"])
    assert (s.grpc_port, s.http_port) == (grpc, http)
    for p in ("startupProbe", "livenessProbe"):
        st, _, body = svc.http("GET", s.url(c[p]["httpGet"]["path"]))
        assert st == 200, (p, st, body)
    deadline = time.monotonic() + 30
    while True:
        st, _, body = svc.http_json("GET", s.url(c["readinessProbe"]["httpGet"]["path"]))
        if st == 200 and body.get("status") == "ready":
            break
        assert time.monotonic() < deadline, (st, body)
        time.sleep(0.5)
    sm = one(objs, "ServiceMonitor")
    st, _, body = svc.http("GET", s.url(sm["spec"]["endpoints"][0]["path"]))
    hpa = one(rendered("cnpg"), "HorizontalPodAutoscaler")     # dev's HPA has CPU only
    metric = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"][0]["pods"]["metric"]["name"]
    assert st == 200 and ("\n%s " % metric).encode() in body, (st, metric)
    # the config loaded whole: no key of it was unknown to this binary
    pending = []
    for o in s.logs():
        m = str(o.get("msg", ""))
        if "unknown key" in m:
            key = m.split('"')[1] if '"' in m else m
            note = k8s.pending_note(key, b.help(k8s.ENTRYPOINT, "management"))
            if note is None:
                raise AssertionError("management.json: %s" % m)
            pending.append(note)
    for p in pending:
        print("# not in this binary yet: %s" % p)
    # POD_NAME became the replica's name
    r = subprocess.run([b.paths[k8s.ADMIN], "replicas", "list", "--json"], capture_output=True, text=True,
                       env=svc.clean_env({"NB_STORE_ENGINE_POSTGRES_DSN": dsn}), timeout=60)
    assert r.returncode == 0 and values["POD_NAME"] in r.stdout, (r.stdout, r.stderr)
    rc, _ = s.stop()
    assert rc == 0, s.stderr()


def redis_cmd(port, *words):
    """One command on a new connection (RESP); returns the first reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        msg = "*%d\r\n" % len(words) + "".join("$%d\r\n%s\r\n" % (len(w.encode()), w) for w in words)
        sock.sendall(msg.encode())
        return sock.makefile("rb").readline().decode().rstrip("\r\n")


def redis_session(port, *commands):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        f = sock.makefile("rb")
        out = []
        for words in commands:
            msg = "*%d\r\n" % len(words) + "".join("$%d\r\n%s\r\n" % (len(w.encode()), w) for w in words)
            sock.sendall(msg.encode())
            out.append(f.readline().decode().rstrip("\r\n"))
        return out


def start_manifest_redis(objs):
    """redis-server as the Redis Deployment says: its args, with the ACL
    file it mounts from the rendered Secret written to a temporary
    directory at the mount's place; on a free loopback port."""
    import base64
    server = shutil.which("redis-server")
    if not server:
        k8s.skip("redis-server not installed")
    rdep = one(objs, "Deployment", "netbird-redis")
    spec = rdep["spec"]["template"]["spec"]
    rc = spec["containers"][0]
    assert not rc.get("env"), "the Redis container needs no environment (no password in it)"
    d = svc.tmpdir()
    args = list(rc["args"])
    vols = {v["name"]: v for v in spec["volumes"]}
    for m in rc.get("volumeMounts") or []:
        sv = vols[m["name"]].get("secret")
        if not sv:
            continue
        secret = one(objs, "Secret", sv["secretName"])
        mdir = os.path.join(d, m["name"])
        os.makedirs(mdir)
        for item in sv["items"]:
            with open(os.path.join(mdir, item["path"]), "wb") as f:
                f.write(base64.b64decode(secret["data"][item["key"]]))
        mount = m["mountPath"].rstrip("/") + "/"
        args = [mdir + "/" + a[len(mount):] if a.startswith(mount) else a for a in args]
    assert "--aclfile" in args and not any(DEV_REDIS_PASSWORD in a for a in args), args
    port = svc.free_port()
    p = subprocess.Popen([server] + args + ["--port", str(port), "--bind", "127.0.0.1", "--dir", d],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop():
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    svc.defer(stop)
    deadline = time.monotonic() + 20
    while True:
        try:
            redis_cmd(port, "PING")
            return port
        except OSError:
            assert p.poll() is None, p.stdout.read()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)


@test
def the_redis_component_requires_its_acl_user():
    """The ACL file from the Secret: no anonymous access, the default user
    off, the user netbird-cp may PUBLISH and SUBSCRIBE on the bus channel
    and PING, nothing else (another channel, a key, FLUSHALL: NOPERM)."""
    objs = rendered("dev")
    pw = DEV_REDIS_PASSWORD
    port = start_manifest_redis(objs)
    assert redis_cmd(port, "PING").startswith("-NOAUTH"), "Redis answers without AUTH"
    assert redis_cmd(port, "AUTH", pw).startswith("-"), "the default user is on"
    assert redis_cmd(port, "AUTH", "netbird-cp", "wrong").startswith("-WRONGPASS")
    cfg = json.loads(management_json(objs)[0])
    prefix = {k.lower(): v for k, v in cfg["ControlPlane"].items()}.get("buschannelprefix", "netbird-cp")
    out = redis_session(port, ["AUTH", "netbird-cp", pw], ["PUBLISH", prefix + ":account-serial", "x"],
                        ["PING"], ["PUBLISH", "other:account-serial", "x"],
                        ["PUBLISH", prefix + ":other", "x"], ["FLUSHALL"],
                        ["SET", prefix + ":k", "v"], ["GET", prefix + ":k"], ["CONFIG", "GET", "*"],
                        ["SUBSCRIBE", prefix + ":account-serial"])
    assert out[0] == "+OK" and out[1].startswith(":") and out[2] == "+PONG", out
    for r in out[3:9]:
        assert r.startswith("-NOPERM"), out
    assert out[9] == "*3", out      # the subscription's confirmation


@test
def a_replica_uses_the_manifests_redis_url():
    """NB_CACHE_REDIS_ADDRESS as the Deployment composes it (user and
    password from the Secret) against the Redis component: the bus
    subscribes and publishes, /readyz is not degraded."""
    objs = rendered("dev")
    pw = DEV_REDIS_PASSWORD
    port = start_manifest_redis(objs)
    dsn, _ = svc.new_db()
    c = main_container(mgmt_deployment(objs))
    env = k8s.container_env(c, dict(secret_values(objs, dsn), REDIS_PASSWORD=pw))
    url = env["NB_CACHE_REDIS_ADDRESS"]
    assert url.startswith("redis://netbird-cp:%s@netbird-redis:6379" % pw), url
    env["NB_CACHE_REDIS_ADDRESS"] = url.replace("@netbird-redis:6379", "@127.0.0.1:%d" % port)
    s = svc.Server(svc.base_args(), env=env)
    deadline = time.monotonic() + 30
    while True:
        st, _, body = svc.http_json("GET", s.url("/readyz"))
        if st == 200 and body.get("status") == "ready":
            break
        assert time.monotonic() < deadline, (st, body)
        time.sleep(0.5)
    st, _, metrics = svc.http("GET", s.url("/metrics"))
    assert st == 200 and b"\nnetbird_cp_bus_connected 1" in metrics, metrics[-2000:]
    rc, _ = s.stop()
    assert rc == 0, s.stderr()


if __name__ == "__main__":
    sys.exit(svc.run_all())
