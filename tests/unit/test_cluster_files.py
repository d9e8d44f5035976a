"""cluster/ and dashboards/ are data: check they parse, name real flags and real metrics, and pin our Ray."""

import json
import pathlib
import re
import shlex

import pytest
import ray
import yaml
from pydantic import ValidationError
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from deployments.config import load_serve_config
from deployments.metrics import SERVING_METRICS
from jobs import metrics
from jobs.cli import build_parser
from jobs.pipeline import load_recipe

ROOT = pathlib.Path(__file__).resolve().parents[2]
RAY_SOURCES = [  # where Ray defines the metrics our dashboards read: Ray Data's, and the nodes' (CPU, GPU)
    "data/_internal/stats.py",
    "data/_internal/execution/interfaces/op_runtime_metrics.py",
    "dashboard/modules/reporter/reporter_agent.py",
    "serve/_private/replica.py",
    "serve/_private/router.py",
    "serve/_private/deployment_state.py",
]


def _pinned_ray() -> str:
    return re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)


def test_rayjob_manifests_pin_our_ray_and_run_commands_our_cli_accepts():
    manifests = sorted((ROOT / "cluster").glob("*rayjob*.yaml"))
    assert manifests
    for path in manifests:
        doc = yaml.safe_load(path.read_text())
        assert doc["kind"] == "RayJob" and doc["apiVersion"] == "ray.io/v1"
        assert doc["spec"]["rayClusterSpec"]["rayVersion"] == _pinned_ray() == ray.__version__
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "videorobin"
        args = build_parser().parse_args(argv[1:])  # raises on an unknown flag
        if args.command == "pipeline":
            recipe = load_recipe(args.recipe, args.set)  # the recipe it names exists and validates
            workers = {s: getattr(recipe, s).get("workers", 1) * getattr(recipe, s).get("gpus_per_worker", 0)
                       for s in ("vae", "t2m", "v2m")}  # fmt: skip
            gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
                       * g["maxReplicas"] for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"])  # fmt: skip
            assert max(workers.values()) <= gpus, (path.name, workers, gpus)


def test_dashboards_name_only_metrics_that_exist():
    ours = {getattr(metrics, n) for n in dir(metrics) if n.startswith("SCORE_")} | set(metrics.TRAIN_GAUGES)
    ours |= set(SERVING_METRICS)
    ray_root = pathlib.Path(ray.__file__).parent
    ray_source = "".join((ray_root / p).read_text() for p in RAY_SOURCES)
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        exprs = [t["expr"] for p in json.loads(path.read_text())["panels"] for t in p["targets"]]
        names = {n for e in exprs for n in re.findall(r"\b(ray_[a-z_]+)", e)}
        assert names, path
        for name in names:
            base = re.sub(r"_(total|bucket|sum|count)$", "", name.removeprefix("ray_"))
            if base.startswith("videorobin_"):
                assert base in ours, f"{path.name}: {name} is not defined in jobs/metrics.py or deployments/metrics.py"
            else:
                field = base.removeprefix("data_")
                assert f'"{base}"' in ray_source or f"    {field}:" in ray_source, f"{path.name}: unknown {name}"


def _train_flags(entrypoint: str):
    return build_parser().parse_args(shlex.split(entrypoint)[1:])


def test_training_jobs_ask_for_the_gpus_their_clusters_have():
    for name in ("train-t2m-rayjob.yaml", "train-v2m-rayjob.yaml"):
        doc = yaml.safe_load((ROOT / "cluster" / name).read_text())
        args = _train_flags(doc["spec"]["entrypoint"])
        (group,) = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        (container,) = group["template"]["spec"]["containers"]
        gpus = group["replicas"] * int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert args.workers * args.gpus_per_worker == gpus, name
        assert args.storage.startswith("s3://") and args.resume  # shared storage; retries continue the run
    launcher = yaml.safe_load((ROOT / "cluster" / "train-cluster.yaml").read_text())
    nodes = launcher["available_node_types"]["h100"]
    t2m = _train_flags(yaml.safe_load((ROOT / "cluster" / "train-t2m-rayjob.yaml").read_text())["spec"]["entrypoint"])
    assert nodes["min_workers"] * nodes["resources"]["GPU"] == t2m.workers
    assert launcher["available_node_types"][launcher["head_node_type"]]["resources"]["CPU"] == 0


def test_serving_alert_rules_parse_and_name_only_serving_metrics():
    doc = yaml.safe_load((ROOT / "dashboards" / "serving-alerts.yaml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"VideoRobinHighErrorRate", "VideoRobinHighLatency"}
    for rule in rules:
        names = set(re.findall(r"\b(ray_[a-z_]+)", rule["expr"]))
        assert names, rule["alert"]
        for name in names:
            assert re.sub(r"_(total|bucket|sum|count)$", "", name.removeprefix("ray_")) in SERVING_METRICS, name


def test_serve_config_validates_and_the_rayservice_carries_it_on_enough_gpus(monkeypatch):
    path = ROOT / "cluster" / "serve-config.yaml"
    doc = yaml.safe_load(path.read_text())
    monkeypatch.delenv("VIDEOROBIN_API_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="require_token"):  # production never starts an open API
        load_serve_config(str(path))
    monkeypatch.setenv("VIDEOROBIN_API_TOKEN", "from-the-secret")
    cfg = load_serve_config(str(path))  # the app's args are a valid ServeConfig
    ServeDeploySchema.model_validate(doc)
    options = [getattr(cfg.deployments, name) for name in ("ingress", "encoder", "planner", "refiner", "decoder")]
    for opts in options:
        AutoscalingConfig(**opts.autoscaling_config)  # the schema alone lets bad autoscaling values through
    service = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService" and service["spec"]["rayClusterConfig"]["rayVersion"] == _pinned_ray()
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == {"applications": doc["applications"]}
    min_gpus = sum(o.autoscaling_config["min_replicas"] * o.ray_actor_options.get("num_gpus", 0) for o in options)
    (group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    assert 0 < min_gpus <= group["minReplicas"] * int(container["resources"]["limits"]["nvidia.com/gpu"])
