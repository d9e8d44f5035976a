"""cluster/ is data: check it parses, names real flags, and pins our Ray (dashboards/: test_dashboards.py)."""

import copy
import json
import os
import pathlib
import re
import shlex

import jsonschema
import pytest
import ray
import yaml
from pydantic import ValidationError
from ray.autoscaler._private.docker import docker_start_cmds
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from deployments import app as serve_app
from deployments.config import DEPLOYMENT_FIELDS, load_serve_config, read_serve_args
from jobs.cli import build_parser
from jobs.pipeline import load_recipe
from model.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parents[2]


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


def test_serve_config_validates_and_the_rayservice_carries_it_on_enough_gpus(monkeypatch):
    path = ROOT / "cluster" / "serve-config.yaml"
    doc = yaml.safe_load(path.read_text())
    monkeypatch.delenv("VIDEOROBIN_API_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="require_token"):  # production never starts an open API
        load_serve_config(str(path))
    monkeypatch.setenv("VIDEOROBIN_API_TOKEN", "from-the-secret")
    cfg = load_serve_config(str(path))  # the app's args are a valid ServeConfig
    ServeDeploySchema.model_validate(doc)
    (app,) = doc["applications"]
    # Ray options sit in Serve's `deployments:` list (applied in place), none in `args` (a change there
    # rebuilds the app and reloads every model); each entry names a deployment the app builds
    assert "deployments" not in app["args"]
    listed = {d["name"]: d for d in app["deployments"]}
    assert set(listed) == {"Ingress", "FrameEncoder", "Planner", "Refiner", "AudioDecoder"}  # mode: disaggregated
    assert cfg.deployments.planner.ray_actor_options == listed["Planner"]["ray_actor_options"]  # what the CLI runs
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


def test_serve_deployments_list_names_our_deployments_and_lays_over_args(tmp_path):
    app = serve_app
    classes = (app.Ingress, app.FrameEncoder, app.Planner, app.Refiner, app.AudioDecoder, app.Fused)
    assert set(DEPLOYMENT_FIELDS) == {c.name for c in classes}  # Serve's names for them
    path = tmp_path / "serve.yaml"
    args = {"checkpoint": "ckpt", "deployments": {"planner": {"max_ongoing_requests": 3, "num_replicas": 2}}}
    listed = [{"name": "Planner", "num_replicas": 5, "ray_actor_options": {"num_gpus": 1}}, {"name": "Fused"}]
    path.write_text(yaml.safe_dump({"applications": [{"import_path": "x:y", "args": args, "deployments": listed}]}))
    cfg = load_serve_config(str(path))  # what `videorobin serve --config` builds
    planner = cfg.deployments.planner
    assert (planner.num_replicas, planner.max_ongoing_requests) == (5, 3)  # the list wins option by option
    assert planner.ray_actor_options == {"num_gpus": 1}  # and replaces ray_actor_options whole, as Serve does
    assert cfg.deployments.ingress.ray_actor_options == {"num_cpus": 0.25}  # unlisted: the defaults
    assert read_serve_args(str(path)) == args
    listed.append({"name": "Decoder"})  # a typo is refused, not ignored
    path.write_text(yaml.safe_dump({"applications": [{"import_path": "x:y", "args": args, "deployments": listed}]}))
    with pytest.raises(InputError, match="Decoder"):
        load_serve_config(str(path))


# ---- KubeRay manifests, the cluster launcher file and the PodMonitor against their real schemas ------------

SCHEMA_DIRS = [  # third-party schemas (see shared/schemas/README.md): a checkout's shared/, or the one beside it
    *([pathlib.Path(os.environ["VIDEOROBIN_SCHEMAS"])] if os.environ.get("VIDEOROBIN_SCHEMAS") else []),
    ROOT / "shared" / "schemas",
    ROOT.parent / "shared" / "schemas",
]
KUBERAY_CRDS = {kind: f"ray.io_{kind.lower()}s.yaml" for kind in ("RayCluster", "RayJob", "RayService")}


def _schema_file(*parts: str) -> pathlib.Path:
    for base in SCHEMA_DIRS:
        if (base.joinpath(*parts)).is_file():
            return base.joinpath(*parts)
    pytest.skip(f"{'/'.join(parts)} is not in shared/schemas/ (see cluster/README.md: Schemas)")


def _strict(schema):
    """A CRD's openAPIV3Schema as kubectl's default strict field validation applies it: unknown fields are
    refused (the API server would otherwise drop them silently), except where the CRD keeps unknown fields."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_validator(*parts: str, version: str = "v1") -> jsonschema.Draft7Validator:
    crd = yaml.load(_schema_file(*parts).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert ver["served"]
    return jsonschema.Draft7Validator(_strict(ver["schema"]["openAPIV3Schema"]))


def _errors(validator, doc) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def _manifests(kind: str | None = None) -> list[tuple[pathlib.Path, dict]]:
    out = []
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("apiVersion") == "ray.io/v1" and kind in (None, doc["kind"]):
            out.append((path, doc))
    return out


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


def _pod_groups(doc: dict) -> list[dict]:
    spec = _cluster_spec(doc)
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _gpus(group: dict) -> float:
    return float(group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))


def test_kuberay_manifests_validate_against_the_kuberay_v1_7_crds():
    manifests = _manifests()
    assert {doc["kind"] for _, doc in manifests} == {"RayJob", "RayService"}
    validators = {kind: _crd_validator("kuberay-v1.7.0", name) for kind, name in KUBERAY_CRDS.items()}
    for path, doc in manifests:
        assert not _errors(validators[doc["kind"]], doc), (path.name, _errors(validators[doc["kind"]], doc))
        cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "c"}}
        cluster["spec"] = _cluster_spec(doc)  # the cluster each one creates is a valid RayCluster too
        assert not _errors(validators["RayCluster"], cluster), (path.name, _errors(validators["RayCluster"], cluster))
    bad = copy.deepcopy(manifests[0][1])
    bad["spec"]["backofLimit"] = 3  # the strict check is not vacuous: a misspelt field is refused
    assert _errors(validators[bad["kind"]], bad)


def test_every_rayjob_retries_and_states_the_kuberay_it_needs():
    for path, doc in _manifests("RayJob"):
        assert doc["spec"].get("backoffLimit", 0) >= 1, path.name  # each one resumes or restarts cleanly
        assert "KubeRay >= 1.2" in path.read_text().split("apiVersion:")[0], path.name  # backoffLimit's minimum


def test_multi_node_training_jobs_ask_for_efa():
    for path, doc in _manifests("RayJob"):
        if shlex.split(doc["spec"]["entrypoint"])[1] not in ("train", "pipeline"):
            continue
        gpu_groups = [g for g in _cluster_spec(doc)["workerGroupSpecs"] if _gpus(g)]
        if sum(g["maxReplicas"] for g in gpu_groups) <= 1:
            continue  # one node: NCCL stays on NVLink
        for group in gpu_groups:
            pod = group["template"]["spec"]
            ray_container = pod["containers"][0]
            res = ray_container["resources"]
            assert int(res["limits"]["vpc.amazonaws.com/efa"]) == int(res["requests"]["vpc.amazonaws.com/efa"]) == 32
            assert "IPC_LOCK" in ray_container["securityContext"]["capabilities"]["add"], path.name
            assert {"name": "FI_PROVIDER", "value": "efa"} in ray_container["env"], path.name
            assert "/dev/shm" in {m["mountPath"] for m in ray_container["volumeMounts"]}, path.name


def test_score_job_pools_fit_the_gpus_and_cpus_its_cluster_starts_with():
    doc = yaml.safe_load((ROOT / "cluster" / "score-rayjob.yaml").read_text())
    args = build_parser().parse_args(shlex.split(doc["spec"]["entrypoint"])[1:])
    workers = _cluster_spec(doc)["workerGroupSpecs"]
    gpus = sum(g["replicas"] * _gpus(g) for g in workers)
    cpus = sum(g["replicas"] * float(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
               for g in workers)  # fmt: skip
    asked = args.generate_actors * args.generate_gpus + args.decode_actors * args.decode_gpus
    assert 0 < asked <= gpus, (asked, gpus)  # a pool that does not fit waits for GPUs that never come
    assert (args.generate_actors + args.decode_actors) * args.actor_cpus + args.probe_cpus <= cpus


def test_podmonitor_validates_against_the_prometheus_operator_crd():
    podmonitor = yaml.safe_load((ROOT / "cluster" / "podmonitor.yaml").read_text())
    validator = _crd_validator("prometheus-operator-v0.93.0", "monitoring.coreos.com_podmonitors.yaml")
    assert not _errors(validator, podmonitor), _errors(validator, podmonitor)


def test_podmonitor_matches_the_pods_and_ports_of_the_manifests():
    podmonitor = yaml.safe_load((ROOT / "cluster" / "podmonitor.yaml").read_text())
    assert (podmonitor["apiVersion"], podmonitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    wanted = podmonitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in podmonitor["spec"]["podMetricsEndpoints"]}
    assert wanted and ports
    for path, doc in _manifests():
        for group in _pod_groups(doc):
            labels = group["template"].get("metadata", {}).get("labels", {})
            assert wanted.items() <= labels.items(), (path.name, labels)
            ray_container = group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first
            named = {p.get("name"): p["containerPort"] for p in ray_container.get("ports", [])}
            export_port = int(group["rayStartParams"].get("metrics-export-port", 8080))  # KubeRay's default
            for port in ports:
                assert named.get(port) == export_port, (path.name, port, named)


# ---- the cluster launcher file ----------------------------------------------------------------------------


def _launcher() -> dict:
    return yaml.safe_load((ROOT / "cluster" / "train-cluster.yaml").read_text())


def test_launcher_file_validates_against_rays_schema():
    config = _launcher()
    schema = json.loads((pathlib.Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    assert not _errors(jsonschema.Draft7Validator(schema), config)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` checks: with AWS defaults filled in
    for node_type in config["available_node_types"].values():  # what Ray's AWS bootstrap demands of interfaces
        node = node_type["node_config"]
        if "NetworkInterfaces" in node:  # subnet and groups on every interface, never beside them on the node
            assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & set(node)
            assert all(nic["SubnetId"] and nic["Groups"] for nic in node["NetworkInterfaces"])


def test_launcher_docker_options_start_a_container_docker_accepts():
    docker = _launcher()["docker"]
    for role in ("head", "worker"):
        options = docker.get("run_options", []) + docker.get(f"{role}_run_options", [])
        command = docker_start_cmds("ubuntu", docker["image"], {}, "c", options, "videorobin-train", "/root", "docker")
        assert command.count("--net=host") == 1, command  # Ray adds it: a second --net/--network is refused
        assert not re.search(r"--net(work)?[= ]", " ".join(options)), options
    shared_and_head = " ".join(docker.get("run_options", []) + docker.get("head_run_options", []))
    for gpu_or_efa in ("--gpus", "/dev/infiniband", "IPC_LOCK", "FI_"):
        assert gpu_or_efa not in shared_and_head  # the head is a CPU instance
        assert gpu_or_efa in " ".join(docker["worker_run_options"])
    assert "--runtime" not in shared_and_head


def test_launcher_workers_use_efa_on_every_network_card():
    config = _launcher()
    assert config["provider"]["use_internal_ips"]  # several interfaces: no public IP to reach
    worker_options = " ".join(config["docker"]["worker_run_options"])
    for option in ("--device=/dev/infiniband", "--cap-add=IPC_LOCK", "memlock=-1", "--shm-size",
                   "FI_PROVIDER=efa", "FI_EFA_USE_DEVICE_RDMA=1", "NCCL_SOCKET_IFNAME="):  # fmt: skip
        assert option in worker_options, option
    node = config["available_node_types"]["h100"]["node_config"]
    assert node["InstanceType"] == "p5.48xlarge" and node["Placement"]["GroupName"]  # a cluster placement group
    nics = node["NetworkInterfaces"]
    assert sorted(n["NetworkCardIndex"] for n in nics) == list(range(32))  # one per network card
    for nic in nics:
        primary = nic["NetworkCardIndex"] == 0
        assert nic["DeviceIndex"] == (0 if primary else 1)
        assert nic["InterfaceType"] == "efa" if primary else nic["InterfaceType"] in ("efa", "efa-only")
