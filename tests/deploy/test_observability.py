"""deploy/observability: the alert rules, their promtool unit tests, the
Grafana dashboard and the generated Kubernetes objects (docs/monitoring.md),
checked against a live netbird-mgmt.

- `promtool check rules` accepts alerts.yml, `promtool test rules` passes
  alerts.test.yml, and the unit tests fail when a rule is broken;
- every metric (and every label in a matcher or a grouping) named by an
  alert expression, an alert annotation's query, a dashboard query or a
  dashboard variable is on the /metrics of a replica that runs with Redis
  and an IdP and has served an agent and a REST request; a misspelt name
  in a synthetic query is caught;
- the dashboard's structure: valid JSON, unique panel ids, grid positions,
  every panel has queries, the data source is the ${datasource} variable;
- deploy/k8s/components/monitoring/ is what gen-prometheusrule writes and
  renders with kubectl kustomize;
- a real Prometheus (Debian's) scraping a live replica runs every panel
  query and every rule without an error, panels draw data, nothing fires
  on a healthy replica, and NetbirdCPReadinessLost goes pending with the
  failing check when the replica loses readiness;
- netbird_cp_ready and netbird_cp_ready_failing follow /readyz, also on a
  replica held by a DataStoreEncryptionKey that does not match the data.
"""

import base64
import copy
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OBS = os.path.join(ROOT, "deploy", "observability")
ALERTS = os.path.join(OBS, "alerts.yml")
ALERTS_TEST = os.path.join(OBS, "alerts.test.yml")
DASHBOARD = os.path.join(OBS, "grafana", "netbird-cp.json")
GEN = os.path.join(OBS, "gen-prometheusrule")
COMPONENT = os.path.join(ROOT, "deploy", "k8s", "components", "monitoring")
sys.path.insert(0, os.path.join(HERE, "..", "agent"))
sys.path.insert(0, os.path.join(HERE, "..", "idp"))

import fixture  # noqa: E402
import svc  # noqa: E402
import testidp  # noqa: E402
from fixture import Deployment, wait_until  # noqa: E402
from nbagent import build_meta  # noqa: E402
from svc import test  # noqa: E402

# ---- a PromQL reader: enough to name the metrics and labels a query uses ---------------

# Series Prometheus makes itself, not the replica.
PROMETHEUS_SERIES = {"up"}
# Labels the scrape adds to every series (the Kubernetes service discovery
# of the Prometheus Operator adds namespace, pod, service, ...).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan", "atan2",
            # aggregations, which may be followed by a grouping before "("
            "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
            "quantile"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<num>(?:\d+(?:ms|[smhdwy]))+|0x[0-9a-fA-F]+|\d*\.?\d+(?:[eE][-+]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},@])
""", re.X)


class PromQLError(Exception):
    pass


def tokens(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise PromQLError("cannot read %r at %d: %r" % (expr, pos, expr[pos:pos + 20]))
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def unquote(s):
    if s[0] == "`":
        return s[1:-1]
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def names(expr):
    """(metrics, matchers, grouping) of a PromQL expression: metrics the
    metric names in it; matchers a list of (metric or None, label, op,
    value) from every {...}; grouping the label names of by/without/on/
    ignoring/group_left/group_right clauses."""
    toks = tokens(expr)
    metrics, matchers, grouping = set(), [], set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and text in GROUPING and nxt == "(":
            j = i + 2
            while j < len(toks) and toks[j][1] != ")":
                if toks[j][0] == "ident":
                    grouping.add(toks[j][1])
                elif toks[j][1] != ",":
                    raise PromQLError("unexpected %r in %s (...)" % (toks[j][1], text))
                j += 1
            i = j + 1
            continue
        if kind == "ident" and nxt == "(" and text not in KEYWORDS:
            i += 1                  # a function or an aggregation
            continue
        metric = None
        if kind == "ident" and text.lower() not in KEYWORDS:
            metric = text
            metrics.add(text)
            i += 1
            nxt = toks[i][1] if i < len(toks) else None
        elif kind == "ident":
            i += 1
            continue
        if nxt == "{" or (metric is None and text == "{"):
            j = i + 1 if metric is not None else i + 1
            while j < len(toks) and toks[j][1] != "}":
                if toks[j][1] == ",":
                    j += 1
                    continue
                if j + 2 >= len(toks) or toks[j][0] != "ident" or toks[j + 1][0] != "op" \
                        or toks[j + 2][0] != "str":
                    raise PromQLError("bad matcher in %r near %r" % (expr, toks[j][1]))
                label, op, value = toks[j][1], toks[j + 1][1], unquote(toks[j + 2][1])
                if label == "__name__" and op == "=":
                    metrics.add(value)
                    metric = value
                matchers.append((metric, label, op, value))
                j += 3
            i = j + 1
            continue
        if metric is None:
            i += 1
    return metrics, matchers, grouping


def series_name_ok(name, families, samples):
    """True when name is a series the replica exports: a sample name seen,
    or name_bucket/_sum/_count of a histogram family."""
    if name in PROMETHEUS_SERIES or name in samples:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and families.get(name[:-len(suffix)]) == "histogram":
            return True
    return False


def check_query(expr, families, samples, where):
    """Problems of one query against a scrape: unknown metrics, label
    names no series of its metrics carries, label values never seen.
    families: {family: type}; samples: {series name: {label: set(values)}}."""
    problems = []
    try:
        metrics, matchers, grouping = names(expr)
    except PromQLError as e:
        return ["%s: %s" % (where, e)]
    if not metrics:
        problems.append("%s: no metric in %r" % (where, expr))
    for m in sorted(metrics):
        if not series_name_ok(m, families, samples):
            problems.append("%s: metric %s is not exported (query %r)" % (where, m, expr))
    known = set(TARGET_LABELS)
    for m in metrics:
        known |= set(samples.get(m, {}))
    for metric, label, op, value in matchers:
        if label == "__name__" or label in TARGET_LABELS:
            continue
        have = samples.get(metric, {}) if metric else {}
        if metric in PROMETHEUS_SERIES:
            continue
        if metric and label not in have:
            problems.append("%s: %s has no label %s (query %r)" % (where, metric, label, expr))
            continue
        if "$" in value:
            continue                # a dashboard variable
        seen = have.get(label, set())
        if op == "=" and value not in seen:
            problems.append("%s: %s{%s=%r} never exported (values: %s)" % (where, metric, label, value,
                                                                             sorted(seen)))
        elif op == "=~" and re.fullmatch(r"[a-zA-Z0-9_]+(\|[a-zA-Z0-9_]+)*", value):
            for v in value.split("|"):
                if v not in seen:
                    problems.append("%s: %s{%s=~...%r...} never exported (values: %s)" %
                                    (where, metric, label, v, sorted(seen)))
    for label in sorted(grouping - known - {"le"}):
        problems.append("%s: grouping label %s is on none of %s" % (where, label, sorted(metrics)))
    if "le" in grouping and not any(m.endswith("_bucket") for m in metrics):
        problems.append("%s: grouping by le without a _bucket series" % where)
    return problems


# ---- the scrape --------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def parse_exposition(text):
    """({family: type}, {series name: {label: set(values)}}, {(name, labels): value})."""
    families, samples, values = {}, {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            families[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = LABEL.findall(m.group(2) or "")
        d = samples.setdefault(m.group(1), {})
        for k, v in labels:
            d.setdefault(k, set()).add(v)
        values[(m.group(1), tuple(sorted(labels)))] = float(m.group(3))
    return families, samples, values


def scrape(srv):
    status, _, body = svc.http("GET", srv.url("/metrics"))
    assert status == 200, status
    return body.decode()


def value(values, name, **labels):
    return values.get((name, tuple(sorted(labels.items()))))


# ---- what the files ask for ------------------------------------------------------------------

def load_alerts(path=ALERTS):
    with open(path) as f:
        return yaml.safe_load(f)


def alert_queries(doc):
    """[(where, expr)] of every rule expression and every netbird_cp_*
    query inside an annotation template."""
    out = []
    for g in doc["groups"]:
        for r in g["rules"]:
            name = r.get("alert") or r.get("record")
            out.append(("alert %s" % name, r["expr"]))
            for k, text in sorted(r.get("annotations", {}).items()):
                for q in re.findall(r'printf "((?:[^"\\]|\\.)*)"', text):
                    q = unquote('"' + q + '"')
                    if "netbird_cp_" in q or "process_" in q:
                        out.append(("alert %s annotation %s" % (name, k), q.replace("%q", '"x"')))
    return out


def load_dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def all_panels(d):
    for p in d["panels"]:
        yield p
        for q in p.get("panels", []):
            yield q


def dashboard_queries(d):
    out = []
    for p in all_panels(d):
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$__range", "1h")
            out.append(("panel %d %r %s" % (p["id"], p["title"], t["refId"]), expr))
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)", q)
        assert m, "variable %s: not label_values(selector, label): %r" % (v["name"], q)
        out.append(("variable %s" % v["name"], m.group(1)))
    return out


# What Grafana puts in place of its variables before a query runs (all
# replicas of the job the tests scrape).
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$namespace": ".*", "$job": "netbird-mgmt",
                "$instance": ".*"}


def grafana_expr(expr):
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, expr
    return expr


def promtool():
    exe = shutil.which("promtool")
    if not exe:
        raise svc.Skip("promtool not installed (deploy/install-deps installs the prometheus package)")
    return exe


def run(args, cwd=None):
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)
    return p.returncode, p.stdout + p.stderr


# ---- tests ---------------------------------------------------------------------------------------

@test
def promql_reader():
    # Names, labels and groupings come out; functions, keywords, label
    # names, durations and strings do not.
    m, mt, g = names('histogram_quantile(0.99, sum by (le, instance) (rate(netbird_cp_fanout_duration_seconds_bucket'
                     '{job=~"$job", namespace=~"$namespace"}[5m]))) > 1')
    assert m == {"netbird_cp_fanout_duration_seconds_bucket"}, m
    assert g == {"le", "instance"}, g
    assert [(x[1], x[2]) for x in mt] == [("job", "=~"), ("namespace", "=~")], mt
    m, mt, g = names('netbird_cp_store_pool_connections{state="busy"} / ignoring (state) netbird_cp_store_pool_size'
                     ' >= 0.9')
    assert m == {"netbird_cp_store_pool_connections", "netbird_cp_store_pool_size"}, m
    assert mt == [("netbird_cp_store_pool_connections", "state", "=", "busy")], mt
    assert g == {"state"}, g
    m, _, _ = names('absent(up{job="netbird-mgmt"} == 1) or time() - process_start_time_seconds offset 30m')
    assert m == {"up", "process_start_time_seconds"}, m
    m, mt, _ = names('{__name__="netbird_cp_sync_streams", instance="a"}')
    assert m == {"netbird_cp_sync_streams"}, m
    m, _, g = names('(sum by (job, namespace) (netbird_cp_sync_streams) == 0) and on (job, namespace) '
                    '(sum by (job, namespace) (netbird_cp_sync_streams offset 30m) > 0)')
    assert m == {"netbird_cp_sync_streams"} and g == {"job", "namespace"}, (m, g)

    # Against a known scrape: the right names pass, wrong ones are named.
    text = ("# TYPE netbird_cp_sync_streams gauge\nnetbird_cp_sync_streams 3\n"
            "# TYPE netbird_cp_fanout_duration_seconds histogram\n"
            'netbird_cp_fanout_duration_seconds_bucket{le="+Inf"} 0\n'
            "netbird_cp_fanout_duration_seconds_sum 0\nnetbird_cp_fanout_duration_seconds_count 0\n"
            "# TYPE netbird_cp_store_pool_connections gauge\n"
            'netbird_cp_store_pool_connections{state="busy"} 1\nnetbird_cp_store_pool_connections{state="idle"} 1\n')
    fam, smp, _ = parse_exposition(text)
    good = ['sum(netbird_cp_sync_streams{job=~"$job"})',
            'histogram_quantile(0.5, sum by (le) (rate(netbird_cp_fanout_duration_seconds_bucket[5m])))',
            'rate(netbird_cp_fanout_duration_seconds_count[5m])',
            'sum by (instance, state) (netbird_cp_store_pool_connections{state=~"busy|idle"})',
            'up{job="netbird-mgmt"} == 0']
    for q in good:
        assert check_query(q, fam, smp, "good") == [], (q, check_query(q, fam, smp, "good"))
    bad = {'sum(netbird_cp_sync_stream)': "metric netbird_cp_sync_stream is not exported",
           'rate(netbird_cp_fanout_duration_seconds_total[5m])': "netbird_cp_fanout_duration_seconds_total",
           'netbird_cp_sync_streams_bucket': "netbird_cp_sync_streams_bucket",
           'netbird_cp_store_pool_connections{stat="busy"}': "has no label stat",
           'netbird_cp_store_pool_connections{state="bussy"}': "never exported",
           'netbird_cp_store_pool_connections{state=~"busy|lent"}': "never exported",
           'sum by (statement) (netbird_cp_sync_streams)': "grouping label statement"}
    for q, needle in bad.items():
        problems = check_query(q, fam, smp, "bad")
        assert any(needle in p for p in problems), (q, problems)
    try:
        names('sum(rate(x[5m])) ; drop')
        raise AssertionError("an unreadable query was accepted")
    except PromQLError:
        pass


@test
def promtool_check_and_test_rules():
    exe = promtool()
    rc, out = run([exe, "check", "rules", ALERTS])
    assert rc == 0 and "SUCCESS" in out, out
    n_rules = sum(len(g["rules"]) for g in load_alerts()["groups"])
    assert ("%d rules found" % n_rules) in out, (n_rules, out)
    rc, out = run([exe, "test", "rules", ALERTS_TEST], cwd=OBS)
    assert rc == 0 and "SUCCESS" in out, out

    # The unit tests bite: a rule that never fires, and one with a wrong
    # `for`, each make them fail.
    with open(ALERTS) as f:
        rules = f.read()
    with open(ALERTS_TEST) as f:
        tests = f.read()
    for old, new in (("expr: netbird_cp_bus_connected == 0", "expr: netbird_cp_bus_connected == 2"),
                     ("/ ignoring (state) netbird_cp_store_pool_size >= 0.9\n        for: 5m",
                      "/ ignoring (state) netbird_cp_store_pool_size >= 0.9\n        for: 30s"),
                     ("expr: netbird_cp_ready == 0", "expr: netbird_cp_ready == 0 and netbird_cp_ready == 2")):
        assert old in rules, old
        d = tempfile.mkdtemp()
        svc.defer(shutil.rmtree, d, True)
        with open(os.path.join(d, "alerts.yml"), "w") as f:
            f.write(rules.replace(old, new, 1))
        with open(os.path.join(d, "alerts.test.yml"), "w") as f:
            f.write(tests)
        rc, out = run([exe, "test", "rules", "alerts.test.yml"], cwd=d)
        assert rc != 0 and "FAILED" in out, (new, out)

    # Every alert has a case where it fires, and one where it must not.
    with open(ALERTS_TEST) as f:
        cases = [c for t in yaml.safe_load(f)["tests"] for c in t.get("alert_rule_test", [])]
    for g in load_alerts()["groups"]:
        for r in g["rules"]:
            mine = [c for c in cases if c["alertname"] == r["alert"]]
            assert any(c.get("exp_alerts") for c in mine), "alerts.test.yml: %s never fires" % r["alert"]
            assert any(not c.get("exp_alerts") for c in mine), "alerts.test.yml: %s has no quiet case" % r["alert"]

    # Every rule: a severity and the three annotations, a runbook that
    # names a section of docs/monitoring.md which exists.
    with open(os.path.join(ROOT, "docs", "monitoring.md")) as f:
        doc = f.read()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", doc, re.M)}
    for g in load_alerts()["groups"]:
        assert g["name"].startswith("netbird-cp."), g["name"]
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("critical", "warning", "info"), r
            ann = r["annotations"]
            assert set(ann) == {"summary", "description", "runbook_url"}, r
            anchor = ann["runbook_url"].split("#", 1)[1]
            assert ann["runbook_url"] == "docs/monitoring.md#" + anchor, ann
            assert anchor in headings, "docs/monitoring.md has no section for %s (#%s)" % (r["alert"], anchor)
            assert anchor == r["alert"].lower(), (anchor, r["alert"])


@test
def dashboard_structure():
    d = load_dashboard()
    assert d["schemaVersion"] >= 36, d["schemaVersion"]
    assert d["uid"] and d["title"], d
    tvars = {v["name"]: v for v in d["templating"]["list"]}
    assert tvars["datasource"]["type"] == "datasource" and tvars["datasource"]["query"] == "prometheus", tvars
    for name in ("namespace", "job", "instance"):
        assert tvars[name]["type"] == "query", tvars[name]
        assert tvars[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, tvars[name]
    panels = list(all_panels(d))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids: %r" % ids
    cells = set()
    graphs = 0
    for p in panels:
        gp = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(gp), p["title"]
        assert gp["w"] > 0 and gp["h"] > 0 and 0 <= gp["x"] and gp["x"] + gp["w"] <= 24, (p["title"], gp)
        # No two panels share a grid cell.
        for yy in range(gp["y"], gp["y"] + gp["h"]):
            for xx in range(gp["x"], gp["x"] + gp["w"]):
                assert (xx, yy) not in cells, "panel %r overlaps another at %d,%d" % (p["title"], xx, yy)
                cells.add((xx, yy))
        if p["type"] == "row":
            assert not p.get("targets"), p["title"]
            continue
        graphs += 1
        assert p["type"] in ("timeseries", "stat", "gauge", "table", "bargauge"), p["type"]
        assert p["title"] and p.get("description"), p
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (p["title"], p["datasource"])
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), (p["title"], refs)
        for t in p["targets"]:
            assert t["expr"].strip(), (p["title"], t)
            assert t["datasource"] == p["datasource"], (p["title"], t)
            # Every query follows the variables (up has no instance of ours
            # to filter on before it is scraped: namespace and job only).
            assert 'job=~"$job"' in t["expr"] and 'namespace=~"$namespace"' in t["expr"], (p["title"], t["expr"])
            if "up{" not in t["expr"]:
                assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
    assert graphs >= 20, graphs
    # Every query parses: promtool checks them as recording rules.
    exe = promtool()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": "dashboard:q%d" % i, "expr": grafana_expr(expr)}
        for i, (_, expr) in enumerate(dashboard_queries(d))]}]}
    tmp = tempfile.mkdtemp()
    svc.defer(shutil.rmtree, tmp, True)
    path = os.path.join(tmp, "dashboard-rules.yml")
    with open(path, "w") as f:
        yaml.safe_dump(rules, f)
    rc, out = run([exe, "check", "rules", path])
    assert rc == 0, "a dashboard query does not parse:\n" + out
    # ... and a broken one would not.
    rules["groups"][0]["rules"].append({"record": "dashboard:broken", "expr": "sum by (le (rate(x[5m]))"})
    with open(path, "w") as f:
        yaml.safe_dump(rules, f)
    rc, out = run([exe, "check", "rules", path])
    assert rc != 0, out
    # What the brief of the dashboard asks to see, each at least once.
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for m in ("up", "netbird_cp_ready", "netbird_cp_sync_streams", "netbird_cp_logins_total",
              "netbird_cp_sync_opens_total", "netbird_cp_fanout_duration_seconds_bucket",
              "netbird_cp_fanout_maps_pushed_total", "netbird_cp_bus_connected", "netbird_cp_bus_lag_seconds_bucket",
              "netbird_cp_bus_reconnects_total", "netbird_cp_store_pool_connections", "netbird_cp_store_pool_size",
              "netbird_cp_store_query_duration_seconds_bucket", "netbird_cp_store_query_errors_total",
              "netbird_cp_http_requests_total", "netbird_cp_http_request_duration_seconds_bucket",
              "netbird_cp_jwt_tokens_total", "netbird_cp_proxy_streams", "process_resident_memory_bytes",
              "process_open_fds"):
        assert re.search(r"\b%s\b" % re.escape(m), exprs), "no panel shows " + m


@test
def generated_objects_up_to_date():
    rc, out = run([sys.executable, GEN, "--check"])
    assert rc == 0, "deploy/k8s/components/monitoring is out of date:\n" + out
    with open(os.path.join(COMPONENT, "prometheusrule.yaml")) as f:
        rule = yaml.safe_load(f)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule", rule
    assert rule["spec"]["groups"] == load_alerts()["groups"], "PrometheusRule groups differ from alerts.yml"
    with open(os.path.join(COMPONENT, "grafana-dashboard.yaml")) as f:
        cm = yaml.safe_load(f)
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["labels"]["grafana_dashboard"] == "1", cm["metadata"]
    assert json.loads(cm["data"]["netbird-cp.json"]) == load_dashboard()

    # A changed source makes --check fail, and a run brings it back.
    d = tempfile.mkdtemp()
    svc.defer(shutil.rmtree, d, True)
    for rel in ("deploy/observability/alerts.yml", "deploy/observability/grafana/netbird-cp.json",
                "deploy/k8s/components/monitoring/prometheusrule.yaml",
                "deploy/k8s/components/monitoring/grafana-dashboard.yaml"):
        os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
        shutil.copy(os.path.join(ROOT, rel), os.path.join(d, rel))
    with open(os.path.join(d, "deploy/observability/alerts.yml"), "a") as f:
        f.write("      - alert: Extra\n        expr: vector(1)\n")
    rc, out = run([sys.executable, GEN, "--check", "--root", d])
    assert rc == 1 and "prometheusrule.yaml" in out and "grafana-dashboard.yaml" not in out, out
    rc, out = run([sys.executable, GEN, "--root", d])
    assert rc == 0 and "wrote deploy/k8s/components/monitoring/prometheusrule.yaml" in out, out
    with open(os.path.join(d, "deploy/k8s/components/monitoring/prometheusrule.yaml")) as f:
        extra = yaml.safe_load(f)
    assert extra["spec"]["groups"][-1]["rules"][-1] == {"alert": "Extra", "expr": "vector(1)"}, extra

    # The component renders (kubectl kustomize from a kustomization that uses it).
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("# kubectl not installed: the component is not rendered")
        return
    k = tempfile.mkdtemp()
    svc.defer(shutil.rmtree, k, True)
    with open(os.path.join(k, "kustomization.yaml"), "w") as f:
        f.write("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: netbird\n"
                "components:\n  - %s\n" % os.path.relpath(COMPONENT, k))
    rc, out = run([kubectl, "kustomize", k])
    assert rc == 0, out
    objs = [o for o in yaml.safe_load_all(out) if o]
    kinds = sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objs)
    assert kinds == [("ConfigMap", "netbird-cp-grafana-dashboard", "netbird"),
                     ("PrometheusRule", "netbird-cp", "netbird")], kinds


def live_server():
    """A replica with Redis and an IdP that has served a registration, a
    Sync, a fan-out, a failed login and REST requests; returns its scrape."""
    svc.needs_db()
    svc.needs_redis()
    idp = testidp.TestIdP()
    svc.defer(idp.stop)
    dep = Deployment(config={"HttpConfig": idp.http_config()})
    srv = dep.start("--redis-url", svc.REDIS_URL, "--bus-channel-prefix", "obs-" + dep.db[-12:])
    wait_until(lambda: value(parse_exposition(scrape(srv))[2], "netbird_cp_bus_connected") == 1, timeout=15,
               what="bus subscribed")
    wait_until(lambda: (value(parse_exposition(scrape(srv))[2], "netbird_cp_jwt_signing_keys") or 0) >= 1,
               timeout=15, what="IdP keys loaded")
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta("obs-a"))
    s = a.sync(meta=build_meta("obs-a"))
    s.next(timeout=15)
    b = dep.agent()
    b.register(dep.setup_key, meta=build_meta("obs-b"))
    s.wait_for(lambda m: b.pub_b64 in {p.wgPubKey for p in m.NetworkMap.remotePeers}, timeout=15)
    auth = {"Authorization": "Token " + dep.admin_token}
    st, _, _ = svc.http("GET", srv.url("/api/peers"), headers=auth)
    assert st == 200, st
    st, _, _ = svc.http("GET", srv.url("/api/peers"), headers={"Authorization": "Bearer not-a-jwt"})
    assert st == 401, st
    wait_until(lambda: (value(parse_exposition(scrape(srv))[2], "netbird_cp_bus_lag_seconds_count") or 0) >= 1,
               timeout=15, what="a bus message received")
    return dep, srv, scrape(srv)


@test
def every_queried_metric_is_exported():
    dep, srv, text = live_server()
    families, samples, values = parse_exposition(text)
    assert value(values, "netbird_cp_ready") == 1, text
    queries = alert_queries(load_alerts()) + dashboard_queries(load_dashboard())
    assert len(queries) > 60, len(queries)
    problems = []
    for where, expr in queries:
        problems += check_query(expr, families, samples, where)
    assert not problems, "\n".join(problems)

    # Every family the replica exports is on the dashboard (a new metric
    # gets a panel, or it is listed here with why not).
    not_shown = {"process_virtual_memory_bytes"}        # RSS is the one that matters
    shown = set()
    for _, expr in dashboard_queries(load_dashboard()):
        for m in names(expr)[0]:
            shown.add(re.sub(r"_(bucket|sum|count)$", "", m) if m not in families else m)
    missing = sorted(set(families) - shown - not_shown)
    assert not missing, "families on /metrics that no panel shows: %s" % missing

    # The same check on a copy with one name misspelt fails and names it.
    d = load_dashboard()
    broken = copy.deepcopy(d)
    for p in broken["panels"]:
        for t in p.get("targets", []):
            t["expr"] = t["expr"].replace("netbird_cp_bus_connected", "netbird_cp_bus_connnected")
    bad = []
    for where, expr in dashboard_queries(broken):
        bad += check_query(expr, families, samples, where)
    assert bad and all("netbird_cp_bus_connnected" in p for p in bad), bad


class Prometheus:
    """/usr/bin/prometheus on 127.0.0.1 scraping targets as job netbird-mgmt
    every second, with alerts.yml loaded and evaluated every second."""

    def __init__(self, targets):
        exe = shutil.which("prometheus")
        if not exe:
            raise svc.Skip("prometheus not installed (deploy/install-deps installs the prometheus package)")
        self.dir = tempfile.mkdtemp()
        svc.defer(shutil.rmtree, self.dir, True)
        shutil.copy(ALERTS, os.path.join(self.dir, "alerts.yml"))
        cfg = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
               "rule_files": ["alerts.yml"],
               "scrape_configs": [{"job_name": "netbird-mgmt", "static_configs": [{"targets": targets}]}]}
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as f:
            yaml.safe_dump(cfg, f)
        self.port = svc.free_port()
        self.log = open(os.path.join(self.dir, "prometheus.log"), "w")
        self.proc = subprocess.Popen([exe, "--config.file", os.path.join(self.dir, "prometheus.yml"),
                                      "--storage.tsdb.path", os.path.join(self.dir, "data"),
                                      "--web.listen-address", "127.0.0.1:%d" % self.port,
                                      "--log.level", "warn"], stdout=self.log, stderr=subprocess.STDOUT)
        svc.defer(self.stop)
        wait_until(self.healthy, timeout=30, what="prometheus ready")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()

    def healthy(self):
        assert self.proc.poll() is None, "prometheus exited:\n" + open(self.log.name).read()[-3000:]
        try:
            return svc.http("GET", "http://127.0.0.1:%d/-/ready" % self.port, timeout=2)[0] == 200
        except OSError:
            return False

    def api(self, path, **params):
        import urllib.parse
        url = "http://127.0.0.1:%d/api/v1/%s?%s" % (self.port, path, urllib.parse.urlencode(params))
        st, _, body = svc.http_json("GET", url)
        assert body["status"] == "success", (path, params, st, body)
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]


@test
def prometheus_scrapes_and_evaluates():
    """A real Prometheus scraping a live replica: every dashboard query runs
    without an error and (filters aside) returns series; every rule
    evaluates without an error; nothing fires on a healthy replica; a
    replica that loses readiness makes NetbirdCPReadinessLost pending with
    the failing check in its description."""
    dep, srv, _ = live_server()
    prom = Prometheus(["127.0.0.1:%d" % srv.http_port])
    wait_until(lambda: prom.query('up{job="netbird-mgmt"} == 1'), timeout=30, what="the replica scraped")
    # rate() and friends need two samples in their window; and one more
    # request so the REST series move between them.
    wait_until(lambda: prom.query('count_over_time(netbird_cp_sync_streams[1m]) >= 3'), timeout=30,
               what="three scrapes")
    svc.http("GET", srv.url("/api/peers"), headers={"Authorization": "Token " + dep.admin_token})

    empty = []
    for where, expr in dashboard_queries(load_dashboard()):
        if where.startswith("variable "):
            continue
        res = prom.query(grafana_expr(expr))
        # A filter (== 1) is empty while nothing fails; everything else
        # draws at least one series on a replica that served all of it.
        if not res and " == " not in expr:
            empty.append("%s: %s" % (where, expr))
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    # Every rule evaluated at least once, none with an error.
    wait_until(lambda: all(r.get("lastEvaluation", "").startswith("2") and
                           not r["lastEvaluation"].startswith("0001")
                           for g in prom.api("rules")["groups"] for r in g["rules"]),
               timeout=30, what="every rule evaluated")
    groups = prom.api("rules")["groups"]
    n = 0
    for g in groups:
        for r in g["rules"]:
            n += 1
            assert r["health"] == "ok", (r["name"], r.get("lastError"))
    assert n == sum(len(g["rules"]) for g in load_alerts()["groups"]), n
    active = prom.api("alerts")["alerts"]
    assert active == [], "alerts on a healthy replica: %r" % active

    # Readiness lost: the alert goes pending (it fires after 2 minutes)
    # naming the failing check.
    row = dep.sql("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations) "
                  "RETURNING version, name, checksum")
    svc.defer(lambda: dep.sql("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s) "
                              "ON CONFLICT DO NOTHING", row[0]))

    def readiness_alert():
        return [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "NetbirdCPReadinessLost"]
    alerts = wait_until(readiness_alert, timeout=30, what="NetbirdCPReadinessLost pending")
    a = alerts[0]
    assert a["state"] == "pending", a
    assert a["labels"]["instance"] == "127.0.0.1:%d" % srv.http_port and a["labels"]["severity"] == "warning", a
    wait_until(lambda: "(failing check: migrations)" in readiness_alert()[0]["annotations"]["description"],
               timeout=15, what="the failing check in the description")
    assert prom.query('netbird_cp_ready_failing{check="migrations"} == 1'), "the gauge"


@test
def ready_gauge_follows_readyz():
    svc.needs_db()
    dep = Deployment()
    srv = dep.start()

    def state():
        st, _, body = svc.http_json("GET", srv.url("/readyz"))
        _, _, v = parse_exposition(scrape(srv))
        return st, body, v

    st, body, v = state()
    assert st == 200, (st, body)
    assert value(v, "netbird_cp_ready") == 1, v
    assert value(v, "netbird_cp_ready_failing", check="store") == 0, v
    assert value(v, "netbird_cp_ready_failing", check="migrations") == 0, v
    # Every gate the checker runs, and the drain, from the first scrape.
    for check in ("data_key", "bus", "draining"):
        assert value(v, "netbird_cp_ready_failing", check=check) == 0, (check, v)

    # A migration the database no longer records: pending, so not ready.
    row = dep.sql("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations) "
                  "RETURNING version, name, checksum")
    assert len(row) == 1, row
    svc.defer(lambda: dep.sql("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s) "
                              "ON CONFLICT DO NOTHING", row[0]))
    wait_until(lambda: state()[0] == 503, timeout=15, what="/readyz 503")
    # The checker runs every 2 s; /readyz and the gauge read the same result.
    wait_until(lambda: value(state()[2], "netbird_cp_ready") == 0, timeout=15, what="netbird_cp_ready 0")
    st, body, v = state()
    assert st == 503 and body["failed"] == "migrations", (st, body)
    assert value(v, "netbird_cp_ready") == 0, v
    assert value(v, "netbird_cp_ready_failing", check="migrations") == 1, v
    assert value(v, "netbird_cp_ready_failing", check="store") == 0, v

    dep.sql("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)", row[0])
    wait_until(lambda: value(state()[2], "netbird_cp_ready") == 1, timeout=15, what="netbird_cp_ready 1 again")
    st, body, v = state()
    assert st == 200, (st, body)
    assert value(v, "netbird_cp_ready_failing", check="migrations") == 0, v


@test
def held_replica_reports_its_data_key_gate():
    """A replica whose DataStoreEncryptionKey is not the data's holds (only
    the HTTP probes and /metrics, mgmt-datakey.c): /metrics names the gate."""
    svc.needs_db()
    dep = Deployment()
    srv = dep.start()           # records the deployment's key
    wait_until(lambda: dep.sql("SELECT count(*) FROM data_keys WHERE current")[0][0] == 1, timeout=15,
               what="the data key recorded")
    fixture.stop_server(srv)
    port = svc.free_port()
    env = dict(dep.env(), NB_MGMT_DATA_STORE_ENCRYPTION_KEY=base64.b64encode(secrets.token_bytes(32)).decode())
    held = svc.Server(["--listen-address", "127.0.0.1", "--port", "0", "--http-port", str(port), "--config=",
                       "--shutdown-timeout", "2s"], env=env, wait=False)
    held.http_port = port
    svc.defer(fixture.stop_server, held)
    # Bound once it says it waits (svc.http raises while nothing listens).
    held.wait_log(lambda o: o.get("msg", "").startswith("waiting for the data key check"))
    st, _, body = svc.http_json("GET", held.url("/readyz"))
    assert st == 503 and body["failed"] == "data_key", (st, body)
    _, _, v = parse_exposition(scrape(held))
    assert value(v, "netbird_cp_ready") == 0, v
    assert value(v, "netbird_cp_ready_failing", check="data_key") == 1, v
    assert value(v, "netbird_cp_ready_failing", check="store") == 0, v
    assert value(v, "netbird_cp_ready_failing", check="migrations") == 0, v


if __name__ == "__main__":
    sys.exit(svc.run_all())
