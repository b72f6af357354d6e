"""A searched augmentation recipe against the default one, at equal budget, on several seeds.

    .venv/bin/python benchmarks/searched_vs_default.py --search augsearch-simclr --method simclr \
        --write-config configs/simclr_fmnist.yaml [--epochs 2] [--seeds 0,1] [--runs-dir rayssl-runs-search]

Reads the best trial's settings from the `rayssl tune` search `--search` (its MLflow parent run's
`rayssl.best_params`), writes them as the method's config (`--write-config`: the demo's base config,
the method, and the searched `data.augment` values), then pretrains the method with the default
augmentations and with the searched ones, on the same budget, seeds and probes, every run through
`pipelines.train.pretrain` into the MLflow experiment `searched-vs-default-<method>`.
The last line reads `searched_vs_default method=M gain_points=G default=D±d searched=S±s`:
the searched mean linear top-1 minus the default's, in points, and each mean ± half the range over seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from pipelines import tracking
from pipelines.cluster import ensure_ray
from pipelines.config import load_config
from pipelines.results.tables import format_table
from pipelines.train import pretrain

BASE = "configs/demo_fmnist.yaml"


def best_params(uri: str, search: str) -> dict:
    """The searched values of the search's best trial."""
    parents = tracking.find_runs(uri, search, {"rayssl.kind": "tune"})
    if not parents or "rayssl.best_params" not in parents[0].data.tags:
        raise SystemExit(f"{search}: no finished rayssl tune search with a best trial in {uri}")
    # MLflow params are text: "0.71", "[0.2, 1.0]"; YAML reads them back as numbers and lists
    return {
        k: yaml.safe_load(v) if isinstance(v, str) else v
        for k, v in json.loads(parents[0].data.tags["rayssl.best_params"]).items()
    }


def write_config(path: Path, method: str, params: dict, search: str) -> None:
    tree = yaml.safe_load(Path(BASE).read_text())
    tree["method"]["name"] = method
    augment = tree["data"].setdefault("augment", {})
    for key, value in params.items():
        augment[key.removeprefix("data.augment.")] = [round(v, 3) for v in value] if isinstance(value, list) else round(value, 3)
    head = f"# {method} on Fashion-MNIST: the demo's budget and recipe, with the augmentations `rayssl tune` found\n"
    head += f"# (search {search!r}: tune_spaces/augment_grey.yaml, random search with ASHA; docs/results.md).\n"
    path.write_text(head + yaml.safe_dump(tree, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--search", required=True, help="the rayssl tune experiment whose best trial to adopt")
    parser.add_argument("--method", required=True)
    parser.add_argument("--write-config", required=True, help="where to write the adopted config")
    parser.add_argument("--search-runs-dir", default="rayssl-runs", help="where the search's MLflow store is")
    parser.add_argument("--runs-dir", default="rayssl-runs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    params = best_params(tracking.resolve_tracking_uri(None, args.search_runs_dir), args.search)
    write_config(Path(args.write_config), args.method, params, args.search)
    print(f"adopted {params} into {args.write_config}")

    experiment = f"searched-vs-default-{args.method}"
    common = [f"train.epochs={args.epochs}", f"tracking.runs_dir={args.runs_dir}", f"tracking.experiment={experiment}"]
    common += ["probe.labels_per_class=[]"]  # the linear and kNN probes are what this compares
    ensure_ray()
    results: dict[str, list[dict]] = {"default": [], "searched": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, path in (("default", BASE), ("searched", args.write_config)):
            extra = [f"method.name={args.method}", f"train.seed={seed}", f"tracking.run_name={args.method}-{name}-s{seed}"]
            results[name].append(pretrain(load_config(path, common + extra)).metrics)

    def stat(name: str, key: str) -> tuple[float, float]:
        values = [m[key] for m in results[name]]
        return float(np.mean(values)), (max(values) - min(values)) / 2

    rows = []
    for name in results:
        (lin, lin_h), (knn, knn_h) = stat(name, "probe/linear_top1"), stat(name, "probe/knn_top1")
        rows.append([name, f"{lin:.4f} ± {lin_h:.4f}", f"{knn:.4f} ± {knn_h:.4f}", len(results[name])])
    print(format_table(["augmentations", "linear top-1", "kNN top-1", "seeds"], rows))
    (d, dh), (s, sh) = stat("default", "probe/linear_top1"), stat("searched", "probe/linear_top1")
    print(
        f"searched_vs_default method={args.method} gain_points={100 * (s - d):+.1f} "
        f"default={d:.4f}±{dh:.4f} searched={s:.4f}±{sh:.4f} (MLflow experiment {experiment})"
    )


if __name__ == "__main__":
    main()
