#!/usr/bin/python3
"""Checks the PromQL of the Grafana dashboard and the Prometheus alerts.

  check_promql.py [--promtool PATH] --dashboard deploy/grafana/switchyard.json
  check_promql.py [--promtool PATH] --alerts deploy/prometheus/alerts.yaml --alert-tests FILE
  check_promql.py --self-test

Dashboard: every target and template-variable query, with Grafana's variables replaced by values
Prometheus accepts, goes into a temporary rules file as a recording rule, and `promtool check rules`
must accept the file (so every expression parses). Alerts: `promtool check rules` on the file itself,
every alert has severity, summary, description and runbook_url, and `promtool test rules` runs the
unit tests (against a copy without annotations). Both: every metric an expression names must be in
deploy/metrics.txt (histograms only through _bucket/_sum/_count), and every label it matches or
groups by must be a contract or scrape-target label.
Without --promtool, scripts/install-promtool.sh provides one (a failure to get it fails the check).
Exit status 0 when everything holds, 1 otherwise (one line per problem).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics_contract  # noqa: E402

# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "inf", "nan", "atan2", "start", "end"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}")
_IDENT = re.compile(r"(?<![a-zA-Z0-9_:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![a-zA-Z0-9_:])")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")

# Grafana's built-in variables and the dashboard's own, replaced by something Prometheus parses.
_GRAFANA_VARS = [
    ("$__rate_interval", "5m"), ("${__rate_interval}", "5m"), ("$__interval", "1m"),
    ("${__interval}", "1m"), ("$__range", "1h"), ("${__range}", "1h"),
]
_VAR = re.compile(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)\}?")


def substitute_grafana_vars(expr):
    for var, value in _GRAFANA_VARS:
        expr = expr.replace(var, value)
    # Template variables appear inside matcher strings ("$model_name"); any regex value parses.
    return _VAR.sub(".+", expr)


def references(expr):
    """Returns (metric names, label names) an expression uses. Raises ValueError if unbalanced."""
    labels = set()
    text = _STRING.sub('""', expr)
    for m in _GROUPING.finditer(text):
        labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
    text = _GROUPING.sub(" ", text)
    metrics = set()
    for m in _SELECTOR.finditer(text):
        if m.group(1):
            metrics.add(m.group(1))
        labels.update(lm.group(1) for lm in _MATCHER_LABEL.finditer(m.group(2)))
    text = _SELECTOR.sub(" ", text)
    if "{" in text or "}" in text:
        raise ValueError(f"unbalanced braces in {expr!r}")
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    for m in _IDENT.finditer(text):
        name = m.group(1)
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue  # a function call or a keyword
        if re.fullmatch(r"\d+[smhdwy]", name):
            continue
        metrics.add(name)
    metrics.discard("__name__")
    return metrics, labels


def contract_problems(where, expr, contract):
    problems = []
    index = metrics_contract.series_index(contract)
    known_labels = metrics_contract.all_label_names(contract)
    try:
        metrics, labels = references(expr)
    except ValueError as e:
        return [f"{where}: {e}"]
    if not metrics:
        problems.append(f"{where}: names no metric: {expr!r}")
    for name in sorted(metrics):
        if name in metrics_contract.BUILTIN_SERIES:
            continue
        if name in contract and contract[name].type == "histogram":
            problems.append(f"{where}: histogram {name} used without _bucket/_sum/_count")
        elif name not in index:
            problems.append(f"{where}: metric {name} is not in deploy/metrics.txt")
    for label in sorted(labels - known_labels):
        problems.append(f"{where}: label {label!r} is not a contract or scrape-target label")
    return problems


def install_promtool():
    script = os.path.join(metrics_contract.REPO_ROOT, "scripts", "install-promtool.sh")
    proc = subprocess.run(["bash", script], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"scripts/install-promtool.sh failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc.stdout.strip().splitlines()[-1]


def run_promtool(promtool, args):
    proc = subprocess.run([promtool] + args, capture_output=True, text=True, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def dashboard_expressions(dashboard):
    """Yields (where, expr) for every panel target (nested rows too) and query variable."""
    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield f"panel {panel.get('title')!r} ref {target.get('refId')}", target["expr"]
            yield from walk(panel.get("panels", []))
    yield from walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", query or "")
        if not m:
            yield f"variable {var.get('name')}", query or ""
        else:
            yield f"variable {var.get('name')}", m.group(1)


def check_dashboard(path, promtool, contract):
    problems = []
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    names = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}
    for required in ("datasource", "model_name"):
        if required not in names:
            problems.append(f"{path}: no {required!r} template variable")
    for panel in dashboard.get("panels", []):
        ds = json.dumps(panel.get("datasource", {}))
        if panel.get("type") != "row" and "${datasource}" not in ds:
            problems.append(f"{path}: panel {panel.get('title')!r} does not use ${{datasource}}")
    exprs = list(dashboard_expressions(dashboard))
    if len(exprs) < 10:
        problems.append(f"{path}: only {len(exprs)} expressions found; the walk is broken")
    rules = []
    for idx, (where, expr) in enumerate(exprs):
        problems += contract_problems(f"{path}: {where}", expr, contract)
        rules.append({"record": f"switchyard_dashboard:expr_{idx}",
                      "expr": substitute_grafana_vars(expr)})
    with tempfile.TemporaryDirectory() as tmp:
        rules_path = os.path.join(tmp, "dashboard-rules.yaml")
        with open(rules_path, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        code, out = run_promtool(promtool, ["check", "rules", rules_path])
        if code != 0:
            problems.append(f"{path}: promtool check rules rejected an expression:\n{out}")
    return problems, len(exprs)


def check_alerts(path, tests_path, promtool, contract):
    problems = []
    code, out = run_promtool(promtool, ["check", "rules", path])
    if code != 0:
        problems.append(f"{path}: promtool check rules failed:\n{out}")
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    alerts = [r for g in doc.get("groups", []) for r in g.get("rules", []) if "alert" in r]
    for rule in alerts:
        where = f"{path}: alert {rule['alert']}"
        problems += contract_problems(where, rule.get("expr", ""), contract)
        if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
            problems.append(f"{where}: severity must be warning or critical")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not annotations.get(key):
                problems.append(f"{where}: no {key} annotation")
        anchor = rule["alert"].lower()
        if not annotations.get("runbook_url", "").endswith("docs/operations.md#" + anchor):
            problems.append(f"{where}: runbook_url must point at docs/operations.md#{anchor}")
    with open(tests_path, encoding="utf-8") as f:
        tests = yaml.safe_load(f)
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    for rule in alerts:
        if rule["alert"] not in tested:
            problems.append(f"{tests_path}: no unit test for {rule['alert']}")
    with tempfile.TemporaryDirectory() as tmp:
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                rule.pop("annotations", None)
        bare = os.path.join(tmp, "alerts-bare.yaml")
        with open(bare, "w", encoding="utf-8") as f:
            yaml.safe_dump(doc, f)
        tests["rule_files"] = [bare]
        test_file = os.path.join(tmp, "alerts_test.yaml")
        with open(test_file, "w", encoding="utf-8") as f:
            yaml.safe_dump(tests, f)
        code, out = run_promtool(promtool, ["test", "rules", test_file])
        if code != 0:
            problems.append(f"{tests_path}: promtool test rules failed:\n{out}")
    return problems, len(alerts)


def self_test(contract):
    """The checker must catch what it claims to; returns failures."""
    failures = []
    cases = [
        ('sum(rate(switchyard_prompt_tokens_total{model_name=~"$model_name"}[5m]))', []),
        ('histogram_quantile(0.99, sum by (le) (rate(switchyard_inter_token_latency_seconds_bucket[5m])))', []),
        ("up == 0", []),
        ('rate(switchyard_prompt_tokens[5m])', ["not in deploy/metrics.txt"]),
        ('switchyard_time_to_first_token_seconds > 1', ["without _bucket"]),
        ('sum by (rank) (switchyard_worker_up)', ["label 'rank'"]),
        ('switchyard_worker_up{rank="1"}', ["label 'rank'"]),
        ('rate(vllm:num_preemptions[5m])', ["vllm:num_preemptions"]),
        ('sum(rate(switchyard_moe_rank_tokens_total{phase="x"}[5m])) / scalar(avg(switchyard_worker_up))', []),
    ]
    for expr, fragments in cases:
        problems = contract_problems("self-test", expr, contract)
        if not fragments and problems:
            failures.append(f"accepted expression rejected: {expr!r}: {problems}")
        for fragment in fragments:
            if not any(fragment in p for p in problems):
                failures.append(f"{expr!r}: expected a problem with {fragment!r}, got {problems}")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promtool")
    parser.add_argument("--dashboard")
    parser.add_argument("--alerts")
    parser.add_argument("--alert-tests")
    parser.add_argument("--contract", default=metrics_contract.DEFAULT_PATH)
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    contract = metrics_contract.load(args.contract)
    problems = []
    if args.self_test:
        problems += self_test(contract)
        print(f"check_promql self-test: {len(problems)} failure(s)")
    if (args.dashboard or args.alerts) and not args.promtool:
        try:
            args.promtool = install_promtool()
        except RuntimeError as e:
            print(f"FAIL cannot get promtool: {e}")
            return 1
    if args.dashboard:
        found, count = check_dashboard(args.dashboard, args.promtool, contract)
        problems += found
        print(f"dashboard: {count} expressions checked, {len(found)} problem(s)")
    if args.alerts:
        if not args.alert_tests:
            parser.error("--alerts needs --alert-tests")
        found, count = check_alerts(args.alerts, args.alert_tests, args.promtool, contract)
        problems += found
        print(f"alerts: {count} alerts checked, {len(found)} problem(s)")
    for p in problems:
        print(f"FAIL {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
