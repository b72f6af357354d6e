"""Is RankMe good enough to select trials by? Its Spearman correlation with linear top-1 over one real search.

    .venv/bin/python benchmarks/rankme_vs_linear.py [--trials 10] [--epochs 2] [--train-images 5000]

Runs one random search of SimCLR on labeled Fashion-MNIST over the augmentation space plus
the temperature (so that trials differ in quality), each trial probed at the end with both
the linear probe (needs labels) and RankMe (does not). It prints each trial, the Spearman
rank correlation of final RankMe with linear top-1 and, for comparison, that of the per-epoch
kNN probe (what searches act on when there are labels), and the linear top-1 lost by picking
the trial with the highest RankMe instead of the best one. The last line reads
`rankme_vs_linear spearman_rankme=X spearman_epoch_knn=Y regret_points=Z trials=N`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from search_bench import search_arguments, search_base_config

from pipelines.results.tables import format_table
from pipelines.search.tune import SearchSettings, run_search

SPACE = """\
data.augment.crop_scale: {choice: [[0.08, 1.0], [0.2, 1.0], [0.35, 1.0], [0.5, 1.0]]}
data.augment.jitter_strength: {uniform: [0.0, 0.8]}
data.augment.blur_p: {uniform: [0.0, 0.8]}
method.temperature: {loguniform: [0.05, 1.0]}
"""


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho: the Pearson correlation of the ranks (ties get their mean rank)."""

    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = x.argsort()
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # ties: mean rank
            r[x == value] = r[x == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    args = search_arguments(trials=10, epochs=2, train_images=5000).parse_args()
    cfg = search_base_config(args, "train.timeout_s=3600", f"train.seed={args.seed}")
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "rankme_check.yaml"
        space.write_text(SPACE)
        result = run_search(cfg, SearchSettings(space=str(space), num_samples=args.trials, seed=args.seed))
    trials = [t for t in result.trials if "probe/linear_top1" in t["metrics"] and "probe/rankme" in t["metrics"]]
    linear = [t["metrics"]["probe/linear_top1"] for t in trials]
    rank_me = [t["metrics"]["probe/rankme"] for t in trials]
    knn = [t["metrics"].get("probe/epoch_knn_top1", float("nan")) for t in trials]
    keys = sorted({k for t in trials for k in t["params"]})
    rows = [[*(t["params"].get(k) for k in keys), lin, r, k] for t, lin, r, k in zip(trials, linear, rank_me, knn, strict=True)]
    print(format_table([*keys, "linear", "RankMe", "epoch kNN"], sorted(rows, key=lambda r: -r[-3])))
    rho_rankme, rho_knn = spearman(rank_me, linear), spearman(knn, linear)
    regret = (max(linear) - linear[int(np.argmax(rank_me))]) * 100
    print(f"MLflow experiment {result.experiment!r} in {result.tracking_uri}")
    print(
        f"rankme_vs_linear spearman_rankme={rho_rankme:.2f} spearman_epoch_knn={rho_knn:.2f} "
        f"regret_points={regret:.1f} trials={len(trials)}"
    )


if __name__ == "__main__":
    main()
