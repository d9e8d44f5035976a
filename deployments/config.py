"""The serving application's settings: model, mode, limits, security, and each deployment's Ray options.

One typed object, read from the `args:` of a Serve config YAML (or `videorobin serve --config`), so a
platform team edits one file. Validation happens here, before any replica starts.

Replica counts, autoscaling, queue bounds and actor resources belong in the application's `deployments:`
list (Serve's own place for them, keyed by deployment name: Ingress, FrameEncoder, Planner, Refiner,
AudioDecoder, Fused), not in `args`: Serve applies a change there in place, while any change to `args`
rebuilds the application and restarts every replica. `ServeConfig.deployments` holds the same options for
programmatic and local use; `load_serve_config` lays a file's `deployments:` list over it, so
`videorobin serve --config FILE` runs what `serve deploy FILE` would.
"""

from __future__ import annotations

import os
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.config import ComputeDtype, DecodeDtype
from model.errors import InputError

TOKEN_ENV = "VIDEOROBIN_API_TOKEN"


class Limits(BaseModel):
    """What one request may ask for; every refusal is a JSON error with a stable code."""

    model_config = ConfigDict(extra="forbid")

    max_upload_bytes: int = Field(default=200 * 2**20, gt=0)
    max_json_bytes: int = Field(default=64 * 2**10, gt=0)
    max_video_s: float = Field(default=7200.0, gt=0)  # the video's length and the asked duration
    max_audio_s: float = Field(default=600.0, gt=0)  # an audio prompt's length (`audio`)
    max_align_cuts: int = Field(default=4, ge=1)  # `align_cuts` candidates: each one costs a request's work
    max_frame_pixels: int = Field(default=3840 * 2160, gt=0)  # width x height of the video
    max_prompt_tokens: int | None = Field(default=None, gt=0)  # None: the model's text.max_tokens
    steps: tuple[int, int] = (1, 100)
    guidance: tuple[float, float] = (0.0, 15.0)
    request_timeout_s: float = Field(default=300.0, gt=0)  # a request is cut off after this, never hangs
    max_in_flight: int = Field(default=32, gt=0)  # per Ingress replica; beyond it: 503 + Retry-After
    retry_after_s: int = Field(default=2, ge=1)


class DeploymentOptions(BaseModel):
    """Ray Serve options of one deployment (the subset a platform team tunes)."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling_config: dict | None = None
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    max_queued_requests: int | None = None
    ray_actor_options: dict = Field(default_factory=dict)
    health_check_period_s: float | None = Field(default=None, gt=0)  # how soon a dead replica is replaced
    graceful_shutdown_timeout_s: float | None = Field(default=None, ge=0)

    def serve_options(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v not in (None, {})}


def _opts(max_ongoing_requests: int, cpus: float = 0.25) -> DeploymentOptions:
    """Defaults that fit a laptop or a CI box; the cluster's Serve config gives GPUs and autoscaling."""
    return DeploymentOptions(max_ongoing_requests=max_ongoing_requests, ray_actor_options={"num_cpus": cpus})


class Deployments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ingress: DeploymentOptions = Field(default_factory=lambda: _opts(64))
    encoder: DeploymentOptions = Field(default_factory=lambda: _opts(32))
    planner: DeploymentOptions = Field(default_factory=lambda: _opts(16))
    refiner: DeploymentOptions = Field(default_factory=lambda: _opts(32))
    decoder: DeploymentOptions = Field(default_factory=lambda: _opts(32))
    fused: DeploymentOptions = Field(default_factory=lambda: _opts(16))


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str  # local path or fsspec URI, as everywhere else
    mode: Literal["disaggregated", "fused"] = "disaggregated"
    device: str | None = None  # None: cuda when the replica has a GPU, else cpu
    planner_capacity: int = Field(default=8, ge=1)  # concurrent requests (KV-cache rows) per Planner replica
    encoder_batch: int = Field(default=8, ge=1)
    refiner_batch: int = Field(default=16, ge=1)  # planner steps merged into one LocDiT call
    batch_wait_s: float = Field(default=0.005, ge=0)
    refine_retry_s: float = Field(default=30.0, gt=0)  # how long a planner retries a lost Refiner or FrameEncoder
    planner_stall_s: float = Field(default=120.0, gt=0)  # a patch step running longer fails the health check
    compiled: bool = False  # LocDiT and the planning step per batch bucket and the VAE decoder through torch.compile
    decode_dtype: DecodeDtype = "auto"  # the VAE decoder's: bf16 where the hardware has it and it pays (model/vae.py)
    compute_dtype: ComputeDtype = "float32"  # the patch loop's, planner and refiner alike (model/engine/precision.py)
    allowed_uri_prefixes: list[str] = Field(default_factory=list)  # where JSON `video_uri`s may point
    auth_token: str | None = None  # bearer token; also read from $VIDEOROBIN_API_TOKEN
    require_token: bool = False  # refuse to start without a token, so the API can never be open by mistake
    limits: Limits = Field(default_factory=Limits)
    deployments: Deployments = Field(default_factory=Deployments)

    @model_validator(mode="after")
    def _token_from_env(self) -> ServeConfig:
        if self.auth_token is None and os.environ.get(TOKEN_ENV):
            self.auth_token = os.environ[TOKEN_ENV]
        if self.require_token and not self.auth_token:
            raise ValueError(f"require_token is set but no auth_token is configured (nor ${TOKEN_ENV})")
        return self

    def auth_mode(self) -> str:
        """How the API is protected, as the server states it at start-up and in /readyz."""
        return "bearer token required" if self.auth_token else "open (no token: anyone who reaches it may call it)"


# Serve's deployment names (the classes' names) -> the ServeConfig.deployments field holding their options.
DEPLOYMENT_FIELDS = {
    "Ingress": "ingress",
    "FrameEncoder": "encoder",
    "Planner": "planner",
    "Refiner": "refiner",
    "AudioDecoder": "decoder",
    "Fused": "fused",
}


def _read_yaml(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def read_serve_args(path: str | None) -> dict:
    """The ServeConfig fields in a YAML file holding either the ServeConfig itself or a Serve config whose
    first app's `args` it is."""
    if not path:
        return {}
    data = _read_yaml(path)
    return data["applications"][0].get("args", {}) if "applications" in data else data


def read_serve_deployments(path: str | None) -> dict[str, dict]:
    """A Serve config's `deployments:` list (first application) as {ServeConfig.deployments field: options}."""
    if not path:
        return {}
    data = _read_yaml(path)
    if "applications" not in data:
        return {}
    out = {}
    for entry in data["applications"][0].get("deployments") or []:
        name = entry.get("name")
        if name not in DEPLOYMENT_FIELDS:
            known = ", ".join(DEPLOYMENT_FIELDS)
            raise InputError(f"{path}: `deployments:` names {name!r}, not a deployment of this app ({known})")
        out[DEPLOYMENT_FIELDS[name]] = {k: v for k, v in entry.items() if k != "name"}
    return out


def load_serve_config(path: str | None, **overrides) -> ServeConfig:
    """The file's ServeConfig (its `args`) with its `deployments:` list laid over `deployments`, option by
    option as Serve does (a listed option replaces the one from `args` or the default; `ray_actor_options`
    as a whole)."""
    data = dict(read_serve_args(path))
    listed = read_serve_deployments(path)
    if listed:
        base = Deployments(**data.get("deployments", {}))
        data["deployments"] = {
            field: {**getattr(base, field).model_dump(exclude_none=True), **listed.get(field, {})}
            for field in Deployments.model_fields
        }
    return ServeConfig(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
