"""Compare two pipeline ``metrics.json`` files leaf by leaf (timings left out).

    python scripts/compare_metrics.py runs/before/metrics.json runs/after/metrics.json

Prints how many leaves are identical, and per top-level group (e.g. ``models.stage2``) how many differ
and the largest relative difference, so a refactor's "behaviour unchanged" can be checked.
"""

from __future__ import annotations

import argparse
import json
import math


def leaves(value, prefix: str = ""):
    """(dotted key, value) for every scalar in a JSON tree."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from leaves(child, f"{prefix}{key}.")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaves(child, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), value


def is_timing(key: str) -> bool:
    return key.startswith("timings_s") or "seconds" in key


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args()
    with open(args.before) as handle:
        before = dict(leaves(json.load(handle)))
    with open(args.after) as handle:
        after = dict(leaves(json.load(handle)))
    keys = [k for k in sorted(set(before) | set(after)) if not is_timing(k)]
    only_one = [k for k in keys if (k in before) != (k in after)]
    shared = [k for k in keys if k in before and k in after]
    differing: dict[str, list[tuple[float, str]]] = {}
    for key in shared:
        a, b = before[key], after[key]
        if same(a, b):
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        relative = abs(a - b) / max(abs(a), abs(b), 1e-300) if numeric else math.inf
        group = ".".join(key.split(".")[:2])
        differing.setdefault(group, []).append((relative, f"{key}: {a} → {b}"))
    n_diff = sum(len(v) for v in differing.values())
    print(f"leaves compared: {len(shared)}; identical: {len(shared) - n_diff}; differing: {n_diff}; "
          f"only in one file: {len(only_one)}")
    for key in only_one[:20]:
        print(f"  only in one file: {key}")
    for group, entries in differing.items():
        relative, where = max(entries)
        print(f"  {group}: {len(entries)} differ; largest relative difference {relative:.3g} at {where}")


if __name__ == "__main__":
    main()
