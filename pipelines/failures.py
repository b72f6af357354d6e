"""Which worker errors Ray Train retries: process and node faults yes, errors a restart cannot fix no.

Ray Train restarts the worker group on any worker error, up to ``train.max_failures``
times. That is right for a killed process or a lost node, and wrong for bad data or a
bad config: the restart meets the same error, and the user gets the same traceback
twice. ``DataError`` and ``ConfigError`` raised anywhere in a worker (the loop, or a Ray
Data task feeding it) end the run at once; the driver re-raises the cause as one line.

Ray 2.60 takes no failure policy through its public API, so ``fail_fast_on_unfixable_errors``
swaps the factory the trainer calls for one that wraps the default policy. The default
policy still decides every other error.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from pipelines import storage
from pipelines.config import ConfigError
from pipelines.data import DataError

UNFIXABLE_ERRORS = (DataError, ConfigError)


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the message names the epoch and step. Never retried: a restart would diverge again."""


# How a remote traceback's last line names one of them: Ray Data's UserCodeException keeps the
# UDF's error only as text (its __cause__ does not cross the process boundary).
_NAMED_IN_TEXT = re.compile(r"pipelines\.(data\.DataError|config\.ConfigError): (.+)$", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_chain(err: BaseException | None) -> Iterator[BaseException]:
    """``err`` and every error behind it: causes, contexts, Ray's ``cause`` and each failed worker's error."""
    seen: set[int] = set()
    pending = [err]
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        ray_cause = getattr(e, "cause", None)  # RayTaskError's original error (an exception, or None)
        pending += [e.__cause__, e.__context__, ray_cause if isinstance(ray_cause, BaseException) else None]
        pending += list(getattr(e, "worker_failures", {}).values())  # Ray Train's WorkerGroupError


def unfixable_cause(err: BaseException | None) -> Exception | None:
    """The ``DataError`` or ``ConfigError`` behind ``err`` (a Ray Train or Ray Data wrapper), or None."""
    named_in_text = None
    for e in error_chain(err):
        # not Ray's RayTaskError(DataError), a wrapper that is also an instance of the error it carries: its text
        # is Ray's traceback, and the error itself is its ``cause``, next in the chain
        if isinstance(e, UNFIXABLE_ERRORS) and not type(e).__module__.startswith("ray."):
            return e
        found = _NAMED_IN_TEXT.search(_ANSI.sub("", str(e)))
        if found and named_in_text is None:
            kind = DataError if found.group(1) == "data.DataError" else ConfigError
            named_in_text = kind(found.group(2).split(" [repeated ")[0].strip())
    return named_in_text


@contextlib.contextmanager
def one_line_errors(object_store: bool = False) -> Iterator[None]:
    """Re-raise the error a user fixes, found behind any error inside (Ray wraps it), as a fresh one-line exception.

    Bad data or config (``unfixable_cause``) everywhere: in each worker (Ray prints its traceback) and
    around ``fit`` on the driver (Ray wraps it in a ``WorkerGroupError``). ``object_store``: first an
    object-store failure (``storage.object_store_cause``: the endpoint went away mid-run, the credentials
    expired), on the driver only: in a worker it stays an error Ray Train may retry.
    ``RAYSSL_TRACEBACK=1`` keeps the original.
    """
    try:
        yield
    except Exception as err:
        cause = (object_store and storage.object_store_cause(err)) or unfixable_cause(err)
        if cause is None or os.environ.get("RAYSSL_TRACEBACK"):
            raise
        text = str(cause).strip()
        raise type(cause)(text.splitlines()[0] if text else type(cause).__name__) from None


def fail_fast_on_unfixable_errors() -> None:
    """Make every TorchTrainer of this process raise unfixable worker errors instead of retrying them."""
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision
    from ray.train.v2.api import data_parallel_trainer

    class RetryOnlyFixableFailures(DefaultFailurePolicy):
        def make_decision(self, training_failed_error):
            if unfixable_cause(training_failed_error) is not None:
                return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    data_parallel_trainer.create_failure_policy = RetryOnlyFixableFailures
