"""Per-epoch metrics from a training worker that never block training on the tracking server."""

from __future__ import annotations

import os

from pipelines import tracking


def unrecorded(rows: list[dict], recorded: set[tuple[str, int]]) -> list[dict]:
    """The metric rows whose ``(key, step)`` is not in ``recorded`` (from ``recorded_steps``)."""
    return [r for r in rows if (r["key"], r["step"]) not in recorded]


class MetricBuffer:
    """Per-epoch (and per-step) metrics from a training worker that never block training on the tracking server.

    When the server does not answer, the metrics stay here (and travel in each checkpoint via
    ``pending``) and are sent with the next epoch's metrics, or by the driver at the end.

    After a restart an epoch may run twice: once in the attempt that was lost after it logged,
    once again from the last checkpoint Ray Train registered (which can be older than the last
    one reported: a worker that dies within a second or two of a report can take it along).
    Each ``(key, step)`` is recorded once: the buffer reads what the run already has when it
    first reaches the server, and drops rows recorded before (the first attempt's values stay).
    """

    def __init__(self, run: tracking.Run, pending: list[dict] | None = None):
        self.run = run
        self.pending: list[dict] = list(pending or [])
        self.recorded: set[tuple[str, int]] | None = None  # read from the server on first contact
        self.away = False  # the last send failed: step points wait for the next epoch's send
        # Fail fast inside workers (MLflow otherwise retries for minutes); the driver keeps the defaults.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"

    def log(self, metrics: dict[str, float], step: int) -> bool:
        """Queue ``metrics`` and try to send everything queued; returns whether it all arrived."""
        self.pending += tracking.metric_rows(metrics, step)
        try:
            if self.recorded is None:
                self.recorded = self.run.recorded_steps()
            self.pending = unrecorded(self.pending, self.recorded)
            self.run.log_metric_rows(self.pending)
        except Exception as err:  # any transport or server error: keep the rows, train on
            print(
                f"warning: MLflow at {self.run.uri} did not take metrics ({type(err).__name__}); "
                f"{len(self.pending)} buffered, sent when it answers again",
                flush=True,
            )
            self.away = True
            return False
        self.pending, self.away = [], False
        return True

    def log_step(self, metrics: dict[str, float], step: int) -> bool:
        """``log`` for the points inside an epoch; while the server is away they only queue, so a hung
        server costs one timeout and one warning per epoch (the epoch's ``log``), not one per point."""
        if self.away:
            self.pending += tracking.metric_rows(metrics, step)
            return False
        return self.log(metrics, step)
