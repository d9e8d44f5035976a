"""Checks on the source itself: safe loading, no Ray in model/, no side effects at import."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("model", "deployments", "jobs")


def _sources(*packages):
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_every_torch_load_is_weights_only():
    for path in _sources(*PACKAGES, "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "load"
                and getattr(node.func.value, "id", None) == "torch"
            ):
                kwargs = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kwargs and kwargs["weights_only"].value is True, f"{path}:{node.lineno}"


def test_model_never_imports_ray_and_does_nothing_at_import():
    code = (
        "import sys, model, model.engine, model.checkpoint, model.hf_import, model.vae;"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported';"
        "import torch; assert not torch.cuda.is_initialized()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_library_code_does_not_print():
    for path in _sources("model"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                raise AssertionError(f"print in library code: {path}:{node.lineno}")


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in readme if "python3 -m venv .venv" in line]
    assert len(commands) == 2, "the README starts with exactly two set-up commands (demo, tests)"
    assert commands[0].endswith("videorobin demo")
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()
