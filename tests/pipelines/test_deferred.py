"""Deferred: a Ray Data callable that the actors holding a dataset's plan can unpickle without torch."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipelines.deferred import Deferred

REPO = Path(__file__).resolve().parents[2]


def test_the_view_stage_unpickles_without_torch_and_makes_views_when_called(tmp_path):
    from pipelines.build import view_policy
    from pipelines.config import build_config
    from pipelines.stream import ViewsFromShards

    manifest = {"channels": 1, "image_size": [28, 28], "mode": "L", "classes": [], "splits": {}}
    stage = Deferred(ViewsFromShards(view_policy(build_config(), manifest)))
    (tmp_path / "stage.pkl").write_bytes(pickle.dumps(stage))
    # a fresh process, as Ray's coordinator actors are: unpickling imports neither torch nor ssl_models
    probe = (
        "import pickle, sys; stage = pickle.loads(open(sys.argv[1], 'rb').read()); "
        "print(sorted(m for m in ('torch', 'ssl_models', 'pipelines.stream') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "stage.pkl")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # called, it is the stage: two uint8 views of each image
    from pipelines.data import encode_png

    image = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    batch = {"image": np.array([encode_png(image)] * 4, dtype=object), "id": np.array(["a", "b", "c", "d"], dtype=object)}
    (views,) = pickle.loads(pickle.dumps(stage))(batch)  # Ray Data takes the parts a task yields
    assert sorted(views) == ["view_0", "view_1"] and views["view_0"].shape[0] == 4
