#!/usr/bin/env python3
"""Compares two `make bench` runs: per metric present in both, the old and new value, new/old, and each run's floor.

    python3 Tests/Bench/compare.py <old.json> <new.json>

A run is the file `make bench` writes (`.build/bench/bench.json`, or BENCH_OUT); a file of the JSON lines bench.py
prints (one object per metric, as pasted in Tests/Bench/RESULTS.md) is read too, its `baseline` taken as its floor.

The floors are measured in the same run as the values, on the same machine: when the floors moved as much as the
values did, the difference is the machine's (load, CPU, kernel), not the code's. `norm` is new/old divided by the
floors' new/old: about 1 when only the machine changed.
"""

import json
import sys


def load(path):
    """A run as {"metrics": [...], ...}: the bench.json document, or JSON lines of metric objects."""
    with open(path) as f:
        text = f.read()
    try:
        document = json.loads(text)
        if isinstance(document, dict) and "metrics" in document:
            return document
    except json.JSONDecodeError:
        pass
    metrics = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            record = json.loads(line)
            if "name" in record and "value" in record:
                if "floor" not in record and "baseline" in record:
                    record["floor"], record["floor_name"] = record["baseline"], record.get("baseline_name")
                metrics.append(record)
    if not metrics:
        raise ValueError(f"{path}: neither a bench.json document nor JSON lines of metrics")
    return {"metrics": metrics}


def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(new, old):
    if not isinstance(new, (int, float)) or not isinstance(old, (int, float)) or not old:
        return None
    return new / old


def describe(run, label):
    machine, load = run.get("machine", {}), run.get("load", {})
    parts = [f"{label}: {run.get('started', 'date unknown')}", f"commit {run.get('commit', '?')}"]
    if machine:
        parts.append(f"{machine.get('cpus', '?')} CPUs {machine.get('cpu_model', '')}".rstrip())
    if load:
        parts.append(f"load {load.get('at_start', '?')} → {load.get('at_end', '?')}")
        if "others_cpu_percent" in load:
            parts.append(f"other processes {load['others_cpu_percent']}% of a CPU")
    return "; ".join(parts)


def compare(old, new):
    """The comparison as text lines."""
    old_by_name = {m["name"]: m for m in old["metrics"]}
    lines = [describe(old, "old"), describe(new, "new"), ""]
    header = (f"{'metric':<26} {'unit':<8} {'old':>11} {'new':>11} {'new/old':>8}   "
              f"{'old floor':>11} {'new floor':>11} {'floors':>7} {'norm':>6}")
    lines.append(header)
    for m in new["metrics"]:
        o = old_by_name.get(m["name"])
        if o is None:
            continue
        r = ratio(m["value"], o["value"])
        floor_ratio = ratio(m.get("floor"), o.get("floor"))
        norm = r / floor_ratio if r is not None and floor_ratio else None
        lines.append(
            f"{m['name']:<26} {m.get('unit', ''):<8} {fmt(o['value']):>11} {fmt(m['value']):>11} "
            f"{fmt(round(r, 3)) if r is not None else '-':>8}   {fmt(o.get('floor')):>11} {fmt(m.get('floor')):>11} "
            f"{fmt(round(floor_ratio, 3)) if floor_ratio else '-':>7} {fmt(round(norm, 3)) if norm else '-':>6}")
    only_old = sorted(set(old_by_name) - {m["name"] for m in new["metrics"]})
    only_new = [m["name"] for m in new["metrics"] if m["name"] not in old_by_name]
    if only_old:
        lines.append(f"only in old: {', '.join(only_old)}")
    if only_new:
        lines.append(f"only in new: {', '.join(only_new)}")
    lines.append("new/old < 1: smaller in the new run (better for sizes and times, worse for rates); "
                 "floors: the floors' new/old; norm: new/old ÷ floors")
    return lines


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare.py <old.json> <new.json>")
    print("\n".join(compare(load(sys.argv[1]), load(sys.argv[2]))))


if __name__ == "__main__":
    main()
