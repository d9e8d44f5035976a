"""Shared fixtures: the tiny preset, real videos written with PyAV, real checkpoints in tmp dirs."""

from __future__ import annotations

import os

import pytest
import torch

from model.build import build_bundle
from model.config import load_config
from model.media import write_sample_video

torch.set_num_threads(min(2, os.cpu_count() or 1))
# Tests join Ray only by explicit address (the integration session's cluster) or start a private one: never a
# cluster that $RAY_ADDRESS names, for them or for the commands they run.
os.environ.pop("RAY_ADDRESS", None)

RAY_FIXTURES = {"ray_cluster", "ray_address"}


def pytest_collection_modifyitems(config, items):
    for item in items:  # a test on the session cluster is a Ray test even where its module forgot to say so
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())) and "ray" not in item.keywords:
            item.add_marker(pytest.mark.ray)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_cfg():
    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_cfg):
    """A randomly initialised tiny bundle. Tests must not modify it."""
    return build_bundle(tiny_cfg, seed=0)


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """name -> path of real H.264 videos of different lengths and visual pace."""
    root = tmp_path_factory.mktemp("videos")
    spec = {"short": (1.0, 0.5, 64), "mid": (2.2, 1.0, 96), "long": (3.4, 0.7, 80)}
    paths = {}
    for name, (duration, cut, size) in spec.items():
        paths[name] = str(root / f"{name}.mp4")
        write_sample_video(paths[name], duration_s=duration, cut_every_s=cut, size=size)
    return paths
