"""dashboards/: Grafana dashboards valid against Grafana's dashboard model, alert rules checked and unit-tested
by promtool, a runbook section per alert, and only metric names (and tags) that our code really exports."""

import json
import os
import pathlib
import re
import shutil
import subprocess

import jsonschema
import pytest
import ray
import yaml

from deployments.metrics import SERVING_METRICS
from jobs import metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RULE_FILES = sorted((ROOT / "dashboards").glob("*-alerts.yaml"))
RULE_TESTS = sorted((ROOT / "dashboards" / "tests").glob("*.test.yaml"))
RUNBOOK = ROOT / "dashboards" / "RUNBOOK.md"
# Grafana's dashboard model as JSON Schema, generated from grafana-foundation-sdk (see its description)
GRAFANA_SCHEMA = ROOT / "dashboards" / "tests" / "grafana-dashboard.schema.json"
RAY_SOURCES = [  # where Ray defines the metrics our dashboards read: Ray Data's, and the nodes' (CPU, GPU)
    "data/_internal/stats.py",
    "data/_internal/execution/interfaces/op_runtime_metrics.py",
    "dashboard/modules/reporter/reporter_agent.py",
    "serve/_private/replica.py",
    "serve/_private/router.py",
    "serve/_private/deployment_state.py",
]
OURS = set(metrics.JOB_METRICS) | set(SERVING_METRICS)


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _rules() -> list[dict]:
    return [r for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def _base(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", name.removeprefix("ray_"))


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


# ---- Grafana dashboards -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_against_grafanas_dashboard_schema(path):
    schema = json.loads(GRAFANA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    dashboard = json.loads(path.read_text())
    errors = [f"{e.json_path}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(dashboard)]
    assert not errors, errors
    # what the schema leaves optional but Grafana needs to import and show a provisioned dashboard
    for key in ("uid", "title", "time", "panels", "templating", "annotations", "schemaVersion"):
        assert key in dashboard, key
    assert 8 <= len(dashboard["uid"]) <= 40 and re.fullmatch(r"[\w-]+", dashboard["uid"])
    (builtin,) = [a for a in dashboard["annotations"]["list"] if a.get("builtIn") == 1]
    assert builtin["type"] == "dashboard" and builtin["datasource"] == {"type": "grafana", "uid": "-- Grafana --"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in dashboard["panels"]:
        assert {"type", "title", "datasource", "gridPos", "targets"} <= set(panel), panel.get("title")
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]  # Grafana's grid is 24 columns wide
        here = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & here, f"{panel['title']} overlaps another panel"
        cells |= here


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_use_rate_interval_and_defined_variables(path):
    dashboard = json.loads(path.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    text = json.dumps(dashboard["panels"]) + json.dumps(dashboard["templating"])
    used = {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", text)}
    assert {v for v in used if not v.startswith("__")} <= variables
    for expr in _exprs(dashboard):
        windows = re.findall(r"\[([^\]]*)\]", expr)
        assert all(w == "$__rate_interval" for w in windows), expr  # fixed windows only in the alert rules
        assert expr.count("(") == expr.count(")"), expr


def test_scoring_dashboard_filters_by_dataset():
    dashboard = json.loads((ROOT / "dashboards" / "scoring.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "dataset"]
    assert variable["type"] == "query" and variable["includeAll"] and variable["allValue"] == ".*"
    assert re.fullmatch(r"label_values\(ray_videorobin_score_\w+, dataset\)", variable["query"])
    selectors = [s for e in _exprs(dashboard) for s in re.findall(r"ray_videorobin_score_\w+(?:\{[^}]*\})?", e)]
    assert selectors
    for selector in selectors:
        assert 'dataset=~"$dataset"' in selector, selector


def test_dashboards_and_alerts_name_only_metrics_that_exist():
    ray_root = pathlib.Path(ray.__file__).parent
    ray_source = "".join((ray_root / p).read_text() for p in RAY_SOURCES)
    sources = {p.name: _exprs(json.loads(p.read_text())) for p in DASHBOARDS}
    sources |= {r["alert"]: [r["expr"]] for r in _rules()}
    for where, exprs in sources.items():
        names = {n for e in exprs for n in re.findall(r"\b(ray_[a-z_]+)", e)}
        assert names, where
        for name in names:
            base = _base(name)
            if base.startswith("videorobin_"):
                assert base in OURS, f"{where}: {name} is not defined in jobs/metrics.py or deployments/metrics.py"
            else:
                assert not where.startswith("VideoRobin"), f"{where}: alerts read only our own metrics"
                field = base.removeprefix("data_")
                assert f'"{base}"' in ray_source or f"    {field}:" in ray_source, f"{where}: unknown {name}"


# ---- alert rules, their runbook and their promtool tests ----------------------------------------------------


def test_every_alert_has_severity_summary_description_and_a_runbook_section():
    headings = re.findall(r"^#{2,4} (.+)$", RUNBOOK.read_text(), re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}  # GitHub's slugs
    rules = _rules()
    assert {r["alert"] for r in rules} >= {
        "VideoRobinHighErrorRate",
        "VideoRobinTrainingStalled",
        "VideoRobinTrainingLossNotFinite",
        "VideoRobinTrainingThroughputDrop",
        "VideoRobinScoringFailedRows",
        "VideoRobinScoringStalled",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        path, anchor = rule["annotations"]["runbook_url"].split("#")
        assert path == "dashboards/RUNBOOK.md" and (ROOT / path).is_file()
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]
    assert {h for h in headings if h.startswith("VideoRobin")} == {r["alert"] for r in rules}  # none stale


def test_every_alert_has_a_promtool_case_where_it_fires_and_one_where_it_does_not():
    tested_files, fires, quiet = set(), set(), set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        tested_files |= {(path.parent / f).resolve() for f in doc["rule_files"]}
        for test in doc["tests"]:
            for case in test["alert_rule_test"]:
                (fires if case["exp_alerts"] else quiet).add((case["alertname"], _seconds(case["eval_time"])))
    assert tested_files == {p.resolve() for p in RULE_FILES}
    for rule in _rules():
        assert any(name == rule["alert"] for name, _ in fires), f"{rule['alert']} never fires in a test"
        # quiet once `for` has passed, so a healthy series, not a pending alert, is what keeps it silent
        assert any(name == rule["alert"] and t >= _seconds(rule.get("for", "0s")) for name, t in quiet), rule["alert"]


@pytest.fixture(scope="module")
def promtool() -> str:
    """Debian's `prometheus` package ships it; CI installs it (.ci/run) and must run these tests."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: CI installs it with Debian's `prometheus` package (see .ci/run)")
        pytest.skip("promtool is not on PATH: apt-get install --no-install-recommends prometheus")
    return path


def _promtool(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_checks_every_rule_file(promtool):
    out = _promtool(promtool, "check", "rules", *[str(p.relative_to(ROOT)) for p in RULE_FILES])
    assert out.count("SUCCESS") == len(RULE_FILES), out


def test_promtool_unit_tests_of_the_alerts_pass(promtool):
    out = _promtool(promtool, "test", "rules", *[str(p.relative_to(ROOT)) for p in RULE_TESTS])
    assert out.count("SUCCESS") == len(RULE_TESTS) and "FAILED" not in out, out


def test_dashboard_queries_parse_as_promql(promtool, tmp_path):
    """Each panel query, its Grafana variables filled in, as a recording rule that promtool parses."""
    fill = {"$__rate_interval": "5m", "$dataset": "films", "$run": ".*"}
    rules = []
    for path in DASHBOARDS:
        for i, expr in enumerate(_exprs(json.loads(path.read_text()))):
            for var, value in fill.items():
                expr = expr.replace(var, value)
            rules.append({"record": f"dashboard:{path.stem}:{i}", "expr": expr})
    rule_file = tmp_path / "dashboard-queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = _promtool(promtool, "check", "rules", str(rule_file))
    assert f"SUCCESS: {len(rules)} rules found" in out, out


# ---- what the jobs record: the names and tags the rules and dashboards read ---------------------------------


@pytest.fixture
def fresh_metrics():
    """Ray's metric objects check tags against their tag_keys without a cluster; none outlives the test."""
    caches = (metrics.score_metrics, metrics._rows_left_gauge, metrics.train_metrics)
    for cached in caches:
        cached.cache_clear()
    yield
    for cached in caches:
        cached.cache_clear()


def test_job_metrics_take_the_tags_the_rules_and_dashboards_filter_by(fresh_metrics):
    metrics.record_stage("write", ["ok", "failed"], 0.5, "films")
    metrics.record_audio(3.0, "films")
    metrics.record_rows_left(7, "films")
    step = {"loss": float("nan"), "lr": 1e-4, "grad_norm": 1.0, "samples_per_s": 2.0, "patches_per_s": 3.0, "step": 4}
    metrics.record_train_step("run", "t2m", step, target_step=100)
    metrics.record_train_step("vae-run", "vae", step)  # the VAE trainer sets no target
    with pytest.raises(ValueError, match="dataset"):
        metrics.score_metrics()[0].inc(1, tags={"stage": "write", "status": "ok"})


def test_score_tasks_tag_their_metrics_with_the_dataset(monkeypatch, tmp_path):
    from jobs import score_tasks

    recorded = []
    monkeypatch.setattr(score_tasks, "record_stage", lambda *args: recorded.append(args))
    row = {"id": "a", "video": str(tmp_path / "missing.mp4"), "duration": None, "prompt": "", "seed": 1}
    row = score_tasks.probe(row, fps=0.0, image_size=32, max_duration_s=60.0, dataset="films")
    assert row["status"] == "failed"
    row["audio"] = None
    score_tasks.write_outputs(row, str(tmp_path), "wav", False, 48000, "model", dataset="films")
    assert [(r[0], r[1], r[3]) for r in recorded] == [("probe", ["failed"], "films"), ("write", ["failed"], "films")]


@pytest.mark.parametrize(
    ("catalogue", "dataset", "tag"),
    [
        ("s3://media/films.parquet", None, "films"),
        ("/data/ads.csv", None, "ads"),
        ("catalogue/trailers.jsonl", None, "trailers"),
        ("s3://media/shorts/*.mp4", None, "shorts"),
        ("clips/**/*.mp4", None, "clips"),
        ("*.mp4", None, "catalogue"),
        ("s3://media/films.parquet", "films-2024", "films-2024"),
    ],
)
def test_the_dataset_tag_is_the_catalogues_name_unless_set(catalogue, dataset, tag):
    from jobs.score import ScoreConfig

    cfg = ScoreConfig(catalogue=catalogue, out="out", checkpoint="ckpt", dataset=dataset)
    assert cfg.dataset_tag == tag
