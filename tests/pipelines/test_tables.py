"""The run tables: what each column says, in which order the rows come."""

from __future__ import annotations

import math

from pipelines import names
from pipelines.results.runs import RunRow
from pipelines.results.tables import comparison_table, format_table, pretrain_table, trials_table


def _lines(table: str) -> list[list[str]]:
    """The table's cells, row by row, cut where its dashed line puts the columns (headers may have spaces)."""
    lines = table.splitlines()
    spans, start = [], 0
    for dashes in lines[1].split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    return [[line[a:b].strip() for a, b in spans] for line in lines]


def test_format_table_aligns_columns_and_rounds_floats():
    lines = format_table(["a", "long header"], [[0.123456, "x"], [1234.56, "yy"]]).splitlines()
    assert lines[0] == "a       long header" and set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["0.1235", "x"] and lines[3].split() == ["1234.6", "yy"]


def test_trials_table_has_a_method_column_and_the_best_trial_first():
    trials = [
        {
            "trial_id": "t1",
            "method": "simclr",
            "params": {"method.name": "simclr", "optim.lr": "0.1"},
            "status": "FINISHED",
            "stopped_early": False,
            "metrics": {names.LINEAR_TOP1: 0.61, names.KNN_TOP1: 0.55, names.EPOCHS: 2},
        },
        {
            "trial_id": "t2",
            "method": "vicreg",
            "params": {"method.name": "vicreg", "optim.lr": "0.3"},
            "status": "FINISHED",
            "stopped_early": True,
            "metrics": {names.LINEAR_TOP1: 0.72, names.EPOCHS: 1},
        },
        {
            "trial_id": "t3",
            "method": "rotation",
            "params": {"method.name": "rotation", "optim.lr": "0.2"},
            "status": "FAILED",
            "stopped_early": False,
            "metrics": {},
        },
    ]
    header, _, *rows = _lines(trials_table(trials, ranked_by=names.LINEAR_TOP1))
    assert header == ["trial", "method", "optim.lr", "linear", "kNN", "RankMe", "epochs", "status"]
    assert [r[:3] for r in rows] == [["t2", "vicreg", "0.3"], ["t1", "simclr", "0.1"], ["t3", "rotation", "0.2"]]
    assert rows[0][3:] == ["0.7200", "nan", "nan", "1", "early stop"]
    assert rows[2][-2:] == ["0", "FAILED"]
    # a search that did not vary the method still names it (from the trial's run)
    same = [{**t, "params": {"optim.lr": t["params"]["optim.lr"]}} for t in trials]
    assert _lines(trials_table(same, ranked_by=names.LINEAR_TOP1))[2][1] == "vicreg"


def test_comparison_table_columns_and_order():
    params = {"train.num_workers": "2", "train.cpus_per_worker": "0.5", "train.use_gpu": "False"}
    rows = [
        RunRow(
            "a",
            "ia",
            "FINISHED",
            {**params, "method.name": "simclr", "optim.lr": "0.1"},
            {names.LINEAR_TOP1: 0.5, names.KNN_TOP1: 0.4, names.PIXELS_LINEAR_TOP1: 0.75, names.WALL_S: 3600.0},
        ),
        RunRow(
            "b",
            "ib",
            "FINISHED",
            {**params, "method.name": "vicreg", "optim.lr": "0.2"},
            {names.LINEAR_TOP1: 0.6, names.KNN_TOP1: 0.45, names.WALL_S: 1800.0},
        ),
    ]
    header, _, first, second = _lines(comparison_table(rows))
    assert header[:6] == ["run", "method", "optim.lr", "linear", "kNN", "pixels linear"]
    assert first[:5] == ["b", "vicreg", "0.2", "0.6000", "0.4500"] and second[:2] == ["a", "simclr"]
    assert second[header.index("CPU-h")] == "1.0" and second[-1] == "FINISHED"  # 1 h x 2 workers x 0.5 CPU
    assert second[header.index("pixels linear")] == "0.7500" and first[header.index("pixels linear")] == "nan"


def test_pretrain_table_names_the_method():
    header, _, row = _lines(pretrain_table([("simclr", {names.LINEAR_TOP1: 0.8})]))
    assert header[:3] == ["method", "linear top-1", "kNN top-1"] and row[:2] == ["simclr", "0.8000"]
    assert math.isnan(float(row[2]))
