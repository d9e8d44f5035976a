"""The default model shipped in the package (model/default/): what it is, that its provenance file describes
exactly these files, and that it was made by the default recipe."""

import hashlib
import json
import os

import pytest
import torch
import yaml
from safetensors import safe_open

from jobs.publish import MAX_BYTES, PROVENANCE
from model.build import parameter_counts
from model.checkpoint import default_checkpoint, load_bundle
from model.config import SpectralVAEConfig


@pytest.fixture(scope="module")
def shipped():
    path = default_checkpoint()
    assert path is not None, "model/default/ is missing its config.json"
    return path, json.load(open(os.path.join(path, PROVENANCE)))


def test_the_provenance_lists_every_file_with_its_digest_and_the_budget_holds(shipped):
    path, provenance = shipped
    on_disk = {
        os.path.relpath(os.path.join(root, name), path)
        for root, _, files in os.walk(path)
        for name in files
        if name != PROVENANCE and not name.endswith(".pyc")
    }
    assert on_disk == set(provenance["files"])
    for name, digest in provenance["files"].items():
        with open(os.path.join(path, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name
    size = sum(os.path.getsize(os.path.join(path, name)) for name in on_disk)
    assert size == provenance["bytes"] <= MAX_BYTES


def test_it_is_the_small_preset_on_the_spectral_vae_in_fp16(shipped):
    path, provenance = shipped
    bundle = load_bundle(path)
    assert isinstance(bundle.config.vae, SpectralVAEConfig) and bundle.config.vision is not None
    assert parameter_counts(bundle.model, bundle.vae) == provenance["parameters"]
    for name in ("model.safetensors", "vae.safetensors"):
        with safe_open(os.path.join(path, name), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float16}


def test_it_was_made_by_the_default_recipe_and_says_how_it_measured(shipped):
    _, provenance = shipped
    from importlib import resources

    recipe = yaml.safe_load(resources.files("jobs.recipes").joinpath("default.yaml").read_text())
    made = provenance["recipe"]
    for section, settings in recipe.items():
        if isinstance(settings, dict):
            for key, value in settings.items():
                assert made[section][key] == value, (section, key)
    assert set(provenance["steps"]) >= {"dataset", "vae", "prepare", "t2m", "v2m", "quality"}
    for step in provenance["steps"].values():
        assert step["wall_s"] > 0 and step["device"]
    assert {"references", "prompted", "shuffled", "random", "video_only", "still_video"} <= set(provenance["quality"])
    assert {"key_kept", "tempo_kept", "stft_distance", "mel_distance"} <= set(provenance["vae_report"])
