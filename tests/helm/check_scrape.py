#!/usr/bin/python3
"""Checks a Prometheus /metrics exposition against the metrics contract (deploy/metrics.txt).

  check_scrape.py --process coordinator|worker (--url URL | --file PATH) [--require-all]
  check_scrape.py --self-test

For every `switchyard_*` family in the text: it must be in the contract, exported by that process,
with the contract's type (# TYPE line), exactly the contract's labels on every sample (plus `le` on
histogram buckets), and a histogram's `le` bounds must be the contract's bucket set plus +Inf.
--require-all: every metric the contract gives that process (opt-in ones excepted) must be present.
Exit status 0 when it conforms, 1 with one line per problem otherwise, 2 when it cannot read.
"""

import argparse
import math
import os
import re
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics_contract  # noqa: E402

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse_exposition(text):
    """Returns (types {family: type}, samples [(name, {label: value}, value)])."""
    types = {}
    samples = []
    for line_idx, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3]
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"line {line_idx}: not a sample: {line!r}")
        labels = {}
        body = m.group(3) or ""
        pos = 0
        while pos < len(body):
            lm = _LABEL.match(body, pos)
            if not lm:
                raise ValueError(f"line {line_idx}: bad labels {{{body}}}")
            labels[lm.group(1)] = lm.group(2)
            pos = lm.end()
        samples.append((m.group(1), labels, m.group(4)))
    return types, samples


def _family_of(series, index):
    if series in index:
        return index[series]
    return None


def check(text, process, contract, require_all=False):
    """Returns a list of problems (empty when the exposition conforms)."""
    problems = []
    index = metrics_contract.series_index(contract)
    types, samples = parse_exposition(text)
    seen = set()
    bounds_seen = {}
    for family, mtype in types.items():
        if not family.startswith("switchyard_"):
            continue
        metric = contract.get(family)
        if metric is None:
            problems.append(f"{family}: not in the contract (deploy/metrics.txt)")
        elif metric.type != mtype:
            problems.append(f"{family}: TYPE {mtype}, the contract says {metric.type}")
    for name, labels, value in samples:
        if not name.startswith("switchyard_"):
            continue
        metric = _family_of(name, index)
        if metric is None:
            if name not in types:
                problems.append(f"{name}: sample of a metric not in the contract")
            continue
        seen.add(metric.name)
        if metric.process != process:
            problems.append(f"{name}: exported by the {process}, the contract says {metric.process}")
        expected = set(metric.labels) | ({"le"} if name.endswith("_bucket") else set())
        if set(labels) != expected:
            problems.append(f"{name}{{{','.join(sorted(labels))}}}: labels differ from the "
                            f"contract's {{{','.join(sorted(expected))}}}")
        if name.endswith("_bucket") and metric.type == "histogram" and "le" in labels:
            key = (metric.name, tuple(sorted((k, v) for k, v in labels.items() if k != "le")))
            bounds_seen.setdefault(key, []).append(float(labels["le"]))
    for (family, _), bounds in bounds_seen.items():
        expected = list(contract[family].buckets) + [math.inf]
        if sorted(bounds) != expected:
            problems.append(f"{family}: buckets {sorted(bounds)} differ from the contract's "
                            f"{expected}")
    if require_all:
        for metric in contract.values():
            if metric.process == process and not metric.opt_in and metric.name not in seen:
                problems.append(f"{metric.name}: in the contract for the {process}, not exported")
    return problems


_GOOD = """# HELP switchyard_num_requests_waiting Requests waiting.
# TYPE switchyard_num_requests_waiting gauge
switchyard_num_requests_waiting{model_name="demo"} 3
# TYPE switchyard_request_success_total counter
switchyard_request_success_total{model_name="demo",finished_reason="stop"} 7
# TYPE switchyard_iteration_tokens histogram
""" + "".join(
    f'switchyard_iteration_tokens_bucket{{model_name="demo",le="{b}"}} 1\n'
    for b in ("1", "8", "16", "32", "64", "128", "256", "512", "1024", "2048", "4096", "8192",
              "16384", "+Inf")) + """switchyard_iteration_tokens_sum{model_name="demo"} 5
switchyard_iteration_tokens_count{model_name="demo"} 1
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.5
"""

# Each bad exposition and a fragment the problem list must contain.
_BAD = [
    ('# TYPE switchyard_made_up gauge\nswitchyard_made_up{model_name="d"} 1\n', "not in the contract"),
    ('# TYPE switchyard_num_requests_waiting counter\n'
     'switchyard_num_requests_waiting{model_name="d"} 1\n', "TYPE counter"),
    ('# TYPE switchyard_num_requests_waiting gauge\nswitchyard_num_requests_waiting 1\n',
     "labels differ"),
    ('# TYPE switchyard_num_requests_waiting gauge\n'
     'switchyard_num_requests_waiting{model_name="d",rank="0"} 1\n', "labels differ"),
    ('# TYPE switchyard_worker_step_seconds histogram\n'
     'switchyard_worker_step_seconds_count{model_name="d",ep_rank="0"} 1\n', "exported by the"),
    ('# TYPE switchyard_iteration_tokens histogram\n'
     'switchyard_iteration_tokens_bucket{model_name="d",le="1"} 1\n'
     'switchyard_iteration_tokens_bucket{model_name="d",le="+Inf"} 1\n', "buckets"),
]


def self_test(contract):
    failures = []
    problems = check(_GOOD, "coordinator", contract)
    if problems:
        failures.append(f"good exposition rejected: {problems}")
    if not check(_GOOD, "coordinator", contract, require_all=True):
        failures.append("--require-all accepted an exposition missing most metrics")
    for text, fragment in _BAD:
        problems = check(text, "coordinator", contract)
        if not any(fragment in p for p in problems):
            failures.append(f"expected a problem with {fragment!r} for {text!r}, got {problems}")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process", choices=metrics_contract.PROCESSES)
    parser.add_argument("--url")
    parser.add_argument("--file")
    parser.add_argument("--contract", default=metrics_contract.DEFAULT_PATH)
    parser.add_argument("--require-all", action="store_true")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    try:
        contract = metrics_contract.load(args.contract)
    except (OSError, metrics_contract.ContractError) as e:
        print(f"check_scrape: cannot read the contract: {e}", file=sys.stderr)
        return 2
    if args.self_test:
        failures = self_test(contract)
        for f in failures:
            print(f"FAIL {f}")
        print(f"check_scrape self-test: {'FAILED' if failures else 'ok'}")
        return 1 if failures else 0
    if not args.process or bool(args.url) == bool(args.file):
        parser.error("give --process and exactly one of --url, --file (or --self-test)")
    try:
        if args.url:
            with urllib.request.urlopen(args.url, timeout=10) as resp:
                text = resp.read().decode("utf-8")
        else:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        problems = check(text, args.process, contract, args.require_all)
    except (OSError, ValueError) as e:
        print(f"check_scrape: cannot read the exposition: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    print(f"check_scrape: {len(problems)} problem(s) in the {args.process}'s metrics")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
