"""ASHA against plain random search: the same sampled configs, the same per-trial budget.

    .venv/bin/python benchmarks/asha_vs_random.py [--trials 6] [--epochs 3] [--train-images 5000]

Both searches draw the same `--trials` configs from the same space (one seed) and
run them through `rayssl tune`'s `run_search`, so the only difference is the
scheduler: random search trains every trial for `--epochs` epochs, ASHA stops the
weaker ones early on the per-epoch kNN probe. It reports the best final linear
top-1 of each and the trial-epochs each spent. The last line reads
`asha_vs_random best_gap_points=X trial_epochs_ratio=Y target: gap<=0.5 ratio<=0.33`.
"""

from __future__ import annotations

import time

from search_bench import search_arguments, search_base_config

from pipelines.search.tune import SearchSettings, run_search


def main() -> None:
    parser = search_arguments(trials=6, epochs=3, train_images=5000)
    parser.add_argument("--space", default="augment")
    args = parser.parse_args()
    cfg = search_base_config(args, f"probe.max_test_images={args.probe_images}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outcome = {}
    for scheduler in ("none", "asha"):
        settings = SearchSettings(
            space=args.space, scheduler=scheduler, num_samples=args.trials, seed=args.seed, name=f"bench-{scheduler}-{stamp}"
        )
        t0 = time.perf_counter()
        result = run_search(cfg, settings)
        probed = [t for t in result.trials if "probe/linear_top1" in t["metrics"]]
        outcome[scheduler] = {
            "best": max(t["metrics"]["probe/linear_top1"] for t in probed),
            "trial_epochs": sum(int(t["metrics"].get("epochs", 0)) for t in result.trials),
            "wall_s": time.perf_counter() - t0,
            "stopped": sum(t["stopped_early"] for t in result.trials),
        }
    rnd, asha = outcome["none"], outcome["asha"]
    print(
        f"\nspace {args.space!r}, {args.trials} trials (same configs), up to {args.epochs} epochs on {args.train_images} images"
    )
    for name, o in (("random", rnd), ("asha", asha)):
        print(
            f"{name:7s} best linear top-1 {o['best']:.4f}  trial-epochs {o['trial_epochs']:3d}  "
            f"stopped early {o['stopped']}  wall {o['wall_s']:.0f} s"
        )
    gap = 100 * (rnd["best"] - asha["best"])
    ratio = asha["trial_epochs"] / rnd["trial_epochs"]
    print(f"asha_vs_random best_gap_points={gap:.2f} trial_epochs_ratio={ratio:.2f} target: gap<=0.5 ratio<=0.33")


if __name__ == "__main__":
    main()
