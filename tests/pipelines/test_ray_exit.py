"""Ray's SIGTERM exit inside a finalizer prints no traceback; every other unraisable exception still does."""

from __future__ import annotations

import sys
import types

from pipelines import ray_exit


def _unraisable(func) -> types.SimpleNamespace:
    """What Python hands ``sys.unraisablehook`` for an exception raised where it cannot propagate."""
    try:
        func()
    except BaseException as err:  # noqa: BLE001  the exception is the data
        return types.SimpleNamespace(exc_type=type(err), exc_value=err, exc_traceback=err.__traceback__, object=None)
    raise AssertionError("func raised nothing")


def _rays_handler():
    # the handler as Ray defines it, in its module (ray._private.worker), raising as Ray does
    namespace = {"__name__": "ray._private.worker"}
    exec("def sigterm_handler(signum=15, frame=None):\n    raise SystemExit(1)\n", namespace)
    return namespace["sigterm_handler"]


def _ours():
    raise SystemExit(1)


def test_only_the_exit_rays_sigterm_handler_raised_is_dropped(monkeypatch):
    handler = _rays_handler()
    assert ray_exit.from_rays_sigterm(_unraisable(lambda: handler()))
    assert not ray_exit.from_rays_sigterm(_unraisable(_ours))  # a SystemExit of anyone else's
    assert not ray_exit.from_rays_sigterm(_unraisable(lambda: [][1]))

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    ray_exit.quiet_sigterm_exit()
    ray_exit.quiet_sigterm_exit()  # twice: installed once, still chained to the hook before it
    assert sys.unraisablehook is ray_exit._hook
    sys.unraisablehook(_unraisable(lambda: handler()))
    other = _unraisable(lambda: [][1])
    sys.unraisablehook(other)
    assert seen == [other]


FINALIZED = """
import gc, sys
from pipelines import ray_exit
namespace = {"__name__": "ray._private.worker"}
exec("def sigterm_handler(signum=15, frame=None):\\n    raise SystemExit(1)\\n", namespace)
class Finalized:
    def __del__(self):
        namespace["sigterm_handler"]()  # SIGTERM landing while the collector runs a finalizer
if sys.argv[1] == "quiet":
    ray_exit.quiet_sigterm_exit()
Finalized()
gc.collect()
print("still running")
"""


def test_a_worker_with_the_hook_prints_no_traceback_for_it():
    import subprocess

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", FINALIZED, mode], capture_output=True, text=True, timeout=60, check=True)

    loud = run("loud")
    assert "Exception ignored in" in loud.stderr and "SystemExit: 1" in loud.stderr  # what reached the terminal
    quiet = run("quiet")
    assert quiet.stderr == "" and quiet.stdout == "still running\n"


NOTICES = """
import logging, sys, warnings
from ray.util.annotations import RayDeprecationWarning
from pipelines import ray_exit
logging.basicConfig(format="%(message)s")
ray_exit.quiet_worker()
logging.getLogger("ray.data._internal.progress").warning("Progress bars disabled. To enable, set ...")
logging.getLogger("ray.data._internal.progress").warning("a progress warning of another kind")
warnings.warn_explicit("Ray's own API", RayDeprecationWarning, "execution_options.py", 1, module="ray.data.x")
warnings.warn_explicit("a user's API", RayDeprecationWarning, "mine.py", 1, module="mine")
"""


def test_a_worker_drops_rays_own_notices_unless_verbose():
    import os
    import subprocess

    def stderr(**env: str) -> str:
        environ = {k: v for k, v in os.environ.items() if k != "RAYSSL_VERBOSE"} | env
        return subprocess.run(
            [sys.executable, "-c", NOTICES], capture_output=True, text=True, timeout=60, check=True, env=environ
        ).stderr

    quiet = stderr()
    assert "Progress bars disabled" not in quiet and "Ray's own API" not in quiet
    assert "a progress warning of another kind" in quiet and "a user's API" in quiet  # only those two are dropped
    loud = stderr(RAYSSL_VERBOSE="1")
    assert "Progress bars disabled" in loud and "Ray's own API" in loud
