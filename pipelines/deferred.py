"""A Ray Data callable whose state is unpickled in the task that calls it, not where the dataset's plan is held.

Ray Train's DatasetManager and Ray Data's SplitCoordinator are actors that unpickle a dataset's whole plan
to run it, though they never call its functions. A view policy pulls in torch and ssl_models there (~2 s of
CPU in each, each run). Holding the callable as bytes keeps those actors light; the tasks unpickle it once
each. This module imports nothing but the standard library, so that unpickling it costs nothing either.
"""

from __future__ import annotations

import pickle
from typing import Any


class Deferred:
    """``Deferred(fn)`` calls ``fn`` where it is called, unpickling it there on the first call."""

    def __init__(self, fn: Any):
        from ray import cloudpickle  # the driver's side: fn may be defined anywhere, as Ray Data's own pickling allows

        self._payload = cloudpickle.dumps(fn)
        self._fn = None

    def __call__(self, batch):
        if self._fn is None:
            self._fn = pickle.loads(self._payload)
        return self._fn(batch)

    def __getstate__(self) -> dict:
        return {"_payload": self._payload, "_fn": None}  # only the bytes travel
