"""Commands that run the model directly: generate, demo, info, serve."""

from __future__ import annotations

import logging
import os
import time

import torch

from jobs.cli_common import (
    CLIError,
    add_model_args,
    device_name,
    example,
    load_model,
    progress_bar,
    saved_model,
    say,
    scratch_dir,
)
from jobs.ray_session import connect

log = logging.getLogger("videorobin")

AUDIO_FORMATS = {".wav": "wav", ".flac": "flac"}


def _check_generate_args(args) -> str:
    """The output format; every combination of flags that cannot work is refused here, in one line."""
    fmt = AUDIO_FORMATS.get(os.path.splitext(args.out)[1].lower())
    if fmt is None:
        raise CLIError(f"--out {args.out}: must end in .wav or .flac")
    if args.mux and not args.mux.lower().endswith(".mp4"):
        raise CLIError(f"--mux {args.mux}: must end in .mp4")
    if args.audio_prompt is None and (args.include_prompt or args.from_s is not None):
        raise CLIError("--include-prompt and --from need --audio-prompt")
    if args.from_s is not None and args.include_prompt:
        raise CLIError("--from already writes the whole track (the kept part included): drop --include-prompt")
    if args.align_cuts != 1 and args.video is None:
        raise CLIError("--align-cuts needs --video (the cuts to align to)")
    if args.video is None:
        if not (args.prompt or args.audio_prompt):
            raise CLIError("give --video, or --prompt / --audio-prompt and --duration for music without a video")
        if args.duration is None and args.from_s is None:
            raise CLIError("without --video, --duration says how many seconds of music to write")
        if args.mux:
            raise CLIError("--mux needs --video (the picture to put the music under)")
    return fmt


def _generate(args) -> dict:
    import numpy as np

    from model.engine import Engine, GenerationParams
    from model.engine.align import stream_aligned
    from model.engine.prepare import samples_per_patch
    from model.engine.request import AudioPrompt
    from model.media import mux, probe_video, read_audio, write_audio_stream

    fmt = _check_generate_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = GenerationParams(args.seed, args.duration, args.steps, args.guidance, args.solver)
    if args.video is not None:
        probe_video(args.video)  # refuse a bad video before spending time on the model
    bundle = load_model(args)
    vae = bundle.config.vae
    prompt_audio = None
    if args.audio_prompt is not None:
        audio = read_audio(args.audio_prompt, vae.sample_rate, vae.audio_channels, max_s=args.max_duration)
        prompt_audio = AudioPrompt(audio, vae.sample_rate, args.from_s)
    engine = Engine(
        bundle,
        device=device_name(args.device),
        max_batch=max(1, args.align_cuts),
        max_duration_s=args.max_duration,
        decode_dtype=args.decode_dtype,
        compute_dtype=args.compute_dtype,
    )
    request = engine.make_request(video=args.video, prompt=args.prompt, params=params, audio_prompt=prompt_audio)
    lead = np.zeros((vae.audio_channels, 0), np.float32)
    if prompt_audio is not None:
        lead = prompt_audio.output_lead(args.include_prompt, samples_per_patch(bundle.config))
    started = time.perf_counter()
    update, close = progress_bar("generating")
    try:
        patches = None
        if args.align_cuts > 1:
            from jobs.evaluation.cuts import cut_chooser, detect_cuts

            patches = stream_aligned(engine, request, args.align_cuts, cut_chooser(detect_cuts(args.video)), update)
        chunks = (chunk for _, chunk in engine.stream_audio([request], update, patches=patches))
        frames = lead.shape[1] + round(request.duration_s * vae.sample_rate)
        write_audio_stream(args.out, _chain(lead, chunks), frames, vae.audio_channels, vae.sample_rate, fmt)
    finally:
        close()
    elapsed = time.perf_counter() - started
    if args.mux:
        mux(args.video, read_audio(args.out, vae.sample_rate, vae.audio_channels), vae.sample_rate, args.mux)
    return {
        "audio": args.out,
        "mp4": args.mux,
        "duration_s": round(frames / vae.sample_rate, 3),
        "generated_s": round(request.duration_s, 3),
        "patches": request.n_patches,
        "seconds": round(elapsed, 2),
        "rtf": round(elapsed / request.duration_s, 3),
    }


def _chain(first, rest):
    if first.shape[1]:
        yield first
    yield from rest


def _demo(args) -> dict:
    from model.media import write_beat_video

    os.makedirs(args.out_dir, exist_ok=True)
    video = os.path.join(args.out_dir, "sample.mp4")
    write_beat_video(video, duration_s=args.duration, beat_s=60.0 / DEMO_BPM, beats_per_bar=4)
    args.video, args.out = video, os.path.join(args.out_dir, "sample.wav")
    args.mux = os.path.join(args.out_dir, "sample_with_music.mp4")
    args.duration = None
    return {"video": video, **_generate(args)}


DEMO_BPM = 90  # the demo prompt's tempo: the sample video cuts on its bars and moves on its beats


def _info(args) -> dict:
    from model.build import parameter_counts
    from model.config import load_config
    from model.vae import build_vae
    from model.videorobin import VideoRobin

    cfg = load_config(args.preset, args.set)
    with torch.device("meta"):  # count without allocating (the paper preset is ~1 B parameters)
        counts = parameter_counts(VideoRobin(cfg), build_vae(cfg.vae))
    width = max(map(len, counts))
    for name, n in counts.items():
        say(args, f"{name:<{width}}  {n:>13,}  ({n / 1e6:.1f} M)")
    say(
        args,
        f"{'latent':<{width}}  {cfg.latent_dim} channels at {cfg.latent_rate:g} Hz, patch {cfg.patch_size}"
        f" ({cfg.patch_size / cfg.latent_rate * 1000:.0f} ms), {cfg.patches_for(10.0)} patches per 10 s",
    )
    return {"parameters": counts} if args.json else {}  # the table above is the text summary


def _serve(args) -> dict:
    import signal

    from ray import serve

    from deployments.app import build_app
    from deployments.config import load_serve_config, read_serve_args

    checkpoint = args.checkpoint
    if checkpoint is None and "checkpoint" not in read_serve_args(args.config):  # the shipped model
        checkpoint = saved_model(args, scratch_dir(args, "videorobin-serve-"))  # removed when serve ends
    cfg = load_serve_config(
        args.config, checkpoint=checkpoint, mode=args.mode, require_token=args.require_token or None
    )
    app = build_app(cfg)
    connect(args.address, log_to_driver=True)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app, name="videorobin", route_prefix="/", blocking=False)
    say(args, f"videorobin: serving {cfg.mode} on http://{args.host}:{args.port} (docs at /docs); Ctrl-C stops")
    say(args, f"videorobin: API auth: {cfg.auth_mode()}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it like Ctrl-C
    try:
        signal.pause()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the normal way to stop a server
        say(args, "videorobin: stopping")
    finally:
        serve.shutdown()
    return {}


def add_parsers(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="write a soundtrack for a video, or music for a prompt alone",
        epilog=example(
            'videorobin generate --video clip.mp4 --prompt "lo-fi piano, 90 BPM" --out music.wav --mux clip_music.mp4',
            'videorobin generate --prompt "a slow piano piece in A minor, 70 BPM" --duration 12 --out music.flac',
        ),
    )
    gen.add_argument("--video", help="input video file (without it: --prompt and --duration)")
    gen.add_argument("--prompt", help="creator intent; with a video, default: the static video-only prompt")
    gen.add_argument("--out", required=True, help="output audio (.wav or .flac, 48 kHz stereo)")
    gen.add_argument("--mux", help="also write this .mp4: the video with the music as its audio")
    gen.add_argument("--duration", type=float, help="seconds of music (default: the video's duration)")
    gen.add_argument("--audio-prompt", metavar="FILE", help="music to continue: the new music follows its end")
    gen.add_argument("--include-prompt", action="store_true", help="start the output with the audio prompt itself")
    gen.add_argument(
        "--from",
        dest="from_s",
        type=float,
        metavar="T",
        help="with --audio-prompt TRACK: keep TRACK up to T seconds and write the rest anew (the whole track out)",
    )
    gen.add_argument(
        "--align-cuts",
        type=int,
        default=1,
        metavar="N",
        help="at each window write N candidates and keep the one whose beats fall best on the video's cuts",
    )
    gen.add_argument(
        "--threads", type=int, help="torch CPU threads; 1 reproduces the server's and score's audio bit for bit"
    )
    add_model_args(gen)
    gen.set_defaults(run=_generate)

    demo = sub.add_parser(
        "demo",
        help="make a sample video, then write its soundtrack and a muxed mp4",
        epilog=example("videorobin demo --out-dir demo_output --duration 8"),
    )
    demo.add_argument("--out-dir", default="demo_output", help="where sample.mp4, .wav and _with_music.mp4 go")
    demo.add_argument("--duration", type=float, default=8.0, help="length of the sample video, seconds")
    demo.add_argument("--prompt", default="lo-fi piano, 90 BPM, A minor, builds at the end", help="creator intent")
    add_model_args(demo)
    demo.set_defaults(run=_demo, audio_prompt=None, include_prompt=False, from_s=None, align_cuts=1, threads=None)

    srv = sub.add_parser(
        "serve",
        help="the HTTP API on Ray Serve, until interrupted (GET /readyz when ready)",
        epilog=example(
            "videorobin serve --mode fused --port 8000",
            "videorobin serve --config cluster/serve-config.yaml --require-token",
        ),
    )
    srv.add_argument("--config", help="serving YAML: a ServeConfig, or a Serve config whose app args are one")
    srv.add_argument("--checkpoint", help="model checkpoint (overrides the config's; default: the shipped model)")
    srv.add_argument("--mode", choices=["disaggregated", "fused"], help="override the config's mode")
    srv.add_argument("--preset", help="random weights of this preset instead of a checkpoint")
    srv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (random model)")
    srv.add_argument("--host", default="127.0.0.1", help="address the HTTP server listens on (0.0.0.0: all)")
    srv.add_argument("--port", type=int, default=8000, help="HTTP port")
    srv.add_argument("--address", help="Ray cluster address (default: start a local one)")
    srv.add_argument(
        "--require-token",
        action="store_true",
        help="refuse to start unless a bearer token is configured (auth_token or $VIDEOROBIN_API_TOKEN)",
    )
    srv.set_defaults(run=_serve)

    info = sub.add_parser(
        "info", help="parameter counts per component", epilog=example("videorobin info --preset paper --set rite=null")
    )
    info.add_argument("--preset", default="paper", help="preset (tiny, small, paper) or config file")
    info.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    info.set_defaults(run=_info)
