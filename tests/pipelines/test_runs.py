"""The one rule that picks the best run: the highest final metric, runs without it left out."""

from __future__ import annotations

from pipelines import names
from pipelines.results.runs import RunRow, best_run, varying_params


def _row(name, status="FINISHED", method="simclr", **metrics):
    return RunRow(name, f"id-{name}", status, {"method.name": method, "optim.lr": name}, metrics)


def test_best_run_is_the_highest_linear_top1():
    rows = [
        _row("a", **{names.LINEAR_TOP1: 0.71}),
        _row("b", **{names.LINEAR_TOP1: 0.83}),
        _row("c", **{names.LINEAR_TOP1: 0.79}),
    ]
    assert best_run(rows).name == "b"
    assert best_run(rows, names.KNN_TOP1) is None  # no run has it


def test_best_run_leaves_out_failed_and_unprobed_runs():
    failed = _row("failed", status="FAILED")  # died before its probes: no final metric
    stopped = _row("stopped", status="KILLED", **{names.EPOCH_KNN_TOP1: 0.99})  # per-epoch only, never the final
    probed = _row("probed", **{names.LINEAR_TOP1: 0.42, names.RANKME: 7.0})
    assert best_run([failed, stopped, probed]).name == "probed"
    assert best_run([failed, stopped]) is None
    assert best_run([]) is None
    unlabeled = [_row("u1", **{names.RANKME: 5.0}), _row("u2", **{names.RANKME: 9.5})]
    assert best_run(unlabeled) is None and best_run(unlabeled, names.RANKME).name == "u2"


def test_best_run_reads_trial_dicts_through_a_getter():
    trials = [{"trial_id": "t1", "metrics": {names.LINEAR_TOP1: 0.5}}, {"trial_id": "t2", "metrics": {}}]
    assert best_run(trials, metrics=lambda t: t["metrics"])["trial_id"] == "t1"


def test_varying_params_are_the_searched_keys_without_the_method():
    rows = [_row("0.1", method="simclr"), _row("0.2", method="vicreg")]
    assert varying_params(rows) == ["optim.lr"]  # method.name has its own column
