"""How far each accuracy threshold in the tests sits from what the tests measure, over several full runs.

    RAYSSL_MEASURED=/tmp/measured-1.jsonl make test   # once per run; tests call tests.conftest.measured()
    .venv/bin/python benchmarks/threshold_spread.py /tmp/measured-*.jsonl

One line per test and metric: the runs, the mean, the standard deviation, the threshold and its
distance from the mean in standard deviations (``margin_sd``; the suite's rule is at least 5). A
metric that did not vary at all (a seeded, deterministic computation) reports ``deterministic``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("logs", nargs="+", help="one RAYSSL_MEASURED file per full run of the suite")
    args = parser.parse_args()
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    bounds: dict[tuple[str, str], tuple[float | None, float | None]] = {}
    for log in args.logs:
        with open(log) as rows:
            for line in rows:
                row = json.loads(line)
                key = (row["test"], row["name"])
                values[key].append(row["value"])
                bounds[key] = (row["above"], row["below"])
    worst = float("inf")
    for (test, name), seen in sorted(values.items()):
        mean = statistics.fmean(seen)
        sd = statistics.stdev(seen) if len(seen) > 1 else float("nan")
        above, below = bounds[(test, name)]
        distances = [abs(mean - t) for t in (above, below) if t is not None]
        if sd == 0:
            margin = "deterministic"
        elif sd != sd:
            margin = "one run"
        else:
            margin_sd = min(distances) / sd
            worst = min(worst, margin_sd)
            margin = f"margin_sd={margin_sd:.1f}"
        threshold = " ".join(f"{label} {t}" for label, t in (("above", above), ("below", below)) if t is not None)
        shown = [round(v, 3) for v in seen]
        print(f"{test} {name}: runs={len(seen)} values={shown} mean={mean:.3f} sd={sd:.4f} {threshold} {margin}")
    print(f"threshold_spread worst_margin_sd={worst:.1f} target=5")


if __name__ == "__main__":
    main()
