"""A real 2-node Ray cluster on 127.0.0.1: a head and a worker node, each with its own raylet and resources.

The session's single-node Ray is stopped first (one Ray instance at a time); later tests start it again.
"""

from __future__ import annotations

import threading

import pytest

from pipelines import tracking
from pipelines.config import build_config
from pipelines.train import pretrain
from tests.conftest import TINY_RUN, TWO_WORKERS, measured

TINY = [*TINY_RUN, TWO_WORKERS, "train.placement_strategy=SPREAD"]  # a worker on each node


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    import ray.data
    from ray.cluster_utils import Cluster

    ray.shutdown()
    # 2 logical CPUs per node: a 0.5-CPU training worker plus room for Ray Data read tasks on each.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def _config(shards, tmp_path, *overrides):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    paths = [f"data.shards={shards}", f"tracking.runs_dir={tmp_path / 'runs'}", f"tracking.tracking_uri={uri}"]
    return build_config({}, [*paths, *TINY, *overrides])


def _task_nodes(*parts: str) -> set[str]:
    """Nodes that ran Ray Data tasks whose name holds one of ``parts``, from Ray's own task records.

    (Ray Data may fuse the read and the views into one task: ``ReadParquet->...->MapBatches(ViewsFromPNG)``.)
    """
    from ray.util.state import list_tasks

    tasks = list_tasks(filters=[("type", "=", "NORMAL_TASK")], limit=10_000, raise_on_missing_output=False)
    return {t.node_id for t in tasks if any(part in t.name for part in parts) and t.node_id}


class _AnnounceEpochs:
    """Ray Train callback (runs in the controller): tells a named actor each epoch reported."""

    def after_report(self, run_context, metrics, checkpoint):
        import ray

        ray.get(ray.get_actor("epoch-gate").reported.remote(metrics[0]["epoch"]))

    def after_exception(self, run_context, worker_exceptions):
        pass


@pytest.mark.e2e
def test_run_spans_both_nodes_and_finishes_when_one_is_removed(two_nodes, fmnist_shards, tmp_path):
    """Epochs 1-2 run on both nodes; then the worker node goes away and the run finishes on the head."""
    import asyncio

    import ray
    from ray.train import UserCallback
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster, worker = two_nodes
    head_id, worker_id = cluster.head_node.node_id, worker.node_id

    @ray.remote(num_cpus=0)
    class EpochGate:
        def __init__(self):
            self.reached = {}

        def _event(self, epoch):
            return self.reached.setdefault(epoch, asyncio.Event())

        async def reported(self, epoch):
            self._event(epoch).set()

        async def wait_for(self, epoch):
            await self._event(epoch).wait()

    # On the head: the gate must outlive the worker node (the controller calls it after every report).
    on_head = NodeAffinitySchedulingStrategy(head_id, soft=False)
    gate = EpochGate.options(name="epoch-gate", scheduling_strategy=on_head).remote()
    callback = type("AnnounceEpochs", (_AnnounceEpochs, UserCallback), {})()
    box = {}

    def run():
        try:
            # All 4 shard files every epoch (no max_train_images), so that there are read tasks to spread.
            box["result"] = pretrain(_config(fmnist_shards, tmp_path, "data.max_train_images=null"), [callback])
        except BaseException as err:  # re-raised in the test's thread
            box["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    ray.get(gate.wait_for.remote(2), timeout=300)  # epoch 2 is checkpointed: now the node goes away
    cluster.remove_node(worker, allow_graceful=False)
    thread.join(timeout=600)
    if "error" in box:
        raise box["error"]
    result = box["result"]
    run = tracking.get_run(result.tracking_uri, result.run_id)
    assert run.info.status == "FINISHED"
    assert len(tracking.search_runs(result.tracking_uri, "rayssl")) == 1
    assert sorted(s for s, _ in tracking.metric_history(result.tracking_uri, result.run_id, "train/loss")) == [1, 2, 3]
    starts = {int(k.rsplit("_", 1)[1]): set(v.split(",")) for k, v in run.data.tags.items() if "worker_nodes.from_epoch_" in k}
    assert starts[1] == {head_id, worker_id}  # one worker per node at first
    assert len(starts) == 2 and starts[max(starts)] == {head_id}  # after the restart, both on the node left
    # Both nodes read shard rows: Ray Data's read and decode tasks ran on each. (Which node gets
    # which task is Ray's best-effort SPREAD, so the two kinds are counted together.)
    assert _task_nodes("ReadParquet", "ViewsFromPNG") == {head_id, worker_id}
    # above chance (0.1) with room: a 512-image tiny run once gave 0.285, so 0.3 sat inside its spread
    measured("probe/linear_top1", result.metrics["probe/linear_top1"], above=0.15)
