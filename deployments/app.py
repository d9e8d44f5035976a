"""The one place the application is composed: `build_app(ServeConfig)` binds the deployments together.

    disaggregated:  Ingress -> Planner (KV caches, patch loop) <-> Refiner (batched)
                                    <-> FrameEncoder (batched; each window's frames)
                            -> AudioDecoder (overlapping windows, streamed)
    fused:          Ingress -> Fused (the in-process engine answers both roles)

`serve run cluster/serve-config.yaml` / `serve deploy` import `deployments.app:app_builder`.
"""

from __future__ import annotations

from ray.serve import Application

from deployments.config import ServeConfig
from deployments.decoder import AudioDecoder
from deployments.encoder import FrameEncoder
from deployments.fused import Fused
from deployments.ingress import Ingress
from deployments.planner import Planner
from deployments.refiner import Refiner
from model.checkpoint import read_config


def build_app(cfg: ServeConfig) -> Application:
    opts, limits = cfg.deployments, cfg.limits
    if cfg.mode == "fused":
        fused = Fused.options(**opts.fused.serve_options()).bind(
            cfg.checkpoint,
            cfg.device,
            cfg.planner_capacity,
            limits.max_video_s,
            cfg.planner_stall_s,
            cfg.compiled,
            cfg.decode_dtype,
            cfg.compute_dtype,
        )
        return Ingress.options(**opts.ingress.serve_options()).bind(cfg.model_dump(), fused, fused)
    encoder = None
    if read_config(cfg.checkpoint).vision is not None:
        encoder = FrameEncoder.options(**opts.encoder.serve_options()).bind(
            cfg.checkpoint, cfg.device, cfg.encoder_batch, cfg.batch_wait_s
        )
    refiner = Refiner.options(**opts.refiner.serve_options()).bind(
        cfg.checkpoint, cfg.device, cfg.refiner_batch, cfg.batch_wait_s, cfg.compiled, cfg.compute_dtype
    )
    planner = Planner.options(**opts.planner.serve_options()).bind(
        cfg.checkpoint,
        refiner,
        encoder,
        cfg.device,
        cfg.planner_capacity,
        limits.max_video_s,
        cfg.refine_retry_s,
        cfg.planner_stall_s,
        cfg.decode_dtype,
        cfg.compiled,
        cfg.compute_dtype,
    )
    decoder = AudioDecoder.options(**opts.decoder.serve_options()).bind(
        cfg.checkpoint, cfg.device, cfg.decode_dtype, cfg.compiled
    )
    return Ingress.options(**opts.ingress.serve_options()).bind(cfg.model_dump(), planner, decoder)


def app_builder(args: dict) -> Application:
    """Entry point for Serve config files: `args` is the ServeConfig."""
    return build_app(ServeConfig(**args))
