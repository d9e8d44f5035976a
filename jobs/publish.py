"""Publish a pipeline's model: its v2m export in fp16, with a provenance file that says how it was made.

    DEST/config.json model.safetensors vae.safetensors latent_stats.json [tokenizer/]   (a checkpoint)
    DEST/provenance.json   recipe, per-step settings, summaries, wall times and device, the held-out VAE and
                           quality measurements, parameter counts, and the SHA-256 of every file above

The shipped default (`model/default/`) is written this way, by `videorobin pipeline --publish`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import torch

from model.errors import InputError
from model.io import read_bytes, uri_exists, uri_join, write_bytes_atomic

MAX_BYTES = 50 * 1024 * 1024  # the package's budget for shipped weights
PROVENANCE = "provenance.json"


def file_digests(directory: str) -> dict[str, str]:
    """SHA-256 of every file under `directory` (relative names), the provenance file itself excepted."""
    digests = {}
    for root, _, files in os.walk(directory):
        for name in sorted(files):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            if relative != PROVENANCE:
                with open(path, "rb") as f:
                    digests[relative] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(digests.items()))


def publish_model(paths, record: dict, dest: str) -> str:
    """Write the pipeline's v2m model to `dest` in fp16 with its provenance; refuse past the size budget."""
    from jobs.pipeline import STEP_RUNS
    from model.build import parameter_counts
    from model.checkpoint import load_bundle, save_bundle

    missing = [n for n in ("v2m", "quality", "vae_report") if not uri_exists(STEP_RUNS[n][0](paths))]
    if missing:
        from jobs.pipeline import PipelineError

        raise PipelineError(f"cannot publish before these steps are complete: {', '.join(missing)}")
    bundle = load_bundle(paths.v2m)
    save_bundle(bundle, dest, dtype=torch.float16)
    digests = file_digests(dest)
    size = sum(os.path.getsize(os.path.join(dest, name)) for name in digests)
    if size > MAX_BYTES:
        raise InputError(f"{dest}: {size / 2**20:.1f} MiB is over the {MAX_BYTES / 2**20:.0f} MiB budget")
    provenance = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "made_by": f"videorobin pipeline --out {paths.out} --publish {dest}",
        "dtype": "float16",
        "bytes": size,
        "parameters": parameter_counts(bundle.model, bundle.vae),
        "dataset": json.loads(read_bytes(uri_join(paths.dataset, "dataset.json"))),
        "recipe": record["recipe"],
        "steps": record["steps"],
        "vae_report": json.loads(read_bytes(uri_join(paths.vae_report, "vae_metrics.json")))["summary"],
        "quality": json.loads(read_bytes(uri_join(paths.quality, "quality.json")))["conditions"],
        "files": digests,
    }
    write_bytes_atomic(uri_join(dest, PROVENANCE), json.dumps(provenance, indent=2, default=str).encode())
    return dest
