"""A Ray worker ended by SIGTERM says nothing: no "Exception ignored ... SystemExit: 1" traceback.

Ray ends a worker it no longer needs with SIGTERM: a Tune trial actor torn down as a search ends
(one it had just started for a trial that will not run, in the case seen), a Ray Data coordinator.
The worker's handler (``ray._private.worker``'s ``sigterm_handler``) raises ``SystemExit`` in the
main thread. When the signal lands while Python runs a weakref callback or a ``__del__`` (the
garbage collector, often, as the worker winds down), Python cannot raise it there, so it prints it
through ``sys.unraisablehook`` as a traceback, which Ray forwards to the driver's terminal after a
normal ending; the worker exits all the same (Ray has recorded the exit). ``quiet_sigterm_exit``,
run in every worker by ``cluster.ensure_ray`` (``worker_process_setup_hook``), drops exactly those
and hands every other unraisable exception to the hook before it.
"""

from __future__ import annotations

import sys
from typing import Any

_previous_hook = sys.unraisablehook


def from_rays_sigterm(unraisable: Any) -> bool:
    """True for the ``SystemExit`` that Ray's SIGTERM handler raised (its frame is in the traceback)."""
    if not isinstance(unraisable.exc_value, SystemExit):
        return False
    tb = unraisable.exc_traceback
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "sigterm_handler" and frame.f_globals.get("__name__", "").startswith("ray."):
            return True
        tb = tb.tb_next
    return False


def _hook(unraisable: Any) -> None:
    if not from_rays_sigterm(unraisable):
        _previous_hook(unraisable)


def quiet_sigterm_exit() -> None:
    """Install the hook in this process (once)."""
    global _previous_hook
    if sys.unraisablehook is not _hook:
        _previous_hook = sys.unraisablehook
        sys.unraisablehook = _hook


# Ray's own notices in its workers that say nothing to a rayssl user, held back unless --verbose:
# Ray Data's "Progress bars disabled" (rayssl turns them off: one line per epoch per dataset is its own), and
# the deprecation warnings Ray's internals raise about Ray's own APIs (Ray Train's DatasetManager sets
# ``ExecutionOptions.exclude_resources``), which no rayssl setting can change.
_RAY_DATA_PROGRESS_LOGGER = "ray.data._internal.progress"


def _not_progress_bars_notice(record) -> bool:
    return not record.getMessage().startswith("Progress bars disabled")


def quiet_ray_notices() -> None:
    """Drop Ray's own notices above in this process (once)."""
    import logging
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    warnings.filterwarnings("ignore", category=RayDeprecationWarning, module=r"ray\.")
    progress = logging.getLogger(_RAY_DATA_PROGRESS_LOGGER)
    if _not_progress_bars_notice not in progress.filters:
        progress.addFilter(_not_progress_bars_notice)


def quiet_worker() -> None:
    """Every local Ray worker's setup hook (``cluster.ensure_ray``): no SIGTERM traceback, and unless
    ``--verbose`` (RAYSSL_VERBOSE, which the workers inherit), none of Ray's notices above."""
    import os

    quiet_sigterm_exit()
    if not os.environ.get("RAYSSL_VERBOSE"):
        quiet_ray_notices()
