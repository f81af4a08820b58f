#!/usr/bin/env python3
"""The Python checks of scripts/check-deploy (structure of deploy/, metric names, generated files
for promtool). Run by scripts/check-deploy, one check per call:

    check_deploy.py ROOT WORK CHECK

ROOT is the repository, WORK a scratch directory (generated files go there: dashboard-rules.yml,
dashboard-exprs.txt, test-config/prometheus.yml, k8s-config.toml, k8s-scrape-static.yml). CHECK is
one of: parse, names, alerts, dashboard, testconfig, compose, k8s, dockerfile, k8s-scrape-static.
Prints a one-line summary; on failure prints every error and exits 1. Needs Python 3.11+ (tomllib)
and PyYAML.
"""
import json, os, re, sys, tomllib
import yaml

root = work = deploy = ""  # set by main() from the command line
errors = []
def err(msg): errors.append(msg)
def load_yaml(rel):
    with open(os.path.join(deploy, rel)) as f:
        return yaml.safe_load(f)
def load_yaml_all(rel):
    with open(os.path.join(deploy, rel)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

# ------------------------------------------------------------------ metric names (names.rs)
def metric_names():
    src = open(os.path.join(root, "src/telemetry/names.rs")).read()
    # a `///` block documents the consts that follow it, up to the next block
    names, histograms, doc, in_doc = set(), set(), [], False
    for line in src.splitlines():
        s = line.strip()
        if s.startswith("///"):
            doc = doc + [s] if in_doc else [s]
            in_doc = True
            continue
        in_doc = False
        m = re.match(r'pub const \w+: &str = "([a-z0-9_]+)";', s)
        if m:
            names.add(m.group(1))
            # a doc comment "Histogram…" covers the consts right below it
            if any(d.startswith("/// Histogram") for d in doc):
                histograms.add(m.group(1))
            continue
        if s and not s.startswith("//"):
            doc = []
    allowed = set(names)
    for h in histograms:
        allowed |= {h + "_bucket", h + "_sum", h + "_count"}
    return names, histograms, allowed

def check_names(where, expr, allowed):
    for tok in re.findall(r"\bnekhebet_[a-z0-9_]+\b", expr):
        if tok not in allowed:
            err(f"{where}: metric {tok} is not in src/telemetry/names.rs")
    for h in HISTS:
        if re.search(rf"\b{h}\b(?!_)", expr):
            err(f"{where}: histogram {h} used without _bucket/_sum/_count")

NAMES, HISTS, ALLOWED = set(), set(), set()  # set by main() from src/telemetry/names.rs

# ------------------------------------------------------------------ grafana expressions
GRAFANA_VARS = [("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "1h"),
                ("${instance:regex}", ".*"), ("${instance}", ".*"), ("$instance", ".*")]
def grafana_exprs(dash):
    out = []
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["refId"], t["expr"]))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    return out
def substitute(expr):
    for k, v in GRAFANA_VARS:
        expr = expr.replace(k, v)
    return expr

# ------------------------------------------------------------------ the checks (one per call)

def check_parse():
    n = 0
    for d, _, files in os.walk(deploy):
        for f in sorted(files):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)
            try:
                if f.endswith((".yml", ".yaml")):
                    with open(p) as fh:
                        list(yaml.safe_load_all(fh))
                    n += 1
                elif f.endswith(".json"):
                    with open(p) as fh:
                        json.load(fh)
                    n += 1
            except Exception as e:
                err(f"{rel}: {e}")
    print(f"{n} YAML/JSON files parsed")


def check_metric_names():
    exprs = []
    for rel in ["prometheus/alerts.yml", "prometheus/test-config/alerts.yml"]:
        for g in load_yaml(rel)["groups"]:
            for r in g["rules"]:
                exprs.append((f"{rel}:{r.get('alert') or r.get('record')}", r["expr"]))
    dash = json.load(open(os.path.join(deploy, "grafana/dashboards/nekhebet.json")))
    for title, ref, e in grafana_exprs(dash):
        exprs.append((f"dashboard:{title}/{ref}", e))
    exprs.append(("dashboard:templating", json.dumps(dash["templating"])))
    used = set()
    for where, e in exprs:
        check_names(where, e, ALLOWED)
        used |= set(re.findall(r"\bnekhebet_[a-z0-9_]+\b", e))
    base_used = {u for u in used if u in NAMES} | {h for h in HISTS if any(u.startswith(h + "_") for u in used)}
    unused = sorted(NAMES - base_used)
    print(f"{len(exprs)} expressions use {len(used)} distinct series names, all from names.rs")
    if unused:
        err(f"metrics of names.rs on no dashboard panel and in no rule: {', '.join(unused)}")


def check_alerts():
    groups = load_yaml("prometheus/alerts.yml")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    need = {"NekhebetConsumerLagGrowing", "NekhebetNoCommitWhileLagging", "NekhebetDeadLetterRateHigh",
            "NekhebetReplayRateHigh", "NekhebetLmdbMapNearlyFull", "NekhebetWorkerDown"}
    have = {r.get("alert") for r in rules}
    for a in sorted(need - have):
        err(f"alerts.yml: missing alert {a}")
    for r in rules:
        a = r.get("alert")
        ann = r.get("annotations", {})
        for k in ("summary", "description", "runbook"):
            if not ann.get(k):
                err(f"alerts.yml: {a} has no {k} annotation")
        rb = ann.get("runbook", "")
        if rb and rb != f"deploy/README.md#{a.lower()}":
            err(f"alerts.yml: {a}: runbook should be deploy/README.md#{a.lower()}, is {rb}")
        if "severity" not in r.get("labels", {}):
            err(f"alerts.yml: {a} has no severity label")
    readme = open(os.path.join(deploy, "README.md")).read()
    for r in rules:
        if f"### {r['alert']}" not in readme:
            err(f"deploy/README.md: no '### {r['alert']}' section (the runbook link target)")
    # every alert has at least one unit test that expects it to fire
    tests = load_yaml("prometheus/alerts_test.yml")
    fired = {t["alertname"] for tc in tests["tests"] for t in tc.get("alert_rule_test", []) if t.get("exp_alerts")}
    for a in sorted(have - fired):
        err(f"alerts_test.yml: no test where {a} fires")
    # the test copy of the DLQ alert (tests/prometheus.rs) must stay the production expression
    test_rules = {r["alert"]: r for g in load_yaml("prometheus/test-config/alerts.yml")["groups"] for r in g["rules"]}
    prod = {r["alert"]: r for r in rules}
    def shape(e):
        e = re.sub(r"\[[0-9]+[smhd]\]", "[W]", e)
        e = re.sub(r">\s*[0-9.e+-]+\s*$", "> T", e.strip())
        return " ".join(e.split())
    for a, r in test_rules.items():
        if a not in prod:
            err(f"test-config/alerts.yml: {a} is not a production alert")
        elif shape(r["expr"]) != shape(prod[a]["expr"]):
            err(f"test-config/alerts.yml: {a} differs from the production rule beyond window/threshold:\n  {shape(r['expr'])}\n  {shape(prod[a]['expr'])}")
    print(f"{len(rules)} alerts, each with summary/description/runbook, a README section and a firing unit test")


def check_dashboard():
    dash = json.load(open(os.path.join(deploy, "grafana/dashboards/nekhebet.json")))
    ds = load_yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    uids = {d["uid"] for d in ds}
    ids = set()
    def walk(panels):
        for p in panels:
            if p["id"] in ids:
                err(f"dashboard: duplicate panel id {p['id']}")
            ids.add(p["id"])
            if "gridPos" not in p:
                err(f"dashboard: panel {p.get('title')} has no gridPos")
            if p.get("type") != "row":
                uid = (p.get("datasource") or {}).get("uid")
                if uid not in uids:
                    err(f"dashboard: panel {p.get('title')} uses datasource uid {uid!r}, provisioned: {sorted(uids)}")
            walk(p.get("panels", []))
    walk(dash["panels"])
    exprs = grafana_exprs(dash)
    titles = " | ".join(p.get("title", "") for p in dash["panels"]).lower()
    for want in ["outcome", "lag per partition", "stage latency", "batch size", "dead-letter", "replay",
                 "rejections", "postgresql pool", "lmdb", "last commit age", "retries"]:
        if want not in titles:
            err(f"dashboard: no panel about {want!r}")
    text = json.dumps(dash)
    for want in ["nekhebet_stage_duration_seconds_bucket", "histogram_quantile(0.5", "histogram_quantile(0.99"]:
        if want not in text:
            err(f"dashboard: {want} not used")
    # dashboard expressions as recording rules, for `promtool check rules`
    rules = [{"record": f"dashboard:expr_{i}", "expr": substitute(e)} for i, (_, _, e) in enumerate(exprs)]
    tmpl = dash["templating"]["list"]
    with open(os.path.join(work, "dashboard-rules.yml"), "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)
    with open(os.path.join(work, "dashboard-exprs.txt"), "w") as f:
        for (t, ref, _), r in zip(exprs, rules):
            f.write(f"{t} [{ref}]: {r['expr']}\n")
    print(f"{len(ids)} panels, {len(exprs)} expressions, {len(tmpl)} template variables; datasource uid(s) {sorted(uids)}")


def check_testconfig():
    src = open(os.path.join(deploy, "prometheus/test-config/prometheus.yml")).read()
    if "__WORKER_TARGET__" not in src:
        err("test-config/prometheus.yml: no __WORKER_TARGET__ placeholder (tests/prometheus.rs replaces it)")
    if "__SERVE_TARGET__" not in src:
        err("test-config/prometheus.yml: no __SERVE_TARGET__ placeholder (tests/prometheus.rs replaces it)")
    cfg = yaml.safe_load(src)
    g = cfg["global"]
    if g.get("scrape_interval") != "1s" or g.get("evaluation_interval") != "1s":
        err("test-config/prometheus.yml: scrape and evaluation intervals must be 1s")
    if "__TEST_CONFIG_DIR__" not in src:
        err("test-config/prometheus.yml: no __TEST_CONFIG_DIR__ placeholder for its rule files")
    d = os.path.join(work, "test-config")
    os.makedirs(d, exist_ok=True)
    here = os.path.join(deploy, "prometheus/test-config")
    open(os.path.join(d, "prometheus.yml"), "w").write(
        src.replace("__WORKER_TARGET__", "127.0.0.1:9187").replace("__SERVE_TARGET__", "127.0.0.1:8080")
        .replace("__TEST_CONFIG_DIR__", here))
    print(f"test config written with targets 127.0.0.1:9187, 127.0.0.1:8080 and rule files under {here}")


def check_compose():
    c = load_yaml("docker-compose.yml")
    s = c["services"]
    for want in ["kafka", "topics", "postgres", "migrate", "ingest-1", "ingest-2", "serve", "producer", "prometheus", "grafana"]:
        if want not in s:
            err(f"compose: no service {want}")
    if not errors:
        if not s["kafka"]["image"].startswith("apache/kafka:4"):
            err("compose: kafka must be apache/kafka 4.x")
        if "broker,controller" not in str(s["kafka"]["environment"].get("KAFKA_PROCESS_ROLES")):
            err("compose: kafka is not a KRaft broker+controller")
        pg = s["postgres"]["image"].split(":")[1]
        if int(pg.split(".")[0]) < 16:
            err("compose: PostgreSQL must be 16+")
        if s["migrate"]["command"] != ["migrate"]:
            err("compose: migrate must run `nekhebet-store migrate`")
        topics = " ".join(s["topics"]["command"]) if isinstance(s["topics"]["command"], list) else s["topics"]["command"]
        for want in ["--partitions 6", "nekhebet.events.dlq", "nekhebet.events"]:
            if want not in topics:
                err(f"compose: topics job lacks {want!r}")
        vols = []
        for w in ["ingest-1", "ingest-2"]:
            svc = s[w]
            if svc.get("command") != ["ingest"]:
                err(f"compose: {w} must run `ingest`")
            lm = [v for v in svc.get("volumes", []) if v.endswith(":/var/lib/nekhebet/lmdb")]
            if len(lm) != 1:
                err(f"compose: {w} needs exactly one volume at /var/lib/nekhebet/lmdb")
            vols += [v.split(":")[0] for v in lm]
            env = svc.get("environment", {})
            for k in ["NEKHEBET_POSTGRES__URL", "NEKHEBET_KAFKA__BROKERS", "NEKHEBET_KAFKA__TOPICS", "NEKHEBET_KAFKA__GROUP_ID"]:
                if k not in env:
                    err(f"compose: {w} lacks {k}")
            if not str(env.get("NEKHEBET_TELEMETRY__LISTEN", "")).startswith("0.0.0.0:9187"):
                err(f"compose: {w} must listen on 0.0.0.0:9187 for Prometheus")
            dep = svc.get("depends_on", {})
            for d in ["migrate", "topics"]:
                if dep.get(d, {}).get("condition") != "service_completed_successfully":
                    err(f"compose: {w} must wait for {d} to complete")
            if not str(svc.get("stop_grace_period", "")).endswith("s") or int(str(svc["stop_grace_period"])[:-1]) <= 30:
                err(f"compose: {w} stop_grace_period must exceed shutdown.timeout_ms (30 s)")
        if len(set(vols)) != 2:
            err(f"compose: the two workers must not share an LMDB volume: {vols}")
        for v in vols:
            if v not in (c.get("volumes") or {}):
                err(f"compose: volume {v} is not declared")
        sv = s["serve"]
        if sv.get("command") != ["serve"]:
            err("compose: serve must run `serve`")
        if not any(v.startswith(f"{vols[0]}:") for v in sv.get("volumes", [])) if vols else True:
            err("compose: serve must read ingest-1's LMDB volume (a reader beside its writer)")
        if any(not str(p).startswith("127.0.0.1:") for p in sv.get("ports", [])):
            err("compose: serve allows anonymous reads inside the network: publish it on loopback only")
        cmd = s["producer"]["command"]
        want = ["produce", "--topic", "nekhebet.events", "--count", "100000", "--rate", "2000",
                "--duplicate-ratio", "0.02", "--replay-ratio", "0.01", "--poison-ratio", "0.005"]
        if [str(x) for x in cmd] != want:
            err(f"compose: producer command is {cmd}, expected {want}")
        for name, svc in s.items():
            for d in (svc.get("depends_on") or {}):
                if d not in s:
                    err(f"compose: {name} depends on unknown service {d}")
        # mounted files exist (relative to deploy/)
        for name, svc in s.items():
            for v in svc.get("volumes", []):
                src = v.split(":")[0]
                if src.startswith("./") and not os.path.exists(os.path.join(deploy, src)):
                    err(f"compose: {name} mounts {src}, which does not exist")
        prom = load_yaml("prometheus/prometheus.yml")
        targets = [t for sc in prom["scrape_configs"] if sc["job_name"] == "nekhebet-store"
                   for st in sc.get("static_configs", []) for t in st["targets"]]
        if sorted(targets) != ["ingest-1:9187", "ingest-2:9187", "serve:8080"]:
            err(f"prometheus.yml: job nekhebet-store should scrape both workers and serve, scrapes {targets}")
        if "alerts.yml" not in prom.get("rule_files", []):
            err("prometheus.yml: alerts.yml is not loaded")
        gv = [v for v in s["grafana"].get("volumes", [])]
        if not any("provisioning" in v for v in gv) or not any("dashboards" in v for v in gv):
            err("compose: grafana must mount the provisioning and dashboards folders")
        prov = load_yaml("grafana/provisioning/dashboards/nekhebet.yml")
        path = prov["providers"][0]["options"]["path"]
        if not any(v.split(":")[1] == path for v in gv if v.startswith("./grafana/dashboards")):
            err(f"grafana: dashboards provider reads {path}, which compose does not mount")
    print(f"{len(s)} services; workers use LMDB volumes {sorted(set(vols)) if not errors else '?'}")


def check_k8s():
    docs = []
    for f in sorted(os.listdir(os.path.join(deploy, "k8s"))):
        if f.endswith((".yaml", ".yml")) and f not in ("kustomization.yaml", "prometheus-scrape.yml"):
            for d in load_yaml_all(f"k8s/{f}"):
                for k in ("apiVersion", "kind", "metadata"):
                    if k not in d:
                        err(f"k8s/{f}: a document without {k}")
                docs.append((f, d))
    kinds = {}
    for f, d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    kust = load_yaml("k8s/kustomization.yaml")
    listed = set(kust["resources"])
    files = {f for f, _ in docs}
    if listed != files:
        err(f"k8s/kustomization.yaml lists {sorted(listed)}, the folder has {sorted(files)}")
    for want in ["StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"]:
        if want not in kinds:
            err(f"k8s: no {want}")
    if errors:
        print("; ".join(errors)); sys.exit(1)
    sts = kinds["StatefulSet"][0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    labels = spec["template"]["metadata"]["labels"]
    if spec["selector"]["matchLabels"].items() - labels.items():
        err("k8s: StatefulSet selector does not match its pod labels")
    vct = [v["metadata"]["name"] for v in spec.get("volumeClaimTemplates", [])]
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    if "lmdb" not in vct or mounts.get("lmdb") != "/var/lib/nekhebet/lmdb":
        err("k8s: the LMDB directory must be a volumeClaimTemplate mounted at /var/lib/nekhebet/lmdb")
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        p = c.get(probe, {}).get("httpGet", {})
        port = p.get("port")
        ports = {pp.get("name"): pp["containerPort"] for pp in c.get("ports", [])}
        if p.get("path") != path or ports.get(port, port) != 9187:
            err(f"k8s: {probe} must GET {path} on port 9187")
    sc = c.get("securityContext", {})
    psc = pod.get("securityContext", {})
    if not psc.get("runAsNonRoot") or not sc.get("readOnlyRootFilesystem"):
        err("k8s: the pod must run as non-root with a read-only root filesystem")
    res = c.get("resources", {})
    if not res.get("requests") or not res.get("limits"):
        err("k8s: resources need requests and limits")
    args = c.get("args", [])
    cm = kinds["ConfigMap"][0]
    (cfg_name, cfg_text), = cm["data"].items()
    cfg_mount = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config"]
    if "--config" not in args or args[args.index("--config") + 1] != f"{cfg_mount[0]}/{cfg_name}":
        err(f"k8s: args {args} do not pass the mounted ConfigMap file with --config")
    if args[-1] != "ingest":
        err("k8s: the container must run `ingest`")
    toml = tomllib.loads(cfg_text)
    open(os.path.join(work, "k8s-config.toml"), "w").write(cfg_text)
    default = tomllib.load(open(os.path.join(root, "config/default.toml"), "rb"))
    def keys(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and f"{prefix}{k}" not in ("kafka.properties", "verify.keys"):
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"
    known = set(keys(default))
    # Keys without a default (unset unless configured) are documented as comments in their section.
    section = ""
    for line in open(os.path.join(root, "config/default.toml")):
        if m := re.match(r"^\[([\w.]+)\]", line):
            section = m.group(1)
        elif (m := re.match(r"^#\s*(\w+)\s*=", line)) and section:
            known.add(f"{section}.{m.group(1)}")
    for k in keys(toml):
        if k not in known:
            err(f"k8s ConfigMap: unknown configuration key {k} (not in config/default.toml)")
    if "url" in toml.get("postgres", {}):
        err("k8s ConfigMap: postgres.url belongs in the Secret")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    shutdown_ms = toml.get("shutdown", {}).get("timeout_ms", default["shutdown"]["timeout_ms"])
    if grace * 1000 <= shutdown_ms:
        err(f"k8s: terminationGracePeriodSeconds {grace} must exceed shutdown.timeout_ms {shutdown_ms}")
    if toml.get("telemetry", {}).get("listen", "").split(":")[-1] != "9187" or toml["telemetry"]["listen"].startswith("127."):
        err("k8s ConfigMap: telemetry.listen must be reachable on the pod IP, port 9187")
    secret = kinds["Secret"][0]
    sdata = {**secret.get("stringData", {}), **secret.get("data", {})}
    if "NEKHEBET_POSTGRES__URL" not in sdata:
        err("k8s: the Secret must hold NEKHEBET_POSTGRES__URL")
    refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
    if secret["metadata"]["name"] not in refs:
        err("k8s: the container does not load the Secret (envFrom)")
    svcs = kinds["Service"]
    headless = [s for s in svcs if s["spec"].get("clusterIP") == "None"]
    if not headless or headless[0]["metadata"]["name"] != spec["serviceName"]:
        err("k8s: the StatefulSet's serviceName must be a headless Service")
    metrics = [s for s in svcs if s["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true"]
    if not metrics:
        err("k8s: no metrics Service with prometheus.io/scrape annotations")
    for s in svcs:
        if s["spec"]["selector"].items() - labels.items():
            err(f"k8s: Service {s['metadata']['name']} selects no worker pod")
    # Every NEKHEBET_* variable of every container names a configuration key (NEKHEBET_A__B = a.b).
    for cont in pod["containers"]:
        for e in cont.get("env", []):
            name = e["name"]
            if name.startswith("NEKHEBET_"):
                key = name[len("NEKHEBET_"):].lower().replace("__", ".")
                if key not in known:
                    err(f"k8s: container {cont['name']}: {name} names no configuration key ({key})")
    # The read API beside the worker: on the pod's LMDB, tokens from a mounted Secret, probes on
    # its own port, one mirror and one log integrator a pod (the worker's), a Service to reach it.
    serve = [x for x in pod["containers"] if x.get("args", [])[-1:] == ["serve"]]
    if not serve:
        err("k8s: no container runs `serve` (the read API) beside the worker")
    else:
        sv = serve[0]
        env = {e["name"]: e.get("value") for e in sv.get("env", [])}
        smounts = {m["name"]: m["mountPath"] for m in sv.get("volumeMounts", [])}
        if smounts.get("lmdb") != "/var/lib/nekhebet/lmdb" or env.get("NEKHEBET_LMDB__PATH") != "/var/lib/nekhebet/lmdb":
            err("k8s: serve must read the pod's LMDB at /var/lib/nekhebet/lmdb")
        listen = env.get("NEKHEBET_SERVE__LISTEN", "")
        if listen.startswith("127.") or not listen:
            err("k8s: serve must listen on the pod IP (NEKHEBET_SERVE__LISTEN)")
        tokens = env.get("NEKHEBET_SERVE__TOKENS_FILE", "")
        secret_vols = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        tok_mount = [n for n, path in smounts.items() if tokens.startswith(path + "/")]
        if not tok_mount or tok_mount[0] not in secret_vols:
            err("k8s: serve off loopback needs NEKHEBET_SERVE__TOKENS_FILE in a mounted Secret")
        elif secret_vols[tok_mount[0]] not in {s["metadata"]["name"] for s in kinds["Secret"]}:
            err(f"k8s: serve's tokens Secret {secret_vols[tok_mount[0]]} is not in secret.yaml")
        if env.get("NEKHEBET_TLOG__ENABLED") != "false" or env.get("NEKHEBET_LMDB__MIRROR_RATE") != "0":
            err("k8s: serve beside the worker must leave the log and the mirror to it (tlog.enabled false, lmdb.mirror_rate 0)")
        sports = {pp.get("name"): pp["containerPort"] for pp in sv.get("ports", [])}
        port = int(listen.rsplit(":", 1)[-1]) if listen else None
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
            p = sv.get(probe, {}).get("httpGet", {})
            if p.get("path") != path or sports.get(p.get("port"), p.get("port")) != port:
                err(f"k8s: serve's {probe} must GET {path} on its listen port {port}")
        sargs = sv.get("args", [])
        if "--config" not in sargs or sargs[sargs.index("--config") + 1] != f"{cfg_mount[0]}/{cfg_name}":
            err(f"k8s: serve's args {sargs} do not pass the mounted ConfigMap file with --config")
        reach = [s for s in svcs if s["spec"].get("clusterIP") != "None"
                 and any(pp.get("targetPort") in ("http", port) for pp in s["spec"]["ports"])]
        if not reach:
            err("k8s: no Service reaches serve's port")
        if not any(pp.get("name") == "serve" for s in metrics for pp in s["spec"]["ports"]):
            err("k8s: the metrics Service has no \"serve\" port: serve's /metrics would not be scraped")
    pdb = kinds["PodDisruptionBudget"][0]
    if pdb["spec"].get("maxUnavailable") != 1 or pdb["spec"]["selector"]["matchLabels"].items() - labels.items():
        err("k8s: the PodDisruptionBudget must allow maxUnavailable 1 of the worker pods")
    print(f"{len(docs)} objects ({', '.join(sorted(kinds))}); config keys checked against config/default.toml; grace {grace}s > shutdown {shutdown_ms} ms")


def check_dockerfile():
    df = open(os.path.join(deploy, "Dockerfile")).read()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", df, re.M)
    if len(froms) < 2:
        err("Dockerfile: not multi-stage")
    for want, why in [(r"^ARG RUST_IMAGE=rust:1-bookworm", "rust:1-bookworm builder"),
                      (r"^ARG RUNTIME_IMAGE=debian:bookworm-slim", "debian:bookworm-slim runtime"),
                      (r"cmake", "cmake for librdkafka"), (r"libssl-dev", "libssl-dev"), (r"libssl3", "libssl3 at runtime"),
                      (r"ca-certificates", "ca-certificates"), (r"^USER \S+", "a non-root USER"),
                      (r"^VOLUME /var/lib/nekhebet/lmdb", "the LMDB volume"),
                      (r"NEKHEBET_LMDB__PATH=/var/lib/nekhebet/lmdb", "NEKHEBET_LMDB__PATH"),
                      (r"NEKHEBET_TELEMETRY__LISTEN=0\.0\.0\.0:9187", "telemetry on all interfaces"),
                      (r"^EXPOSE 9187", "EXPOSE 9187"), (r'^ENTRYPOINT \["nekhebet-store"\]', "the entrypoint"),
                      (r'^CMD \["ingest"\]', "CMD ingest"), (r"cargo build --release --locked", "a locked release build")]:
        if not re.search(want, df, re.M):
            err(f"Dockerfile: missing {why}")
    if re.search(r"^USER (root|0)\b", df, re.M):
        err("Dockerfile: runs as root")
    ign = open(os.path.join(deploy, "Dockerfile.dockerignore")).read().split()
    for want in ["target/", ".local/", ".git/"]:
        if want not in ign:
            err(f"Dockerfile.dockerignore: should exclude {want}")
    print(f"{len(froms)} stages: {', '.join(f[0] for f in froms)}")



def k8s_scrape_static():
    """Debian builds Prometheus without the Kubernetes service discovery: the k8s scrape config
    with kubernetes_sd_configs swapped for a static target, for `promtool check config`."""
    cfg = yaml.safe_load(open(os.path.join(deploy, "k8s/prometheus-scrape.yml")))
    for sc in cfg["scrape_configs"]:
        if sc.pop("kubernetes_sd_configs", None) is not None:
            sc["static_configs"] = [{"targets": ["127.0.0.1:9187"]}]
    yaml.safe_dump(cfg, open(os.path.join(work, "k8s-scrape-static.yml"), "w"), sort_keys=False)


CHECKS = {
    "parse": check_parse,
    "names": check_metric_names,
    "alerts": check_alerts,
    "dashboard": check_dashboard,
    "testconfig": check_testconfig,
    "compose": check_compose,
    "k8s": check_k8s,
    "dockerfile": check_dockerfile,
}


def main():
    global root, work, deploy, NAMES, HISTS, ALLOWED
    if len(sys.argv) != 4 or sys.argv[3] not in (*CHECKS, "k8s-scrape-static"):
        print(f"usage: check_deploy.py ROOT WORK {{{'|'.join(CHECKS)}|k8s-scrape-static}}", file=sys.stderr)
        sys.exit(2)
    root, work, what = sys.argv[1], sys.argv[2], sys.argv[3]
    deploy = os.path.join(root, "deploy")
    if what == "k8s-scrape-static":
        k8s_scrape_static()
        return
    NAMES, HISTS, ALLOWED = metric_names()
    CHECKS[what]()
    if errors:
        print("\n".join(errors))
        sys.exit(1)


if __name__ == "__main__":
    main()
