"""cluster.yaml and the KubeRay RayJob, checked without a cloud.

Nothing here starts Ray or reaches AWS or Kubernetes: cluster.yaml goes through the same
preparation and validation that `ray up` runs before it contacts the cloud provider (Ray's
own ray-schema.json plus its cross-field checks), the RayJob is checked for the fields and
rules KubeRay's CRD and validation (ray-operator/controllers/ray/utils/validation.go) impose,
and every documented `rayssl` command is parsed by rayssl's own CLI and config loader.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipelines.cli_args import build_parser
from pipelines.config import build_config, load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "deploy" / "kuberay" / "rayjob.yaml"
DOCKERFILE = ROOT / "deploy" / "kuberay" / "Dockerfile"
CLUSTER_GUIDE = ROOT / "docs" / "cluster.md"  # the README links to it
VENV_BIN = Path(sys.executable).parent

SET_OVERRIDE = re.compile(r"--set\s+([^\s`'\"]+)")
S3_URI = re.compile(r"s3://([a-z0-9.-]+)")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_RAYJOB_NAME = 47  # KubeRay: 53 (RayCluster name) - 6 (the suffix it appends)


# ---------------------------------------------------------------- helpers


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepare_like_ray_up(config: dict) -> dict:
    """What `ray up` does before it talks to AWS (ray.autoscaler._private.commands._bootstrap_config):
    merge Ray's AWS defaults, then validate against ray-schema.json and the cross-field rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def join_continuations(lines: list[str]) -> list[str]:
    """Shell logical lines: a trailing backslash continues onto the next line."""
    out, pending = [], ""
    for line in lines:
        line = line.strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((pending + line).strip())
        pending = ""
    return out


def cluster_yaml_comment_lines() -> list[str]:
    lines = [line.strip() for line in CLUSTER_YAML.read_text().splitlines()]
    return join_continuations([line[1:] for line in lines if line.startswith("#")])


def cluster_guide() -> str:
    """The cluster guide, whole."""
    return CLUSTER_GUIDE.read_text()


def cluster_guide_code_lines() -> list[str]:
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", cluster_guide(), flags=re.S)
    return join_continuations([line for block in blocks for line in block.splitlines()])


def rayjob_entrypoint() -> str:
    return load_yaml(RAYJOB_YAML)["spec"]["entrypoint"]


def rayssl_argvs(lines: list[str]) -> list[list[str]]:
    """The arguments of every `rayssl SUBCOMMAND ...` in ``lines``, alone or as the entrypoint of
    `ray job submit ... -- rayssl ...` (without the word rayssl)."""
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    command = re.compile(rf"^(?:ray job submit .*?--\s+)?(rayssl\s+(?:{'|'.join(sub.choices)})\b.*)$")
    found = (command.match(line) for line in lines)
    return [shlex.split(m.group(1), comments=True)[1:] for m in found if m]


def documented_argvs() -> dict[str, list[list[str]]]:
    return {
        "cluster.yaml": rayssl_argvs(cluster_yaml_comment_lines()),
        "docs/cluster.md": rayssl_argvs(cluster_guide_code_lines()),
        "rayjob.yaml": rayssl_argvs([rayjob_entrypoint()]),
    }


def parse_rayssl(argv: list[str]):
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"rayssl's CLI refuses: rayssl {' '.join(argv)}")


def repo_path(config: str) -> Path:
    """A --config path as the repository holds it (the image keeps the repository at its WORKDIR)."""
    workdir = re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), flags=re.M).group(1).rstrip("/") + "/"
    return ROOT / (config.removeprefix(workdir) if config.startswith(workdir) else config)


def documented_runs(source: str) -> list[tuple[argparse.Namespace, object]]:
    """Each pretrain/tune command of ``source`` with the config it resolves to (its file plus its overrides)."""
    runs = []
    for argv in documented_argvs()[source]:
        if argv[0] in ("pretrain", "tune"):
            args = parse_rayssl(argv)
            overrides = list(args.set or []) + ([f"tracking.tracking_uri={args.tracking_uri}"] if args.tracking_uri else [])
            runs.append((args, load_config(repo_path(args.config), overrides)))
    return runs


def guide_cluster_jobs() -> list[list[str]]:
    """The guide's rayssl commands that `ray job submit` runs on the cluster (the rest run where they are typed)."""
    return rayssl_argvs([line for line in cluster_guide_code_lines() if line.startswith("ray job submit ")])


def guide_bucket() -> str:
    (bucket,) = set(S3_URI.findall(cluster_guide()))
    return bucket


def changed_fields(args: argparse.Namespace, cfg) -> set[str]:
    """The config fields a documented run sets to something other than its config file's value."""
    base = load_config(repo_path(args.config)).flat()
    return {key for key, value in cfg.flat().items() if base[key] != value}


def ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(re.match(r"ray\[[^\]]*\]==(\S+)", d).group(1) for d in deps if d.startswith("ray["))


# ---------------------------------------------------------------- cluster.yaml: Ray's validation


def test_cluster_yaml_passes_rays_own_validation_without_cloud_or_cluster(monkeypatch, tmp_path):
    import ray

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))

    prepared = prepare_like_ray_up(load_yaml(CLUSTER_YAML))

    assert not ray.is_initialized()  # validation needed no Ray instance
    # Our node types replace Ray's defaults (ray.head.default, ray.worker.default) entirely.
    assert set(prepared["available_node_types"]) == {"head", "gpu_worker"}
    assert prepared["head_node_type"] == "head"
    # Ray merges setup_commands in front of the head's and workers' own; every pip is the venv's,
    # so Ray's default head command (`pip install boto3` into the system Python) is gone.
    raw = load_yaml(CLUSTER_YAML)
    assert prepared["head_setup_commands"] == raw["setup_commands"] + raw["head_setup_commands"]
    pips = [c for c in prepared["head_setup_commands"] + prepared["worker_setup_commands"] if "pip install" in c]
    assert pips and all("/rayssl/.venv/bin/pip install" in c for c in pips)


def _unknown_top_level_key(c):
    c["gpu_workers"] = 4


def _fractional_gpu(c):
    c["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5


def _node_type_without_node_config(c):
    del c["available_node_types"]["gpu_worker"]["node_config"]


def _unknown_node_type_field(c):
    c["available_node_types"]["gpu_worker"]["gpus"] = 1


def _min_workers_above_global_max(c):
    c["available_node_types"]["gpu_worker"]["min_workers"] = c["max_workers"] + 1


def _head_type_not_defined(c):
    c["head_node_type"] = "cpu_head"


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (_unknown_top_level_key, jsonschema.ValidationError),
        (_fractional_gpu, jsonschema.ValidationError),
        (_node_type_without_node_config, jsonschema.ValidationError),
        (_unknown_node_type_field, jsonschema.ValidationError),
        (_min_workers_above_global_max, ValueError),
        (_head_type_not_defined, ValueError),
    ],
)
def test_rays_validation_rejects_a_broken_cluster_yaml(mutate, error):
    config = load_yaml(CLUSTER_YAML)
    mutate(config)
    with pytest.raises(error):
        prepare_like_ray_up(config)


# ---------------------------------------------------------------- cluster.yaml: our contract


def test_cluster_has_a_cpu_head_and_an_autoscaling_gpu_worker_type():
    from pipelines.search.tune import TRIAL_DRIVER

    config = load_yaml(CLUSTER_YAML)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU") == 0
    assert head["min_workers"] == 0 and head["max_workers"] == 0
    assert head["resources"].get(TRIAL_DRIVER, 0) >= 1  # rayssl's Tune trial drivers schedule on it

    gpu_types = [t for name, t in types.items() if name != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert len(gpu_types) == 1
    gpu = gpu_types[0]
    assert 0 <= gpu["min_workers"] < gpu["max_workers"] <= config["max_workers"]
    assert gpu["resources"]["CPU"] >= 2  # room for a Train worker and Ray Data's tasks


def test_setup_installs_rayssl_with_make_install_from_the_mounted_repository():
    config = load_yaml(CLUSTER_YAML)
    (remote,) = [r for r, local in config["file_mounts"].items() if local == "."]
    assert f"cd {remote} && make install" in config["setup_commands"]
    assert re.search(r"^install:", (ROOT / "Makefile").read_text(), flags=re.M)
    assert ".gitignore" in config["rsync_filter"]  # the local .venv must not be copied over the node's
    venv_bin = f"{remote}/.venv/bin"
    assert any(venv_bin in c and "PATH" in c for c in config["setup_commands"])


def test_mlflow_server_runs_on_the_heads_private_address():
    config = load_yaml(CLUSTER_YAML)
    (server,) = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    flags = dict(re.findall(r"(--[a-z-]+) (\S+)", server.split("mlflow server", 1)[1]))

    assert re.search(r"HEAD_IP=\$\(hostname -I \| awk '\{print \$1\}'\)", server)
    assert flags["--host"] == '"$HEAD_IP"'  # the private address: not 0.0.0.0, not 127.0.0.1
    assert flags["--backend-store-uri"].startswith("sqlite:////")  # absolute
    assert flags["--artifacts-destination"].startswith("s3://")
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in server
    port = flags["--port"]

    # Every node hands the same server to Ray (and so to drivers and workers) before `ray start`.
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    (worker_start,) = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert f"export MLFLOW_TRACKING_URI=http://$(hostname -I | awk '{{print $1}}'):{port};" in head_start
    assert f"export MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:{port};" in worker_start

    # The flags exist in the installed MLflow's `mlflow server`.
    help_text = subprocess.run(
        [str(VENV_BIN / "mlflow"), "server", "--help"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    for flag in flags:
        assert re.search(rf"\s{re.escape(flag)}\b", help_text), f"mlflow server has no {flag}"


# ---------------------------------------------------------------- documented commands


def test_documented_commands_are_found():
    argvs = documented_argvs()
    assert len(argvs["cluster.yaml"]) >= 2
    assert len(argvs["docs/cluster.md"]) >= 4
    assert len(argvs["rayjob.yaml"]) == 1


@pytest.mark.parametrize("source", ["cluster.yaml", "docs/cluster.md", "rayjob.yaml"])
def test_documented_cluster_runs_are_valid_rayssl_commands(source):
    """Each pretrain/tune command parses, loads its config with its overrides and (tune) passes the
    space checks `rayssl tune` runs before Ray starts; each stores its state in S3 and trains on GPUs."""
    from pipelines.search.tune import check_space_values
    from tune_spaces import read_space

    runs = [a for a in documented_argvs()[source] if a[0] in ("pretrain", "tune")]
    assert runs
    for argv in runs:
        args = parse_rayssl(argv)
        config = repo_path(args.config)
        assert config.is_file(), f"{source}: {args.config} is not in the repository"
        overrides = list(args.set or []) + ([f"tracking.tracking_uri={args.tracking_uri}"] if args.tracking_uri else [])
        cfg = load_config(config, overrides)
        assert cfg.tracking.storage_path and cfg.tracking.storage_path.startswith("s3://"), argv
        assert cfg.train.use_gpu, argv
        if args.command == "tune":
            assert args.name, "a cluster search needs --name to be resumable"
            check_space_values(cfg, read_space(args.space, set(cfg.flat())))


def test_other_documented_rayssl_commands_parse():
    others = [a for argvs in documented_argvs().values() for a in argvs if a[0] not in ("pretrain", "tune")]
    assert {a[0] for a in others} >= {"shard", "compare"}
    for argv in others:
        parse_rayssl(argv)


def test_readme_documents_resuming_both_ways():
    runs = [parse_rayssl(a) for a in documented_argvs()["docs/cluster.md"] if a[0] in ("pretrain", "tune")]
    assert any(a.command == "pretrain" and any(s.startswith("tracking.run_name=") for s in a.set) for a in runs)
    tunes = [a for a in runs if a.command == "tune"]
    resumed = [a for a in tunes if a.resume]
    assert resumed and all(any(t.name == r.name and not t.resume for t in tunes) for r in resumed)
    for words in ("ray up cluster.yaml", "kubectl apply -f deploy/kuberay/rayjob.yaml", "not deployed"):
        assert words in cluster_guide()


def test_every_set_override_is_a_valid_config():
    texts = {"cluster.yaml": CLUSTER_YAML.read_text(), "docs/cluster.md": cluster_guide(), "rayjob.yaml": rayjob_entrypoint()}
    for source, text in texts.items():
        overrides = SET_OVERRIDE.findall(text)
        assert overrides, source
        for item in overrides:
            build_config(overrides=[item])  # raises ConfigError naming the field


def test_one_bucket_everywhere():
    """One placeholder bucket, so replacing it once in each file sets up a cluster."""
    texts = [CLUSTER_YAML.read_text(), RAYJOB_YAML.read_text(), cluster_guide()]
    buckets = {b for text in texts for b in S3_URI.findall(text)}
    assert len(buckets) == 1, buckets


# ---------------------------------------------------------------- the guide's workload: ImageNet on the cluster

IMAGENET_CONFIG = "configs/imagenet_resnet50.yaml"
IMAGENET100_CONFIG = "configs/imagenet100_resnet18.yaml"
IMAGENET_TRAIN_PHOTOS = 1_281_167  # ILSVRC-2012's train split
PATH_FIELDS = {"data.shards", "tracking.runs_dir", "tracking.storage_path", "tracking.run_name", "tracking.tracking_uri"}


def test_the_guide_shards_an_imagenet_style_s3_folder_with_ray_tasks_on_the_cluster():
    guide = cluster_guide()
    bucket = guide_bucket()
    for split in ("train", "val"):
        assert f"s3://{bucket}/imagenet/{split}/<wnid>/*.JPEG" in guide
    shards = [parse_rayssl(a) for a in guide_cluster_jobs() if a[0] == "shard"]
    (imagenet,) = [a for a in shards if a.source == f"s3://{bucket}/imagenet"]
    assert imagenet.out == f"s3://{bucket}/shards/imagenet"
    # Ray tasks (not --serial), each photo at its own size with the shorter side capped at 512 px.
    assert not imagenet.serial and imagenet.size is None and imagenet.max_size == 512
    assert not imagenet.strict  # bad files are skipped and counted, not fatal


def test_every_guide_run_trains_on_shards_the_guide_writes():
    written = {parse_rayssl(a).out for a in documented_argvs()["docs/cluster.md"] if a[0] == "shard"}
    for args, cfg in documented_runs("docs/cluster.md"):
        assert cfg.data.shards in written, (args.config, cfg.data.shards)


def test_the_guide_pretrains_resnet50_at_224_px_with_the_imagenet_config_on_cluster_yamls_gpus():
    bucket = guide_bucket()
    runs = [(a, c) for a, c in documented_runs("docs/cluster.md") if a.command == "pretrain"]
    (r50,) = [(a, c) for a, c in runs if a.config == IMAGENET_CONFIG]
    args, cfg = r50
    assert cfg.data.shards == f"s3://{bucket}/shards/imagenet"
    assert (cfg.data.crop_size, cfg.method.backbone, cfg.train.use_gpu) == (224, "resnet50", True)
    # cluster.yaml's 4 single-A10G nodes instead of the config's 8 GPUs: half the batch, the same 128 a worker.
    assert (cfg.train.num_workers, cfg.data.batch_size) == (4, 512)
    base = load_config(repo_path(args.config))
    assert (base.train.num_workers, base.data.batch_size) == (8, 1024)
    assert changed_fields(args, cfg) <= PATH_FIELDS | {"train.num_workers", "data.batch_size"}

    # The cheaper first run on the cluster: ImageNet-100 with its config as it is.
    (in100,) = [parse_rayssl(a) for a in guide_cluster_jobs() if a[:3] == ["pretrain", "--config", IMAGENET100_CONFIG]]
    args, cfg = next((a, c) for a, c in runs if a == in100)
    assert (cfg.data.crop_size, cfg.method.backbone) == (224, "resnet18")
    assert cfg.data.shards == f"s3://{bucket}/shards/imagenet100"
    assert changed_fields(args, cfg) <= PATH_FIELDS


@pytest.mark.parametrize("source", ["cluster.yaml", "docs/cluster.md", "rayjob.yaml"])
def test_every_documented_run_splits_its_batch_evenly_and_fits_the_gpus_it_is_given(source):
    """Each worker gets a whole share of the batch and never fewer photos than its config gives one; a run asks
    for no more GPU workers (and CPUs a worker) than cluster.yaml's and the RayJob's GPU nodes offer."""
    config = load_yaml(CLUSTER_YAML)
    (gpu,) = [t for t in config["available_node_types"].values() if t["resources"].get("GPU", 0) >= 1]
    cluster_gpus = gpu["max_workers"] * gpu["resources"]["GPU"]
    (group,) = load_yaml(RAYJOB_YAML)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    rayjob_gpus = group["maxReplicas"] * int(limits["nvidia.com/gpu"])
    gpus, cpus = (rayjob_gpus, int(limits["cpu"])) if source == "rayjob.yaml" else (cluster_gpus, gpu["resources"]["CPU"])

    for args, cfg in documented_runs(source):
        base = load_config(repo_path(args.config))
        workers, batch = cfg.train.num_workers, cfg.data.batch_size
        assert batch % workers == 0, (source, args.config, batch, workers)
        assert batch // workers >= base.data.batch_size // base.train.num_workers, (source, args.config)
        assert workers <= gpus and cfg.train.cpus_per_worker < cpus, (source, args.config)
        if args.command == "tune":
            assert workers == 1 and args.space == "augment"  # one GPU a trial: 4 trials at once on 4 GPUs


def test_the_rayjob_and_cluster_yaml_run_what_the_guide_runs():
    """The same resolved configs (local paths aside), spaces and names: the guide describes what they run."""

    def key(args, cfg):
        flat = {k: v for k, v in cfg.flat().items() if k != "tracking.runs_dir"}
        return (
            args.command,
            args.space if args.command == "tune" else None,
            args.name if args.command == "tune" else None,
            json.dumps(flat, sort_keys=True),
        )

    guide = {key(a, c) for a, c in documented_runs("docs/cluster.md")}
    for source in ("cluster.yaml", "rayjob.yaml"):
        for args, cfg in documented_runs(source):
            assert key(args, cfg) in guide, f"{source}: {args.command} {args.config} is not a run of docs/cluster.md"
    guide_shards = [a for a in documented_argvs()["docs/cluster.md"] if a[0] == "shard"]
    assert all(a in guide_shards for a in documented_argvs()["cluster.yaml"] if a[0] == "shard")


def test_the_guides_epoch_arithmetic_is_right():
    guide = " ".join(cluster_guide().split())
    assert f"{IMAGENET_TRAIN_PHOTOS:,}" in guide
    rows = re.findall(r"(\d+) min at ([\d,]+)", guide)
    assert len(rows) >= 3
    for minutes, rate in rows:
        assert int(minutes) == round(IMAGENET_TRAIN_PHOTOS / int(rate.replace(",", "")) / 60), (minutes, rate)
    epochs = load_config(repo_path(IMAGENET_CONFIG)).train.epochs
    hours = re.search(rf"{epochs} epochs take {epochs} times that: (\d+) h, (\d+) h or (\d+) h", guide).groups()
    for h, (_, rate) in zip(hours, rows, strict=True):
        assert int(h) == round(epochs * IMAGENET_TRAIN_PHOTOS / int(rate.replace(",", "")) / 3600), (h, rate)
    # What the guide says is measured, and on what.
    for words in ("2 CPU cores with\nno GPU and no cloud", "not measured"):
        assert " ".join(words.split()) in guide


# ---------------------------------------------------------------- KubeRay RayJob


def test_rayjob_has_the_fields_kuberay_requires():
    job = load_yaml(RAYJOB_YAML)
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    name = job["metadata"]["name"]
    assert DNS_1035_LABEL.match(name) and len(name) <= MAX_RAYJOB_NAME

    spec = job["spec"]
    assert "rayssl tune" in spec["entrypoint"]
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    # KubeRay refuses a TTL without shutdownAfterJobFinishes.
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    assert spec.get("backoffLimit", 0) >= 0

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray_pin()
    head = cluster["headGroupSpec"]
    groups = [("head", head)] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    for name, group in groups:
        params = group["rayStartParams"]
        assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), name  # map[string]string
        containers = group["template"]["spec"]["containers"]
        assert containers and containers[0]["image"], name
    assert len({g["template"]["spec"]["containers"][0]["image"] for _, g in groups}) == 1  # one Ray version

    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        lo, n, hi = group["minReplicas"], group.get("replicas", group["minReplicas"]), group["maxReplicas"]
        assert 0 <= lo <= n <= hi and lo < hi, group["groupName"]


def test_rayjob_head_has_no_gpu_and_workers_do():
    from pipelines.search.tune import TRIAL_DRIVER

    cluster = load_yaml(RAYJOB_YAML)["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    head_resources = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_resources.get("limits", {})
    assert head["rayStartParams"].get("num-gpus") == "0"
    # KubeRay's format for custom resources: a JSON object inside a quoted string.
    custom = json.loads(head["rayStartParams"]["resources"].strip('"').replace('\\"', '"'))
    assert custom.get(TRIAL_DRIVER, 0) >= 1

    gpu_groups = [
        g
        for g in cluster["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups
    for group in gpu_groups:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        gpus = int(resources["limits"]["nvidia.com/gpu"])
        assert gpus >= 1
        # Kubernetes: an extended resource's request, when given, must equal its limit.
        assert int(resources.get("requests", {}).get("nvidia.com/gpu", gpus)) == gpus


def test_rayjob_image_is_built_from_the_pinned_ray_and_python():
    dockerfile = DOCKERFILE.read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)-py(\d)(\d+)-gpu\s*$", dockerfile, flags=re.M)
    assert base, "the image must start from Ray's own GPU image"
    assert base.group(1) == ray_pin()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={base.group(2)}.{base.group(3)}" in requires
    assert re.search(r"^RUN pip install .*\s\.$", dockerfile, flags=re.M)

    # What the entrypoint names is in the image: its --config's folder and the package data.
    (argv,) = documented_argvs()["rayjob.yaml"]
    args = parse_rayssl(argv)
    copied = {src for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile, flags=re.M) for src in line.split()}
    top = repo_path(args.config).relative_to(ROOT).parts[0]
    assert {top, "pipelines", "ssl_models", "tune_spaces", "pyproject.toml"} <= copied
