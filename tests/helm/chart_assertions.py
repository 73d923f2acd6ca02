"""Assertions on the objects helm/switchyard renders, one function per scenario (chart_test.py).

Expectations come from the values files and the design (ports, environment variable names,
probes, security settings), written out here by hand, never read back from the templates.
A failed `require` stops a scenario; `ctx.expect` records a problem and goes on.
"""

import json
import os

import yaml

GRPC_PORT, CONTROL_PORT, HTTP_PORT = 50051, 50052, 8000
WORKER_CONTROL_PORT, WORKER_HTTP_PORT = 50061, 8001
READINESS_SERVICE = "switchyard.v1.InferenceService"
# Scenarios whose values change the alerts: rule labels added, runbook URLs prefixed.
RULE_OVERRIDES = {
    "hostpath-restricted": {"rule_labels": {"team": "ml-platform"},
                            "runbook_base": "https://docs.example.com/switchyard/operations/"},
}
DEMO_INIT_COMMAND = ["switchyard-make-model", "--family", "qwen3_moe", "--out", "/models/demo"]


class Context:
    def __init__(self, objects, release, namespace, repo, scenario=""):
        self.scenario = scenario
        self.objects = objects
        self.release = release
        self.namespace = namespace
        self.repo = repo
        self.problems = []

    def expect(self, condition, message):
        if not condition:
            self.problems.append(message)
        return condition

    def of_kind(self, kind):
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind, name=None):
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        require(len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}")
        return found[0]

    def name(self, suffix):
        return f"{self.release}-switchyard-{suffix}"

    def pod_templates(self):
        """(component, pod template) for every pod the release runs."""
        out = []
        for o in self.of_kind("Deployment") + self.of_kind("StatefulSet"):
            out.append((o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"],
                        o["spec"]["template"]))
        for o in self.of_kind("LeaderWorkerSet"):
            t = o["spec"]["leaderWorkerTemplate"]
            out += [("coordinator", t["leaderTemplate"]), ("worker", t["workerTemplate"])]
        return out

    def pod(self, component):
        found = [t for c, t in self.pod_templates() if c == component]
        require(len(found) == 1, f"expected one {component} pod template, found {len(found)}")
        return found[0]

    def container(self, component):
        containers = self.pod(component)["spec"]["containers"]
        require(len(containers) == 1, f"{component}: expected one container")
        return containers[0]


def require(condition, message):
    if not condition:
        raise AssertionError(message)


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def ports_of(container):
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def probe_budget_s(probe):
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------------------ every scenario
def check_common(ctx):
    check_security(ctx)
    check_coordinator(ctx)
    check_worker(ctx)
    check_services(ctx)
    if ctx.of_kind("NetworkPolicy"):
        check_network_policies(ctx)
    if ctx.of_kind("ServiceMonitor"):
        check_service_monitor(ctx)
    if ctx.of_kind("PrometheusRule"):
        check_prometheus_rule(ctx, **RULE_OVERRIDES.get(ctx.scenario, {}))
    if ctx.of_kind("ConfigMap"):
        check_dashboard(ctx)
    for pdb in ctx.of_kind("PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        ctx.expect(any(selects(sel, t["metadata"]["labels"]) for _, t in ctx.pod_templates()),
                   f"PDB {pdb['metadata']['name']} selects no pod")
    for o in ctx.objects:
        ctx.expect(o["metadata"].get("namespace") == ctx.namespace,
                   f"{o['kind']}/{o['metadata']['name']}: namespace is not the release's")


def check_security(ctx):
    for component, tmpl in ctx.pod_templates():
        spec = tmpl["spec"]
        psc = spec.get("securityContext", {})
        ctx.expect(psc.get("runAsNonRoot") is True, f"{component}: pod runAsNonRoot is not true")
        ctx.expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                   f"{component}: pod seccompProfile is not RuntimeDefault")
        ctx.expect(spec.get("automountServiceAccountToken") is False,
                   f"{component}: service account token is mounted")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{component}/{c['name']}"
            ctx.expect(sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation")
            ctx.expect(sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem writable")
            ctx.expect(sc.get("capabilities", {}).get("drop") == ["ALL"],
                       f"{where}: capabilities not dropped (ALL)")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0].get("volumeMounts", [])}
        ctx.expect(volumes.get(mounts.get("/tmp"), {}).get("emptyDir") is not None,
                   f"{component}: /tmp is not a writable emptyDir (read-only root)")
        shm = volumes.get(mounts.get("/dev/shm"), {})
        ctx.expect(shm.get("emptyDir", {}).get("medium") == "Memory",
                   f"{component}: /dev/shm is not a memory-backed emptyDir")


def check_coordinator(ctx):
    c = ctx.container("coordinator")
    require(c["command"] == ["switchyard-coordinator"], f"coordinator command {c['command']}")
    env = env_of(c)
    for name, value in [("SWITCHYARD_GRPC_PORT", str(GRPC_PORT)),
                        ("SWITCHYARD_CONTROL_PORT", str(CONTROL_PORT)),
                        ("SWITCHYARD_HTTP_PORT", str(HTTP_PORT))]:
        ctx.expect(env.get(name) == value, f"coordinator {name}={env.get(name)}, want {value}")
    ctx.expect(ports_of(c) == {"grpc": GRPC_PORT, "control": CONTROL_PORT, "http": HTTP_PORT},
               f"coordinator ports {ports_of(c)}")
    ready = c["readinessProbe"].get("grpc", {})
    ctx.expect(ready.get("port") == GRPC_PORT and ready.get("service") == READINESS_SERVICE,
               f"coordinator readiness is not the gRPC health of {READINESS_SERVICE}: {ready}")
    ctx.expect("grpc" in c["startupProbe"] or "tcpSocket" in c["startupProbe"],
               "coordinator startup probe is neither gRPC nor TCP")
    ctx.expect("tcpSocket" in c["livenessProbe"] or "grpc" in c["livenessProbe"],
               "coordinator liveness probe is not a cheap TCP/gRPC check")
    limits = c.get("resources", {}).get("limits", {})
    ctx.expect(not any("gpu" in k for k in limits), "the coordinator requests a GPU")


def check_worker(ctx):
    c = ctx.container("worker")
    require(c["command"] == ["switchyard-worker"], f"worker command {c['command']}")
    env = env_of(c)
    want_address = f"{ctx.name('coordinator-ctl')}.{ctx.namespace}.svc.cluster.local:{CONTROL_PORT}"
    ctx.expect(env.get("SWITCHYARD_COORDINATOR_ADDRESS") == want_address,
               f"worker SWITCHYARD_COORDINATOR_ADDRESS={env.get('SWITCHYARD_COORDINATOR_ADDRESS')}, "
               f"want {want_address}")
    ctx.expect(env.get("SWITCHYARD_ADVERTISE_HOST") == "$(POD_IP)", "worker does not advertise its IP")
    ctx.expect(env.get("POD_IP") == {"fieldRef": {"fieldPath": "status.podIP"}},
               "POD_IP is not from the downward API")
    names = [e["name"] for e in c["env"]]
    ctx.expect(names.index("POD_IP") < names.index("SWITCHYARD_ADVERTISE_HOST"),
               "POD_IP must come before the variable that expands it")
    ctx.expect(ports_of(c) == {"control": WORKER_CONTROL_PORT, "http": WORKER_HTTP_PORT},
               f"worker ports {ports_of(c)}")
    for probe in ("startupProbe", "readinessProbe"):
        get = c[probe].get("httpGet", {})
        ctx.expect(get.get("path") == "/health" and get.get("port") in ("http", WORKER_HTTP_PORT),
                   f"worker {probe} is not HTTP /health on the HTTP port: {c[probe]}")
    ctx.expect(probe_budget_s(c["startupProbe"]) >= 300,
               f"worker startup budget {probe_budget_s(c['startupProbe'])}s is too short to load a model")
    ctx.expect("tcpSocket" in c["livenessProbe"], "worker liveness is not a TCP check")
    backend = env.get("SWITCHYARD_BACKEND")
    gpu_limit = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    has_nccl = any(n.startswith("NCCL_") for n in env)
    if backend == "cuda":
        ctx.expect(gpu_limit is not None, "cuda worker without an nvidia.com/gpu limit")
        ctx.expect(has_nccl, "cuda worker without NCCL settings")
    else:
        ctx.expect(backend == "cpu", f"SWITCHYARD_BACKEND={backend}")
        ctx.expect(gpu_limit is None, "cpu worker requests a GPU")
        ctx.expect(not has_nccl, "cpu worker has NCCL settings")
    cenv = env_of(ctx.container("coordinator"))
    for name in ("SWITCHYARD_MODEL", "SWITCHYARD_NUM_WORKERS"):
        ctx.expect(env.get(name) == cenv.get(name) and env.get(name),
                   f"{name} differs between coordinator ({cenv.get(name)}) and workers ({env.get(name)})")


def check_services(ctx):
    templates = ctx.pod_templates()
    for svc in ctx.of_kind("Service"):
        sel = svc["spec"]["selector"]
        ctx.expect(any(selects(sel, t["metadata"]["labels"]) for _, t in templates),
                   f"Service {svc['metadata']['name']} selects no pod")
    client = ctx.one("Service", ctx.name("coordinator"))
    ctx.expect([(p["name"], p["port"]) for p in client["spec"]["ports"]] == [("grpc", GRPC_PORT)],
               f"client Service exposes {client['spec']['ports']}, want only grpc {GRPC_PORT}")
    ctl = ctx.one("Service", ctx.name("coordinator-ctl"))
    workers = ctx.one("Service", ctx.name("worker"))
    for svc, comp, control in [(ctl, "coordinator", CONTROL_PORT), (workers, "worker", WORKER_CONTROL_PORT)]:
        spec = svc["spec"]
        where = f"Service {svc['metadata']['name']}"
        ctx.expect(spec.get("clusterIP") == "None", f"{where} is not headless")
        ctx.expect(spec.get("publishNotReadyAddresses") is True,
                   f"{where} hides not-ready pods (workers must reach a not-yet-ready coordinator)")
        ctx.expect(spec["selector"].get("app.kubernetes.io/component") == comp, f"{where} selector")
        ctx.expect(control in [p["port"] for p in spec["ports"]], f"{where} lacks port {control}")
    for sts in ctx.of_kind("StatefulSet"):
        ctx.expect(sts["spec"]["serviceName"] == workers["metadata"]["name"],
                   "StatefulSet serviceName is not the headless worker Service")


def _peers_are_release(rule, ctx):
    peers = rule.get("from")
    if not peers:
        return False
    want = {"app.kubernetes.io/name": "switchyard", "app.kubernetes.io/instance": ctx.release}
    return all(p.get("podSelector", {}).get("matchLabels") == want and "namespaceSelector" not in p
               for p in peers)


def check_network_policies(ctx):
    for comp, public_ports in [("coordinator", {"grpc", "http"}), ("worker", {"http"})]:
        pol = ctx.one("NetworkPolicy", ctx.name(comp))
        ctx.expect(pol["spec"]["policyTypes"] == ["Ingress"], f"{comp} policy types")
        ctx.expect(pol["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == comp,
                   f"{comp} policy selects the wrong pods")
        rules = pol["spec"]["ingress"]
        ctx.expect(any(_peers_are_release(r, ctx) and "ports" not in r for r in rules),
                   f"{comp}: no rule admitting the release's own pods (control and data plane)")
        for r in rules:
            if _peers_are_release(r, ctx):
                continue
            ports = {p.get("port") for p in r.get("ports", [])}
            ctx.expect(ports and ports <= public_ports,
                       f"{comp}: a rule admits non-release peers to ports {ports or 'ALL'}")
            if ports == {"http"}:
                ns_sel = r["from"][0].get("namespaceSelector", {})
                ctx.expect(ns_sel == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                           f"{comp}: metrics port open to {r['from']}")


def check_service_monitor(ctx):
    sm = ctx.one("ServiceMonitor")
    sel = sm["spec"]["selector"]["matchLabels"]
    for name in (ctx.name("coordinator-ctl"), ctx.name("worker")):
        svc = ctx.one("Service", name)
        ctx.expect(selects(sel, svc["metadata"]["labels"]), f"ServiceMonitor misses Service {name}")
        ctx.expect("http" in [p["name"] for p in svc["spec"]["ports"]], f"Service {name} has no http port")
    ctx.expect(not selects(sel, ctx.one("Service", ctx.name("coordinator"))["metadata"]["labels"]),
               "ServiceMonitor also selects the client Service (double scrape)")
    ep = sm["spec"]["endpoints"]
    ctx.expect(len(ep) == 1 and ep[0]["port"] == "http" and ep[0]["path"] == "/metrics",
               f"ServiceMonitor endpoints {ep}")
    ctx.expect(sm["spec"]["namespaceSelector"] == {"matchNames": [ctx.namespace]},
               "ServiceMonitor namespaceSelector")


def _deploy_alerts(ctx):
    with open(os.path.join(ctx.repo, "deploy", "prometheus", "alerts.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)["groups"]


def check_prometheus_rule(ctx, rule_labels=None, runbook_base=None):
    rule = ctx.one("PrometheusRule")
    got = rule["spec"]["groups"]
    want = _deploy_alerts(ctx)
    for group in want:
        for r in group["rules"]:
            if rule_labels:
                r["labels"] = {**rule_labels, **r.get("labels", {})}
            if runbook_base:
                anchor = r["annotations"]["runbook_url"].split("#", 1)[1]
                r["annotations"]["runbook_url"] = f"{runbook_base.rstrip('/')}#{anchor}"
    ctx.expect(got == want, "PrometheusRule groups differ from deploy/prometheus/alerts.yaml")
    ctx.expect(rule["metadata"]["labels"].get("app.kubernetes.io/instance") == ctx.release,
               "PrometheusRule lacks the release label")


def check_dashboard(ctx):
    cm = ctx.one("ConfigMap")
    ctx.expect(cm["metadata"]["labels"].get("grafana_dashboard") == "1",
               "dashboard ConfigMap lacks grafana_dashboard: \"1\"")
    with open(os.path.join(ctx.repo, "deploy", "grafana", "switchyard.json"), encoding="utf-8") as f:
        want = json.load(f)
    ctx.expect(json.loads(cm["data"]["switchyard.json"]) == want,
               "dashboard in the ConfigMap differs from deploy/grafana/switchyard.json")


# ------------------------------------------------------------------------------ per scenario
def _model_volume(ctx, component):
    spec = ctx.pod(component)["spec"]
    return {v["name"]: v for v in spec["volumes"]}.get("model", {})


def check_default(ctx):
    require(ctx.one("StatefulSet")["spec"]["replicas"] == 2, "default workers.replicas is not 2")
    ctx.expect(ctx.one("Deployment")["spec"]["replicas"] == 1, "more than one coordinator")
    c = ctx.container("worker")
    ctx.expect(c["resources"]["limits"].get("nvidia.com/gpu") == 1, "default: not 1 GPU per worker")
    ctx.expect(c["resources"]["requests"].get("nvidia.com/gpu") == 1, "default: GPU request != limit")
    for comp in ("coordinator", "worker"):
        vol = _model_volume(ctx, comp)
        ctx.expect(vol.get("persistentVolumeClaim") == {"claimName": "switchyard-model", "readOnly": True},
                   f"default {comp}: model volume {vol}")
    tol = ctx.pod("worker")["spec"].get("tolerations", [])
    ctx.expect({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tol,
               "default: workers do not tolerate the GPU taint")
    ctx.expect(env_of(c).get("SWITCHYARD_MODEL") == "/models/model", "default SWITCHYARD_MODEL")
    for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"):
        ctx.expect(ctx.of_kind(kind), f"default renders no {kind}")


def check_cpu(ctx):
    for comp in ("coordinator", "worker"):
        spec = ctx.pod(comp)["spec"]
        inits = spec.get("initContainers", [])
        require(len(inits) == 1, f"cpu {comp}: expected the model init container, found {len(inits)}")
        ctx.expect(inits[0]["command"] == DEMO_INIT_COMMAND, f"cpu {comp}: init command {inits[0]['command']}")
        init_mounts = {m["mountPath"]: m for m in inits[0]["volumeMounts"]}
        ctx.expect("/models" in init_mounts and not init_mounts["/models"].get("readOnly"),
                   f"cpu {comp}: the init container cannot write /models")
        ctx.expect("emptyDir" in _model_volume(ctx, comp), f"cpu {comp}: model volume is not an emptyDir")
        env = env_of(spec["containers"][0])
        ctx.expect(env.get("SWITCHYARD_MODEL") == "/models/demo", f"cpu {comp}: SWITCHYARD_MODEL")
        ctx.expect(env.get("SWITCHYARD_SERVED_MODEL_NAME") == "demo", f"cpu {comp}: served name")
        ctx.expect("runtimeClassName" not in spec, f"cpu {comp}: runtimeClassName set")
        ctx.expect(not spec.get("tolerations"), f"cpu {comp}: GPU tolerations on a CPU pod")
    ctx.expect(env_of(ctx.container("worker")).get("SWITCHYARD_BACKEND") == "cpu", "cpu: backend")
    ctx.expect("nvidia.com/gpu" not in json.dumps(ctx.objects), "cpu: nvidia.com/gpu requested somewhere")
    ctx.expect(env_of(ctx.container("worker")).get("OPENBLAS_NUM_THREADS") == "2", "cpu: BLAS threads")


def check_gpu(ctx):
    require(ctx.one("StatefulSet")["spec"]["replicas"] == 8, "gpu: workers.replicas is not 8")
    c = ctx.container("worker")
    env = env_of(c)
    ctx.expect(env.get("SWITCHYARD_NUM_WORKERS") == "8", "gpu: SWITCHYARD_NUM_WORKERS")
    ctx.expect(env.get("NCCL_SOCKET_IFNAME") == "eth0" and env.get("NCCL_IB_HCA") == "mlx5",
               "gpu: NCCL interface settings missing")
    ctx.expect(env.get("GLOO_SOCKET_IFNAME") == "eth0", "gpu: GLOO_SOCKET_IFNAME")
    ctx.expect(c["resources"]["limits"].get("rdma/ib") == 1, "gpu: no RDMA resource")
    ctx.expect("IPC_LOCK" in c["securityContext"]["capabilities"].get("add", []), "gpu: no IPC_LOCK")
    ctx.expect(c["securityContext"]["capabilities"]["drop"] == ["ALL"], "gpu: ALL no longer dropped")
    ctx.expect(ctx.pod("worker")["spec"].get("runtimeClassName") == "nvidia", "gpu: runtimeClassName")
    ctx.expect(probe_budget_s(c["startupProbe"]) >= 3600, "gpu: startup budget under an hour")
    ctx.expect(_model_volume(ctx, "worker").get("persistentVolumeClaim", {}).get("claimName")
               == "qwen3-235b-a22b", "gpu: PVC claim")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        ctx.expect(ctx.one(kind)["metadata"]["labels"].get("release") == "kube-prometheus-stack",
                   f"gpu: {kind} lacks the additional label")


def check_lws(ctx):
    ctx.expect(not ctx.of_kind("Deployment") and not ctx.of_kind("StatefulSet"),
               "lws: Deployment/StatefulSet rendered beside the LeaderWorkerSet")
    lws = ctx.one("LeaderWorkerSet")
    t = lws["spec"]["leaderWorkerTemplate"]
    ctx.expect(lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1", "lws apiVersion")
    ctx.expect(lws["spec"]["replicas"] == 1, "lws: more than one group (one coordinator per deployment)")
    ctx.expect(t["size"] == 4, f"lws: group size {t['size']}, want 1 coordinator + 3 workers")
    ctx.expect(t["leaderTemplate"]["spec"]["containers"][0]["command"] == ["switchyard-coordinator"],
               "lws: the leader is not the coordinator")
    ctx.expect(env_of(ctx.container("worker")).get("SWITCHYARD_NUM_WORKERS") == "3", "lws: world size")


def check_monitoring_off(ctx):
    for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget"):
        ctx.expect(not ctx.of_kind(kind), f"monitoring-off: {kind} rendered")


def check_hostpath_restricted(ctx):
    for comp in ("coordinator", "worker"):
        ctx.expect(_model_volume(ctx, comp).get("hostPath") == {"path": "/data/checkpoints", "type": "Directory"},
                   f"hostpath {comp}: model volume")
    pol = ctx.one("NetworkPolicy", ctx.name("coordinator"))
    client_rules = [r for r in pol["spec"]["ingress"] if r.get("ports") == [{"port": "grpc", "protocol": "TCP"}]]
    ctx.expect(len(client_rules) == 1 and client_rules[0].get("from") ==
               [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}],
               f"hostpath: client rule {client_rules}")
    env = env_of(ctx.container("worker"))
    ctx.expect(env.get("SWITCHYARD_METRICS_PER_EXPERT") == "true", "hostpath: per-expert metrics flag")
    ctx.expect(env.get("GLOO_SOCKET_IFNAME") == "eth0", "hostpath: GLOO_SOCKET_IFNAME")
    rule = ctx.one("PrometheusRule")["spec"]["groups"][0]["rules"][0]
    ctx.expect(rule["labels"].get("team") == "ml-platform", "hostpath: rule labels not added")
    ctx.expect(rule["annotations"]["runbook_url"].startswith("https://docs.example.com/switchyard/operations#"),
               f"hostpath: runbook_url {rule['annotations']['runbook_url']}")
