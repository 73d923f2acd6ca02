"""Reads deploy/metrics.txt, the machine-readable metrics contract (see docs/metrics.md).

Used by check_promql.py (dashboard and alert expressions) and check_scrape.py (a live /metrics).
Standard library only, so it runs with Debian's /usr/bin/python3.
"""

import dataclasses
import os
import re

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_PATH = os.path.join(REPO_ROOT, "deploy", "metrics.txt")

TYPES = ("counter", "gauge", "histogram")
PROCESSES = ("coordinator", "worker")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus attaches at scrape time (Prometheus Operator's ServiceMonitor adds these).
TARGET_LABELS = frozenset(
        {"namespace", "pod", "job", "instance", "service", "container", "endpoint"})
# Series Prometheus itself writes for every target; expressions may use them.
BUILTIN_SERIES = frozenset({"up"})


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    type: str
    process: str
    labels: tuple
    buckets: tuple  # upper bounds as floats, empty unless a histogram
    help: str

    @property
    def opt_in(self):
        return self.help.startswith("[opt-in")

    def series_names(self):
        if self.type == "histogram":
            return [self.name + s for s in HISTOGRAM_SUFFIXES]
        return [self.name]


class ContractError(Exception):
    pass


def load(path=DEFAULT_PATH):
    """Returns {name: Metric}. Raises ContractError naming the line on any malformed entry."""
    buckets = {}
    metrics = {}
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for line_idx, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{path}:{line_idx}"
        if not line or line.startswith("#"):
            continue
        if line.startswith("@buckets"):
            parts = line.split()
            if len(parts) != 3:
                raise ContractError(f"{where}: expected '@buckets <set> <bounds>', found {line!r}")
            try:
                bounds = tuple(float(b) for b in parts[2].split(","))
            except ValueError as e:
                raise ContractError(f"{where}: bucket bounds must be numbers: {e}") from None
            if list(bounds) != sorted(set(bounds)):
                raise ContractError(f"{where}: bucket bounds must be strictly increasing")
            buckets[parts[1]] = bounds
            continue
        parts = line.split(None, 5)
        if len(parts) < 6:
            raise ContractError(f"{where}: expected 6 fields (name type process labels buckets help)")
        name, mtype, process, labels, bucket_set, help_text = parts
        if not re.fullmatch(r"switchyard_[a-z0-9_]+", name):
            raise ContractError(f"{where}: metric {name!r} must match switchyard_[a-z0-9_]+")
        if mtype not in TYPES:
            raise ContractError(f"{where}: type {mtype!r} is not one of {TYPES}")
        if process not in PROCESSES:
            raise ContractError(f"{where}: process {process!r} is not one of {PROCESSES}")
        if (mtype == "counter") != name.endswith("_total"):
            raise ContractError(f"{where}: {name}: counters, and only counters, end in _total")
        if name in metrics:
            raise ContractError(f"{where}: {name} listed twice")
        label_tuple = () if labels == "-" else tuple(labels.split(","))
        if "model_name" not in label_tuple:
            raise ContractError(f"{where}: {name} must carry the model_name label")
        if mtype == "histogram":
            if bucket_set not in buckets:
                raise ContractError(f"{where}: {name} names unknown bucket set {bucket_set!r}")
            bounds = buckets[bucket_set]
        elif bucket_set != "-":
            raise ContractError(f"{where}: {name} is a {mtype}; its buckets field must be '-'")
        else:
            bounds = ()
        metrics[name] = Metric(name, mtype, process, label_tuple, bounds, help_text)
    if not metrics:
        raise ContractError(f"{path}: no metrics listed")
    return metrics


def series_index(metrics):
    """Maps every series name a scrape can hold (histograms: _bucket/_sum/_count) to its Metric."""
    index = {}
    for m in metrics.values():
        for s in m.series_names():
            index[s] = m
    return index


def all_label_names(metrics):
    names = set(TARGET_LABELS) | {"le"}
    for m in metrics.values():
        names.update(m.labels)
    return names
