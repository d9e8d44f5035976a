"""Side by side with MusicGen: seconds per 10 s clip for our `paper` preset and MusicGen-small and -medium,
in ONE run on the device present (stated in the output).

Every model is built from its config with random weights: the time does not depend on the values, and
nothing is downloaded. Ours: 50 random CLIP feature frames (a 10 s video at 5 fps) and a text prompt, the
engine's patch loop at each --samplers setting, then the VAE decode. MusicGen (transformers): a random 12-token prompt
through the T5-base encoder, 500 sampled tokens (50 Hz x 10 s) with classifier-free guidance 3.0 and top-k
250 as in its released generation config, then the EnCodec 32 kHz decode. Both at each --batches size.
Dtype: one policy for both. By default fp32, with TF32 matmuls on CUDA; --dtype bf16 gives both bf16 weights
and runs them under torch.autocast(bfloat16): ours is the engine's bf16 loop (compute_dtype, bf16 KV caches,
fp32 ODE state), MusicGen's whole model is cast. Our VAE decoder's dtype is --decode-dtype (float32 by default,
as MusicGen's EnCodec runs under fp32; auto or bfloat16 to time ours with its bf16 decode). One warm-up per
configuration (a clip --warmup times as long as a timed one: 0.1 spares a CPU run half its time), then
medians of --repeats runs. One JSON line per measurement; the last line is the summary, with
vs_musicgen_small = musicgen_small_s / ours_s (and medium) per steps and batch: above 1, ours is faster.

    python benchmarks/peers.py [--samplers euler:20 midpoint:4] [--batches 1 8] [--repeats N] [--only ours small medium]
    python benchmarks/peers.py --quick   # smoke test: shallow stand-ins, a short clip, few tokens
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import time
from functools import partial

import torch
import transformers
from common import describe_device, feature_request, sync, time_engine
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

from model.build import build_bundle
from model.config import DECODE_DTYPES, SOLVERS, load_config
from model.engine import Engine

PROMPT = "a bright piano piece in D major, 120 BPM"
PROMPT_TOKENS = 12  # MusicGen's T5 prompt: random ids, no tokenizer needed
GUIDANCE, TOP_K = 3.0, 250  # facebook/musicgen-*'s generation_config.json
MUSICGEN_DECODERS = {  # the released checkpoints' decoder shapes
    "small": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "ffn_dim": 4096},
    "medium": {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24, "ffn_dim": 6144},
}
# One thread: on a busy shared CPU, threads waiting for each other make small matrix products 10-100x slower
QUICK = {
    "preset": "tiny",
    "musicgen_layers": 2,
    "duration": 0.64,
    "tokens": 8,
    "samplers": [("euler", 2)],
    "batches": [1, 2],
    "threads": 1,
}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def musicgen_config(size: str, layers: int | None = None) -> MusicgenConfig:
    """facebook/musicgen-{size}'s architecture; `layers` makes a shallow stand-in for smoke tests."""
    text = T5Config(  # t5-base: MusicGen's text encoder
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=layers or 12,
        num_heads=12,
        feed_forward_proj="relu",
    )
    codec = EncodecConfig(  # EnCodec 32 kHz: 4 codebooks of 2048 at 50 Hz (32000 / (8*5*4*4))
        sampling_rate=32000,
        upsampling_ratios=[8, 5, 4, 4],
        target_bandwidths=[2.2],
        num_filters=64,
        hidden_size=128,
        codebook_size=2048,
        audio_channels=1,
        use_causal_conv=False,
        normalize=False,
        pad_mode="reflect",
        norm_type="weight_norm",
        compress=2,
        num_lstm_layers=2,
        residual_kernel_size=3,
        dilation_growth_rate=2,
        last_kernel_size=7,
        kernel_size=7,
    )
    shape = MUSICGEN_DECODERS[size] | ({"num_hidden_layers": layers} if layers else {})
    decoder = MusicgenDecoderConfig(vocab_size=2048, num_codebooks=4, audio_channels=1, **shape)
    return MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)


def build_musicgen(size: str, device: torch.device, layers: int | None) -> MusicgenForConditionalGeneration:
    with torch.device(device):  # initialise on the GPU: random init of 1.5 B parameters on a CPU takes minutes
        return MusicgenForConditionalGeneration(musicgen_config(size, layers)).eval()


def time_musicgen(model, batch: int, tokens: int, repeats: int, warmup_tokens: int) -> dict:
    """Medians over `repeats` (after one warm-up of `warmup_tokens`) of `batch` clips: sampling `tokens` steps,
    then the EnCodec decode that generate() runs at its end."""
    device = model.device
    ids = torch.randint(1, model.config.text_encoder.vocab_size, (batch, PROMPT_TOKENS), device=device)
    mask = torch.ones_like(ids)
    decode, marks = model.audio_encoder.decode, []

    def timed_decode(*args, **kwargs):  # generate() decodes inside: mark where sampling ends
        sync(device)
        marks.append(time.perf_counter())
        return decode(*args, **kwargs)

    def once(seed: int, tokens: int = tokens) -> tuple[float, float, int]:
        torch.manual_seed(seed)
        sync(device)
        started = time.perf_counter()
        audio = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            guidance_scale=GUIDANCE,
            top_k=TOP_K,
            max_new_tokens=tokens,
            min_new_tokens=tokens,  # no early stop (the decoder has no EOS anyway)
        )
        sync(device)
        return marks[-1] - started, time.perf_counter() - marks[-1], audio.shape[-1]

    model.audio_encoder.decode = timed_decode
    try:
        once(0, warmup_tokens)
        runs = [once(k + 1) for k in range(repeats)]
    finally:
        del model.audio_encoder.decode  # the class's method again
    tokens_s = statistics.median(r[0] for r in runs)
    decode_s = statistics.median(r[1] for r in runs)
    return {
        "batch": batch,
        "tokens": tokens,
        "audio_s": round(runs[0][2] / model.config.audio_encoder.sampling_rate, 3),  # tokens - 3 frames: delays
        "tokens_s": round(tokens_s, 3),
        "decode_s": round(decode_s, 3),
        "total_s": round(tokens_s + decode_s, 3),
        "seconds_per_clip": round((tokens_s + decode_s) / batch, 3),
        "clips_per_s": round(batch / (tokens_s + decode_s), 3),
    }


def sampler(text: str) -> tuple[str, int]:
    """SOLVER:STEPS (e.g. euler:20, midpoint:4), one of our LocDiT sampler settings."""
    solver, _, steps = text.partition(":")
    if solver not in SOLVERS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SOLVER:STEPS with SOLVER one of {', '.join(SOLVERS)}")
    return solver, int(steps)


def bench_ours(args, device: torch.device, autocast) -> dict[str, float]:
    bundle = build_bundle(load_config(args.preset))
    flow = bundle.config.flow
    per_clip = {}
    for batch in args.batches:
        engine = Engine(
            bundle,
            device=device,
            max_batch=batch,
            max_duration_s=args.duration,
            decode_dtype=args.decode_dtype,
            compute_dtype="bfloat16" if args.dtype == "bf16" else "float32",
        )
        for solver, steps in args.samplers or [(flow.solver, flow.steps)]:
            request = partial(feature_request, engine, steps=steps, prompt=PROMPT, solver=solver)
            with autocast():
                row = time_engine(
                    engine,
                    partial(request, duration_s=args.duration),
                    batch,
                    args.repeats,
                    partial(request, duration_s=args.duration * args.warmup),
                )
            emit({"model": "ours", "preset": args.preset, "solver": solver, "steps": steps} | row)
            per_clip[f"ours_{solver}{steps}_batch{batch}"] = row["seconds_per_clip"]
        del engine  # free its KV caches before the next one is made
    return per_clip


def bench_musicgen(size: str, args, device: torch.device, autocast) -> dict[str, float]:
    model = build_musicgen(size, device, args.musicgen_layers)
    if args.dtype == "bf16":
        model.to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    per_clip = {}
    for batch in args.batches:
        with autocast():
            row = time_musicgen(model, batch, args.tokens, args.repeats, max(1, round(args.tokens * args.warmup)))
        emit({"model": f"musicgen_{size}", "params_m": round(params / 1e6, 1)} | row)
        per_clip[f"musicgen_{size}_batch{batch}"] = row["seconds_per_clip"]
    del model  # medium is 6 GB in fp32: free it before the next
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return per_clip


def ratios(per_clip: dict[str, float], size: str) -> dict[str, float]:
    """musicgen_{size} seconds per clip / ours, for each of our settings timed at a batch MusicGen ran too."""
    out = {}
    for key, ours in per_clip.items():
        if key.startswith("ours_"):
            setting = key.removeprefix("ours_")
            theirs = per_clip.get(f"musicgen_{size}_{setting.split('_')[-1]}")
            if theirs is not None:
                out[setting] = round(theirs / ours, 3)
    return out


def precision(dtype: str, device: torch.device):
    """One policy for both models: its description, and a context to run them in."""
    if dtype == "bf16":
        autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16)
        return "bf16 weights, bf16 autocast, both models (ours: an fp32 ODE state)", autocast
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores: the usual fp32 setting on a GPU
        return "fp32 weights and activations, TF32 matmuls, both models", contextlib.nullcontext
    return "fp32, both models", contextlib.nullcontext


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samplers", type=sampler, nargs="+",
                   help="our LocDiT sampler settings SOLVER:STEPS, one each, e.g. euler:20 midpoint:4 "
                   "(default: the preset's)")  # fmt: skip
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, help="timed runs per configuration (default: 3 on a GPU, 1 on a CPU)")
    p.add_argument("--only", nargs="+", choices=["ours", "small", "medium"], default=["ours", "small", "medium"])
    p.add_argument("--preset", default="paper", help="our model's preset")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio per clip (ours)")
    p.add_argument("--tokens", type=int, default=500, help="MusicGen tokens per clip (50 per second)")
    p.add_argument("--musicgen-layers", type=int, help="shallow MusicGen stand-ins (T5 and decoder): smoke tests")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="warm-up clip length, a share of a timed one, both sides (e.g. 0.1 on a CPU)")  # fmt: skip
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 (TF32 on CUDA) or bf16 weights and autocast")  # fmt: skip
    p.add_argument("--decode-dtype", choices=DECODE_DTYPES, default="float32",
                   help="our VAE decoder's (default float32, as MusicGen's EnCodec under fp32; auto: bf16 where "
                   "the hardware has it)")  # fmt: skip
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK} unless given")
    args = p.parse_args(argv)
    if args.quick:  # the quick values become defaults: flags given still win
        p.set_defaults(**QUICK, repeats=1)
        args = p.parse_args(argv)
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    args.repeats = args.repeats or (3 if device.type == "cuda" else 1)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # the random configs' token-id warnings
    dtype, autocast = precision(args.dtype, device)
    per_clip = {}
    if "ours" in args.only:
        per_clip |= bench_ours(args, device, autocast)
    for size in ("small", "medium"):
        if size in args.only:
            per_clip |= bench_musicgen(size, args, device, autocast)
    summary = {
        "benchmark": "peers",
        "device": describe_device(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": dtype,
        "our_decode_dtype": args.decode_dtype,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "preset": args.preset,
        "clip_s": args.duration,
        "musicgen_tokens": args.tokens,
        "musicgen_guidance": GUIDANCE,
        "quick": args.quick,
        "seconds_per_clip": per_clip,
    }
    for size in ("small", "medium"):
        if r := ratios(per_clip, size):
            summary[f"vs_musicgen_{size}"] = r
    emit(summary)


if __name__ == "__main__":
    main()
