"""Typed, validated configuration for every component, round-tripping through config.json.

One path from text to objects: YAML preset (or a config.json) -> `--set a.b=c` overrides ->
pydantic validation -> `model.build`. Unknown keys are errors (`extra="forbid"`).
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag, model_validator

from model.errors import InputError

CONFIG_VERSION = 1
PRESETS = ("paper", "small", "tiny")
STATIC_PROMPT = "Generate aligned music for the video."  # the paper's prompt for video-only use (§5.1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransformerConfig(_Strict):
    """One transformer stack (RMSNorm, RoPE, GQA, SwiGLU); causality is chosen by the role, not here."""

    hidden: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    ffn: int = Field(gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    norm_eps: float = Field(default=1e-5, gt=0)
    qkv_bias: bool = False  # Qwen2-style checkpoints carry q/k/v biases

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.hidden % self.heads:
            raise InputError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.heads % self.kv_heads:
            raise InputError(f"heads {self.heads} is not divisible by kv_heads {self.kv_heads}")
        if (self.hidden // self.heads) % 2:
            raise InputError("head dim must be even for RoPE")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


class SemanticLMConfig(TransformerConfig):
    vocab_size: int = Field(gt=258)  # at least the byte-level fallback tokenizer's ids


class FSQConfig(_Strict):
    dim: int = Field(default=256, gt=0)
    scale: int = Field(default=9, gt=0)  # round(tanh(x) * scale): 2 * scale + 1 = 19 levels per dim

    @property
    def levels(self) -> int:
        return 2 * self.scale + 1


class ClipTowerConfig(_Strict):
    """An open_clip vision tower given by its sizes (used by the tiny preset instead of a named model)."""

    embed_dim: int = Field(gt=0)
    image_size: int = Field(gt=0)
    layers: int = Field(gt=0)
    width: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    head_width: int = Field(gt=0)


class VisionConfig(_Strict):
    clip_model: str = "ViT-B-32"  # an open_clip model name; ignored when `tower` is given
    tower: ClipTowerConfig | None = None
    clip_checkpoint: str | None = None  # local path or fsspec URI; random init when absent
    feature_dim: int = Field(default=512, gt=0)  # CLIP embedding width fed to the projection
    fps: float = Field(default=5.0, gt=0)
    max_frames: int = Field(default=600, gt=0)

    @property
    def frame_size(self) -> int:
        """Side of the square frames CLIP sees (the open_clip towers this project uses take 224 px)."""
        return self.tower.image_size if self.tower is not None else 224

    @model_validator(mode="after")
    def _tower_width(self) -> VisionConfig:
        if self.tower is not None and self.tower.embed_dim != self.feature_dim:
            raise InputError(f"vision.feature_dim {self.feature_dim} != tower.embed_dim {self.tower.embed_dim}")
        return self


class TextConfig(_Strict):
    tokenizer: str | None = None  # local dir / fsspec URI of a transformers tokenizer; None = byte-level
    max_tokens: int = Field(default=256, gt=0)


class OobleckEncoderConfig(_Strict):
    in_channels: int = 2
    channels: int = 128
    latent_dim: int = 128  # mean and scale halves of the VAE bottleneck
    c_mults: list[int] = [1, 2, 4, 8, 16]
    strides: list[int] = [2, 4, 4, 6, 10]
    use_snake: bool = True
    antialias_activation: bool = False

    @model_validator(mode="after")
    def _supported(self) -> OobleckEncoderConfig:
        if self.antialias_activation:
            raise InputError("antialias_activation=True is not supported (no released Oobleck VAE uses it)")
        if len(self.c_mults) != len(self.strides):
            raise InputError("c_mults and strides must have the same length")
        return self


class OobleckDecoderConfig(_Strict):
    out_channels: int = 2
    channels: int = 128
    latent_dim: int = 64
    c_mults: list[int] = [1, 2, 4, 8, 16]
    strides: list[int] = [2, 4, 4, 6, 10]
    use_snake: bool = True
    antialias_activation: bool = False
    use_nearest_upsample: bool = False
    final_tanh: StrictBool = False  # stable-audio-tools defaults it to True: their importer fills that in

    @model_validator(mode="after")
    def _supported(self) -> OobleckDecoderConfig:
        if self.antialias_activation or self.use_nearest_upsample:
            raise InputError("antialias_activation / use_nearest_upsample are not supported")
        if len(self.c_mults) != len(self.strides):
            raise InputError("c_mults and strides must have the same length")
        return self


class OobleckVAEConfig(_Strict):
    """An Oobleck autoencoder (stable-audio-tools family). Defaults: SongBloom's 48 kHz, hop-1920 VAE."""

    family: Literal["oobleck"] = "oobleck"
    sample_rate: int = 48000
    encoder: OobleckEncoderConfig = OobleckEncoderConfig()
    decoder: OobleckDecoderConfig = OobleckDecoderConfig()
    checkpoint: str | None = None  # .ckpt/.safetensors in the stable-audio-tools layout
    # stable-audio-tools' AudioAutoencoder soft clip (their model.decoder.soft_clip): tanh on the decoded audio
    soft_clip: StrictBool = False
    chunk_latents: int = Field(default=128, gt=0)  # decode window; the overlap comes from the receptive field

    @model_validator(mode="after")
    def _consistent(self) -> OobleckVAEConfig:
        if self.encoder.latent_dim != 2 * self.decoder.latent_dim:
            raise InputError("encoder.latent_dim must be twice decoder.latent_dim (mean and scale halves)")
        if self.encoder.strides != self.decoder.strides:
            raise InputError("encoder and decoder strides differ")
        if self.encoder.in_channels != self.decoder.out_channels:
            raise InputError("encoder.in_channels != decoder.out_channels")
        return self

    @property
    def hop(self) -> int:
        return math.prod(self.encoder.strides)

    @property
    def latent_dim(self) -> int:
        return self.decoder.latent_dim

    @property
    def audio_channels(self) -> int:
        return self.decoder.out_channels

    @property
    def decode_context(self) -> int:
        """Latents of context each side of a decode window (the decoder's receptive radius)."""
        radius, rate = 3.0, 1  # the input conv, kernel 7; each layer's radius is divided by its samples per latent
        for stride in reversed(self.decoder.strides):
            radius += 2 / rate  # transposed conv, kernel 2s: an output sees two inputs
            rate *= stride
            radius += sum(3 * d for d in OOBLECK_DILATIONS) / rate
        radius += 3 / rate  # the output conv
        return math.ceil(radius) + 1

    @property
    def decode_crossfade(self) -> int:
        return 0  # a pure function of its latents: windows meet exactly, nothing to fade


OOBLECK_DILATIONS = (1, 3, 9)  # the residual units of every Oobleck block
GRIFFIN_LIM_MARGIN = 4  # latents (160 ms) beyond the decoder's receptive field


class SpectralVAEConfig(_Strict):
    """A compact spectral autoencoder trained by `videorobin train-vae` (model/specvae.py).

    The encoder reads a log-frequency spectrogram (pitch-resolving bins) at the STFT frame rate and steps
    down to the latent rate; the decoder steps back up and predicts each frame's magnitude spectrum, and
    Griffin-Lim recovers the phase, so no layer runs at the audio rate. It works on the mid (L+R)/2 signal
    and writes it to every output channel (see the README for why).
    """

    family: Literal["spectral"] = "spectral"
    sample_rate: int = 48000
    audio_channels: int = Field(default=2, ge=1)
    latent_dim: int = Field(default=64, gt=0, le=128)
    # The last `pitch_channels` latent channels are not learned: they are the log energy of each semitone from
    # `pitch_f_min` up (model/specvae.py says why), so the decoder is handed the notes and learns to voice them.
    pitch_channels: int = Field(default=0, ge=0)
    pitch_f_min: float = Field(default=65.406, gt=0)  # C2
    frame_hop: int = Field(default=480, gt=0)  # STFT hop: 100 frames/s at 48 kHz
    frames_per_latent: int = Field(default=4, gt=0)  # 480 x 4 = hop 1920: 25 latents/s
    n_fft: int = Field(default=1920, gt=0)  # synthesis window: 4 hops, 25 Hz bins
    analysis_fft: int = Field(default=4096, gt=0)  # encoder input window: long enough to resolve semitones
    bins_per_octave: int = Field(default=36, gt=0)
    f_min: float = Field(default=30.0, gt=0)
    f_max: float = Field(default=20000.0, gt=0)
    width: int = Field(default=256, gt=0)
    ffn_mult: int = Field(default=3, gt=0)
    kernel: int = Field(default=7, gt=0)
    encoder_frame_blocks: int = Field(default=4, ge=0)  # ConvNeXt blocks at the frame rate
    encoder_latent_blocks: int = Field(default=2, ge=0)  # ... at the latent rate
    decoder_latent_blocks: int = Field(default=2, ge=0)
    decoder_frame_blocks: int = Field(default=6, ge=0)
    griffin_lim_iters: int = Field(default=8, ge=0)  # phase refinement rounds per decode window (0: the estimate)
    crossfade_latents: int = Field(default=4, ge=0)  # decode windows overlap by this much, faded into each other
    checkpoint: str | None = None  # a safetensors file in our key layout (a train-vae export)
    chunk_latents: int = Field(default=128, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> SpectralVAEConfig:
        if self.kernel % 2 == 0:
            raise InputError("kernel must be odd (symmetric padding)")
        if self.n_fft % (2 * self.frame_hop):
            raise InputError("n_fft must be an even multiple of frame_hop (whole hops either side of a frame)")
        if not self.f_min < self.f_max <= self.sample_rate / 2:
            raise InputError("need f_min < f_max <= sample_rate / 2")
        if self.pitch_channels >= self.latent_dim:
            raise InputError("pitch_channels must leave some latent channels to learn")
        if self.pitch_f_min * 2 ** ((self.pitch_channels - 1) / 12) > self.sample_rate / 2:
            raise InputError("the top pitch channel is above the Nyquist frequency")
        return self

    @property
    def learned_channels(self) -> int:
        return self.latent_dim - self.pitch_channels

    @property
    def hop(self) -> int:
        return self.frame_hop * self.frames_per_latent

    @property
    def decode_context(self) -> int:
        """Latents of context each side of a decode window: the magnitude decoder's receptive radius, plus
        room for Griffin-Lim, whose estimate is poorest at a window's edges."""
        half = self.kernel // 2
        radius = half * (1 + self.decoder_latent_blocks)  # input conv + blocks at the latent rate
        radius += 1  # the upsampling step: an output frame reads one latent
        radius += half * self.decoder_frame_blocks / self.frames_per_latent
        return math.ceil(radius) + GRIFFIN_LIM_MARGIN

    @property
    def decode_crossfade(self) -> int:
        return self.crossfade_latents


def _vae_family(value: Any) -> str:
    """Configs written before there were two families have no `family`: they are Oobleck."""
    if isinstance(value, dict):
        return value.get("family", "oobleck")
    return getattr(value, "family", "oobleck")


VAEConfig = Annotated[
    Annotated[OobleckVAEConfig, Tag("oobleck")] | Annotated[SpectralVAEConfig, Tag("spectral")],
    Discriminator(_vae_family),
]


Solver = Literal["euler", "midpoint"]
SOLVERS: tuple[str, ...] = Solver.__args__
DecodeDtype = Literal["auto", "float32", "bfloat16"]  # the VAE decoder's; "auto": bf16 where it pays (model/vae.py)
DECODE_DTYPES: tuple[str, ...] = DecodeDtype.__args__
ComputeDtype = Literal["float32", "bfloat16"]  # the patch loop's weights, matmuls and KV caches
COMPUTE_DTYPES: tuple[str, ...] = ComputeDtype.__args__


class FlowConfig(_Strict):
    steps: int = Field(default=20, ge=1)  # solver steps at inference (paper §5.2: 20 Euler steps)
    solver: Solver = "euler"  # midpoint: two evaluations a step, second order (model/flow.py)
    guidance: float = Field(default=2.0, ge=0)
    t_mean: float = -0.4  # training t = sigmoid(N(t_mean, t_std)) ("log-normal")
    t_std: float = Field(default=1.0, gt=0)
    cfg_dropout: float = Field(default=0.1, ge=0, le=1)  # p of zeroing mu in training; prefix never dropped


class WindowConfig(_Strict):
    """Generation windows: a clip longer than the training clips is written window by window, each one
    prefilled with the text, its own frames and the last `context_s` of audio already written."""

    window_s: float = Field(default=10.0, gt=0)  # the training clips' length: no prefill sees more
    context_s: float = Field(default=6.0, gt=0)  # chosen by benchmarks/windows.py (README: seams)

    @model_validator(mode="after")
    def _room(self) -> WindowConfig:
        if self.context_s >= self.window_s:
            raise InputError(f"context_s {self.context_s} must be shorter than window_s {self.window_s}")
        return self


class VideoRobinConfig(_Strict):
    version: int = CONFIG_VERSION
    patch_size: int = Field(default=4, gt=0)  # latent frames per AR step; 8 and 16 are the paper's ablations
    # Our addition, off in the paper's preset: frame tokens and audio positions both carry an embedding of
    # their time in seconds (model/timing.py), so a patch can find the frames of its own moment by content.
    time_embedding: bool = False
    latent_dim: int = Field(default=64, gt=0)
    semantic_lm: SemanticLMConfig
    fsq: FSQConfig | None = FSQConfig()  # None with rite=None: the "w/o FSQ + RITE" ablation
    rite: TransformerConfig | None = None  # None: the "w/o RITE" ablation
    locenc: TransformerConfig
    locdit: TransformerConfig
    vision: VisionConfig | None = VisionConfig()  # None: stage 1 (text-to-music)
    text: TextConfig = TextConfig()
    vae: VAEConfig = OobleckVAEConfig()
    flow: FlowConfig = FlowConfig()
    window: WindowConfig = WindowConfig()

    @model_validator(mode="after")
    def _consistent(self) -> VideoRobinConfig:
        if self.version != CONFIG_VERSION:
            raise InputError(f"config version {self.version} is not supported (expected {CONFIG_VERSION})")
        if self.vae.latent_dim != self.latent_dim:
            raise InputError(f"vae latent_dim {self.vae.latent_dim} != model latent_dim {self.latent_dim}")
        if self.rite is not None and self.fsq is None:
            raise InputError("RITE models the residual of FSQ: rite requires fsq")
        if self.rite is not None and self.rite.hidden != self.semantic_lm.hidden:
            raise InputError("rite.hidden must equal semantic_lm.hidden (RITE reads the SemanticLM stream)")
        return self

    @property
    def latent_rate(self) -> float:
        """Latent frames per second (25 for the 48 kHz hop-1920 VAE)."""
        return self.vae.sample_rate / self.vae.hop

    def patches_for(self, duration_s: float) -> int:
        """ceil(duration x latent rate / P): the clip's number of AR steps."""
        frames = math.ceil(round(duration_s * self.latent_rate, 6))
        return max(1, math.ceil(frames / self.patch_size))

    @property
    def patch_s(self) -> float:
        return self.patch_size / self.latent_rate

    @property
    def window_patches(self) -> int:
        return self.patches_for(self.window.window_s)

    @property
    def context_patches(self) -> int:
        return min(self.window_patches - 1, max(1, round(self.window.context_s / self.patch_s)))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> VideoRobinConfig:
        return cls.model_validate_json(text)


def _why(err: Exception) -> str:
    """A parse error's reason and place, in a few words (PyYAML's own message spans lines and quotes the text)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(err, 'problem', None) or err}{where}"


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise InputError(f"override {assignment!r} is not of the form a.b=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise InputError(f"override {assignment!r}: {key} is not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise InputError(f"override {assignment!r}: the value is not valid YAML ({_why(err)})") from None


def load_config(source: str = "tiny", overrides: list[str] | None = None) -> VideoRobinConfig:
    """Build a validated config from a preset name or a YAML/JSON file, then `a.b=value` overrides.

    Example: ``load_config("paper", ["rite=null", "patch_size=8"])`` is the paper's "w/o RITE, P=8".
    """
    if source in PRESETS:
        tree = yaml.safe_load(resources.files("model.presets").joinpath(f"{source}.yaml").read_text())
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"unknown preset or config file {source!r} (presets: {', '.join(PRESETS)})")
        text = path.read_text()
        try:
            tree = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise InputError(
                f"{source}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({_why(err)})"
            ) from None
        if not isinstance(tree, dict):
            raise InputError(f"{source}: a config file must hold a mapping of settings")
    return _validated(tree, overrides or [])


def apply_overrides(cfg: VideoRobinConfig, overrides: list[str]) -> VideoRobinConfig:
    """`cfg` with `a.b=value` overrides applied, validated again."""
    return _validated(cfg.model_dump(), overrides)


def with_vae(cfg: VideoRobinConfig, vae: VAEConfig) -> VideoRobinConfig:
    """`cfg` with another VAE (e.g. a train-vae export), validated again against the model's latent width."""
    return VideoRobinConfig.model_validate(cfg.model_dump() | {"vae": vae.model_dump()})


def _validated(tree: dict[str, Any], overrides: list[str]) -> VideoRobinConfig:
    for assignment in overrides:
        _apply_override(tree, assignment)
    return VideoRobinConfig.model_validate(tree)
