"""Which worker errors Ray Train retries: bad data and bad configs end the run at once, the rest are retried."""

from __future__ import annotations

import pytest
from ray.train import FailureConfig
from ray.train.v2._internal.execution.failure_handling import FailureDecision
from ray.train.v2.api import data_parallel_trainer
from ray.train.v2.api.exceptions import WorkerGroupError

from pipelines.config import ConfigError
from pipelines.data import DataError
from pipelines.failures import fail_fast_on_unfixable_errors, unfixable_cause

# How Ray Data hands a UDF's error to the consumer: as text inside a RayTaskError(UserCodeException).
RAY_DATA_TEXT = (
    "\x1b[36mray::MapBatches(ViewsFromPNG)()\x1b[39m (pid=1, ip=127.0.0.1)\n"
    '  File "pipelines/data.py", line 156, in decode_image_batch\n'
    "pipelines.data.DataError: image 'a/b.png': cannot decode its PNG bytes (OSError); re-run 'rayssl shard'\n\n"
    "The above exception was the direct cause of the following exception:\n"
    "ray.exceptions.UserCodeException: UDF failed to process a data block."
)


def test_unfixable_cause_finds_the_users_error_through_ray_wrappers():
    bad = DataError("x.png: bad")
    assert unfixable_cause(WorkerGroupError("rank 1 failed", {0: RuntimeError("collateral"), 1: bad})) is bad
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ConfigError("method: bad")
    assert isinstance(unfixable_cause(wrapped), ConfigError)
    from_text = unfixable_cause(RuntimeError(RAY_DATA_TEXT))
    assert isinstance(from_text, DataError)
    assert str(from_text) == "image 'a/b.png': cannot decode its PNG bytes (OSError); re-run 'rayssl shard'"
    assert unfixable_cause(WorkerGroupError("killed", {0: RuntimeError("SIGKILL")})) is None


def test_a_ray_task_error_that_is_also_a_data_error_gives_the_data_error_and_one_line():
    """Ray re-raises a task's DataError as RayTaskError(DataError), an instance of both whose text is Ray's
    traceback; the user's error is its ``cause``. (A view task that yields its blocks fails this way.)"""
    from ray.exceptions import RayTaskError

    from pipelines.failures import one_line_errors

    bad = DataError("image 'a/b.png': cannot decode its image bytes (OSError); re-run 'rayssl shard'")
    wrapper = RayTaskError("SplitCoordinator.get", "Traceback (most recent call last):\n  ...", bad).as_instanceof_cause()
    assert isinstance(wrapper, DataError) and unfixable_cause(wrapper) is bad
    assert unfixable_cause(WorkerGroupError("rank 0 failed", {0: wrapper})) is bad
    with pytest.raises(DataError) as caught, one_line_errors():
        raise wrapper
    assert type(caught.value) is DataError and str(caught.value) == str(bad)


def test_policy_raises_unfixable_errors_and_retries_the_rest():
    fail_fast_on_unfixable_errors()
    policy = data_parallel_trainer.create_failure_policy(FailureConfig(max_failures=3))
    assert policy.make_decision(WorkerGroupError("bad data", {0: DataError("x.png: bad")})) == FailureDecision.RAISE
    assert policy.make_decision(WorkerGroupError("bad text", {1: RuntimeError(RAY_DATA_TEXT)})) == FailureDecision.RAISE
    # a lost process is what restarts are for: retried up to max_failures, then raised
    decisions = [policy.make_decision(WorkerGroupError("died", {0: RuntimeError("worker died")})) for _ in range(4)]
    assert decisions == [FailureDecision.RETRY] * 3 + [FailureDecision.RAISE]
