#!/usr/bin/python3
"""docs/metrics.md and deploy/metrics.txt must list the same metrics, with the same types.

Every `switchyard_*` metric in the contract needs a row in docs/metrics.md whose type column
agrees; every metric name the page mentions must be in the contract (histogram series suffixes
allowed). Exit status 0 when they agree, 1 otherwise.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics_contract  # noqa: E402

DOC = os.path.join(metrics_contract.REPO_ROOT, "docs", "metrics.md")


def main():
    contract = metrics_contract.load()
    index = metrics_contract.series_index(contract)
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    problems = []
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`(switchyard_[a-z0-9_]+)`\s*\|\s*(counter|gauge|histogram)", line)
        if m:
            rows[m.group(1)] = m.group(2)
    for name, metric in sorted(contract.items()):
        if name not in rows:
            problems.append(f"{name}: in deploy/metrics.txt, no table row in docs/metrics.md")
        elif rows[name] != metric.type:
            problems.append(f"{name}: docs/metrics.md says {rows[name]}, the contract {metric.type}")
    for name in sorted(set(re.findall(r"\bswitchyard_[a-z0-9_]+", text))):
        if name not in contract and name not in index:
            problems.append(f"{name}: named in docs/metrics.md, not in deploy/metrics.txt")
    for p in problems:
        print(f"FAIL {p}")
    print(f"check_contract_docs: {len(contract)} metrics, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
