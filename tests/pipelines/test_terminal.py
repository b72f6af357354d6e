"""What a run shows in the terminal: rayssl's per-epoch line once, Ray's own INFO lines only with --verbose."""

from __future__ import annotations

import builtins
import logging
import sys

import pytest
from ray.train.v2._internal.logging.patch_print import redirected_print

from pipelines.cli_args import build_parser
from pipelines.cluster import ray_log_level, say


@pytest.mark.parametrize("writer", ["print", "say"])
def test_epoch_line_is_written_once_even_under_ray_trains_print_patch(capfd, writer):
    # A Ray Train V2 worker: print patched to log, and the root logger has a console handler at INFO.
    console = logging.StreamHandler(sys.stdout)
    root = logging.getLogger()
    root.addHandler(console)
    level, patched = root.level, builtins.print
    root.setLevel(logging.INFO)
    builtins.print = redirected_print
    try:
        assert sys.stdout is not sys.__stdout__  # wrapped (here by pytest; in workers by Ray): print tees
        (print if writer == "print" else say)("epoch 1/2  loss 4.000")
    finally:
        builtins.print = patched
        root.removeHandler(console)
        root.setLevel(level)
    lines = capfd.readouterr().out.splitlines().count("epoch 1/2  loss 4.000")
    assert lines == (2 if writer == "print" else 1)  # print: the defect, twice; say: once


@pytest.mark.parametrize(("env", "level"), [(None, "WARNING"), ("1", "INFO")])
def test_ray_log_level_is_quiet_unless_verbose(monkeypatch, env, level):
    if env is None:
        monkeypatch.delenv("RAYSSL_VERBOSE", raising=False)
    else:
        monkeypatch.setenv("RAYSSL_VERBOSE", env)
    assert ray_log_level() == level


def test_verbose_flag_is_global():
    assert build_parser().parse_args(["--verbose", "compare"]).verbose
    assert not build_parser().parse_args(["compare"]).verbose
