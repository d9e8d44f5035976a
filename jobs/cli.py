"""`videorobin`: the command line. generate | demo | info | score | make-dataset | prepare | train.

Bad input ends with one line on stderr (`videorobin: error: ...`) and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

import torch
from pydantic import ValidationError

from model.media import MediaError

log = logging.getLogger("videorobin")

USER_ERRORS = (MediaError, ValueError, FileNotFoundError, ValidationError)
AUDIO_FORMATS = {".wav": "wav", ".flac": "flac"}


class CLIError(Exception):
    """A problem with the command line the user can fix."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + error; we want one line
        raise CLIError(message)


def _one_line(err: BaseException) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"invalid config: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return " ".join(str(err).split()) or type(err).__name__


def _device(name: str | None) -> str:
    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(args):
    from model.build import build_bundle
    from model.checkpoint import load_bundle
    from model.config import load_config

    if args.checkpoint:
        return load_bundle(args.checkpoint)
    cfg = load_config(args.preset, args.set)
    log.warning("no --checkpoint: using randomly initialised %s weights, so the output is not music", args.preset)
    return build_bundle(cfg, seed=0)


def _progress_bar(total_label: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(desc=total_label, unit="patch", disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _generate(args) -> dict:
    from model.engine import Engine, GenerationParams
    from model.media import mux, probe_video, write_audio

    fmt = AUDIO_FORMATS.get(os.path.splitext(args.out)[1].lower())
    if fmt is None:
        raise CLIError(f"--out {args.out}: must end in .wav or .flac")
    if args.mux and not args.mux.lower().endswith(".mp4"):
        raise CLIError(f"--mux {args.mux}: must end in .mp4")
    params = GenerationParams(seed=args.seed, duration_s=args.duration, steps=args.steps, guidance=args.cfg)
    probe_video(args.video)  # refuse a bad video before spending time on the model
    bundle = _load(args)
    engine = Engine(bundle, device=_device(args.device), max_batch=1, max_duration_s=args.max_duration)
    request = engine.make_request(video=args.video, prompt=args.prompt, params=params)
    started = time.perf_counter()
    update, close = _progress_bar("generating")
    try:
        (result,) = engine.generate([request], progress=update)
    finally:
        close()
    elapsed = time.perf_counter() - started
    write_audio(args.out, result.audio, result.sample_rate, fmt)
    if args.mux:
        mux(args.video, result.audio, result.sample_rate, args.mux)
    return {
        "audio": args.out,
        "mp4": args.mux,
        "duration_s": round(result.duration_s, 3),
        "patches": request.n_patches,
        "seconds": round(elapsed, 2),
        "rtf": round(elapsed / result.duration_s, 3),
    }


def _demo(args) -> dict:
    from model.media import write_sample_video

    os.makedirs(args.out_dir, exist_ok=True)
    video = os.path.join(args.out_dir, "sample.mp4")
    write_sample_video(video, duration_s=args.duration, cut_every_s=1.0)
    args.video, args.out = video, os.path.join(args.out_dir, "sample.wav")
    args.mux = os.path.join(args.out_dir, "sample_with_music.mp4")
    args.duration = None
    return {"video": video, **_generate(args)}


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
        print(f"{name:<{width}}  {n:>13,}  ({n / 1e6:.1f} M)")
    print(
        f"{'latent':<{width}}  {cfg.latent_dim} channels at {cfg.latent_rate:g} Hz, patch {cfg.patch_size}"
        f" ({cfg.patch_size / cfg.latent_rate * 1000:.0f} ms), {cfg.patches_for(10.0)} patches per 10 s"
    )
    return {}


def _score(args) -> dict:
    from jobs.catalogue import CatalogueError
    from jobs.score import ScoreConfig, run
    from model.build import build_bundle
    from model.checkpoint import save_bundle
    from model.config import load_config
    from model.io import uri_exists, uri_join

    checkpoint = args.checkpoint
    if checkpoint is None:  # a random model, saved once so every worker and every rerun uses the same weights
        checkpoint = uri_join(args.out, "model")
        if not uri_exists(uri_join(checkpoint, "config.json")):
            log.warning(
                "no --checkpoint: scoring with randomly initialised %s weights (saved to %s)", args.preset, checkpoint
            )
            save_bundle(build_bundle(load_config(args.preset, args.set)), checkpoint)
    flags = _job_flags(args, ScoreConfig) | {
        "checkpoint": checkpoint,
        "guidance": args.cfg,
        "max_duration_s": args.max_duration,
    }
    cfg = ScoreConfig(**flags)
    try:
        summary = run(cfg)
    except CatalogueError as err:
        raise CLIError(str(err)) from None
    print(
        f"score: {summary['ok']} ok, {summary['failed']} failed, {summary['skipped']} skipped; "
        f"{summary['generated']} generated in {summary['wall_s']} s ({summary['videos_per_s']} videos/s, "
        f"{summary['audio_s_per_wall_s']} audio-s per wall-s)"
    )
    return {**summary, "exit_status": 1 if summary["failed"] else 0}


def _make_dataset(args) -> dict:
    from jobs.dataset import DatasetConfig, RenderError, run

    try:
        return run(DatasetConfig(**_job_flags(args, DatasetConfig)))
    except RenderError as err:
        raise CLIError(str(err)) from None


def _prepare(args) -> dict:
    from jobs.catalogue import CatalogueError
    from jobs.prepare import PrepareConfig, run
    from model.checkpoint import read_config
    from model.config import VideoRobinConfig, load_config

    model = read_config(args.checkpoint) if args.checkpoint else load_config(args.preset, args.set)
    if args.vae:
        if args.checkpoint:
            raise CLIError("--vae and --checkpoint both name a VAE: give one")
        from jobs.train_vae import read_export

        model = VideoRobinConfig.model_validate(model.model_dump() | {"vae": read_export(args.vae).model_dump()})
    cfg = PrepareConfig(**_job_flags(args, PrepareConfig), model=model)
    try:
        summary = run(cfg)
    except CatalogueError as err:
        raise CLIError(str(err)) from None
    return {**summary, "exit_status": 1 if summary["failed"] else 0}


def _train(args) -> dict:
    from jobs.train import TrainConfig, run
    from jobs.train_runs import TrainingFailed

    try:
        summary = run(TrainConfig(**_job_flags(args, TrainConfig)))
    except TrainingFailed as err:
        print(f"videorobin: training failed: {_one_line(err)}", file=sys.stderr)
        return {"exit_status": 1}
    print(
        f"train {summary['stage']}: {summary['steps']} steps, loss {summary['first_loss']} -> "
        f"{summary['final_loss']}, {summary['samples_per_s']} samples/s; checkpoint {summary['checkpoint']}"
    )
    return summary


def _train_vae(args) -> dict:
    from jobs.train_runs import TrainingFailed
    from jobs.train_vae import TrainVAEConfig, run
    from model.config import SpectralVAEConfig, load_config

    vae = load_config(args.preset, args.set).vae
    if not isinstance(vae, SpectralVAEConfig):
        raise CLIError(f"--preset {args.preset}: its VAE is {vae.family!r}; train-vae trains the spectral family")
    flags = _job_flags(args, TrainVAEConfig) | {"vae": vae.model_copy(update={"checkpoint": None})}
    try:
        summary = run(TrainVAEConfig(**flags))
    except TrainingFailed as err:
        print(f"videorobin: training failed: {_one_line(err)}", file=sys.stderr)
        return {"exit_status": 1}
    print(
        f"train-vae: {summary['steps']} steps, loss {summary['first_loss']} -> {summary['final_loss']}, "
        f"{summary['audio_s_per_s']} audio-s/s; checkpoint {summary['checkpoint']}"
    )
    return summary


def _evaluate_vae(args) -> dict:
    from jobs.train_vae import read_export
    from jobs.vae_report import VAEReportConfig, run

    flags = _job_flags(args, VAEReportConfig) | {"vae": read_export(args.vae)}
    summary = run(VAEReportConfig(**flags))
    print(
        f"evaluate-vae: {summary['clips']} clips; key kept {summary.get('key_kept')}, tempo kept "
        f"{summary.get('tempo_kept')}; STFT distance {summary.get('stft_distance')}, mel {summary.get('mel_distance')}"
    )
    return {"exit_status": 1 if summary.get("failed") else 0}


def _evaluate(args) -> dict:
    from jobs.evaluate import EvaluateConfig, EvaluateError, run

    flags = _job_flags(args, EvaluateConfig) | {"embedders": args.embedder or ["musicnn"]}
    try:
        summary = run(EvaluateConfig(**flags))
    except EvaluateError as err:
        raise CLIError(str(err)) from None
    print(f"evaluate: {summary['ok']} clips evaluated, {summary['failed']} failed; report {summary['report']}")
    return {**summary, "exit_status": 1 if summary["failed"] else 0}


def _serve(args) -> dict:
    import signal
    import tempfile

    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.config import load_serve_config
    from model.build import build_bundle
    from model.checkpoint import save_bundle
    from model.config import load_config

    checkpoint = args.checkpoint
    if checkpoint is None and not args.config:
        checkpoint = tempfile.mkdtemp(prefix="videorobin-serve-")
        log.warning("no --checkpoint: serving randomly initialised %s weights (saved to %s)", args.preset, checkpoint)
        save_bundle(build_bundle(load_config(args.preset, args.set)), checkpoint)
    cfg = load_serve_config(args.config, checkpoint=checkpoint, mode=args.mode)
    app = build_app(cfg)
    ray.init(address=args.address, configure_logging=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app, name="videorobin", route_prefix="/", blocking=False)
    print(f"videorobin: serving {cfg.mode} on http://{args.host}:{args.port} (docs at /docs); Ctrl-C stops")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it like Ctrl-C
    try:
        signal.pause()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the normal way to stop a server
        print("videorobin: stopping")
    finally:
        serve.shutdown()
    return {}


def _pool_args(p: argparse.ArgumentParser, stages: tuple[tuple[str, int], ...]) -> None:
    """Sizing flags of a Ray Data job's actor pools: --<stage>-actors/-batch/-gpus and --actor-cpus."""
    for stage, batch in stages:
        p.add_argument(f"--{stage}-actors", type=int, default=1, help=f"{stage} actor pool size")
        p.add_argument(f"--{stage}-batch", type=int, default=batch, help=f"rows per {stage} batch")
        p.add_argument(f"--{stage}-gpus", type=float, default=0.0, help=f"GPUs per {stage} actor")
    p.add_argument("--actor-cpus", type=float, default=0.5, help="CPUs per actor (keep <= 0.5 on tiny clusters)")


def _job_flags(args, config_cls) -> dict:
    """The parsed flags that are fields of a job's config, by name (e.g. --encode-batch -> encode_batch)."""
    return {k: getattr(args, k) for k in config_cls.model_fields if hasattr(args, k)}


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="checkpoint directory (local path or fsspec URI)")
    p.add_argument("--preset", default="tiny", help="preset or config file when no --checkpoint (tiny, paper)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="Euler steps per patch (>= 1; default: the model's)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (>= 0; default: the model's)")
    p.add_argument("--max-duration", type=float, default=120.0, help="longest clip accepted, seconds")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="videorobin", description="Music for video: Video-Robin generation and jobs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="write a soundtrack for a video")
    gen.add_argument("--video", required=True, help="input video file")
    gen.add_argument("--prompt", help="creator intent; default: the static video-only prompt")
    gen.add_argument("--out", required=True, help="output audio (.wav or .flac, 48 kHz stereo)")
    gen.add_argument("--mux", help="also write this .mp4: the video with the music as its audio")
    gen.add_argument("--duration", type=float, help="seconds of music (default: the video's duration)")
    _model_args(gen)
    gen.set_defaults(run=_generate)

    demo = sub.add_parser("demo", help="make a sample video, then write its soundtrack and a muxed mp4")
    demo.add_argument("--out-dir", default="demo_output")
    demo.add_argument("--duration", type=float, default=8.0, help="length of the sample video, seconds")
    demo.add_argument("--prompt", default="lo-fi piano, 90 BPM, A minor, builds at the end")
    _model_args(demo)
    demo.set_defaults(run=_demo)

    score = sub.add_parser("score", help="soundtracks for a whole video catalogue (Ray Data, resumable)")
    score.add_argument("--catalogue", required=True, help="manifest (.parquet/.csv/.jsonl) or a glob (dir/*.mp4)")
    score.add_argument("--out", required=True, help="output directory or fsspec URI")
    score.add_argument("--default-prompt", help="prompt for rows without one (default: the static prompt)")
    score.add_argument("--format", default="wav", choices=["wav", "flac"])
    score.add_argument("--mux", action="store_true", help="also write mp4/<id>.mp4 with the music muxed in")
    score.add_argument("--address", help="Ray cluster address (default: start a local one)")
    score.add_argument("--skip-failed", action="store_true", help="on a rerun, do not retry failed rows")
    _model_args(score)
    _pool_args(score, (("encode", 8), ("generate", 8), ("decode", 4)))
    score.add_argument("--probe-cpus", type=float, default=0.25, help="CPUs per probe/write task")
    score.add_argument("--probe-tasks", type=int, default=4, help="concurrent probe/write tasks")
    score.add_argument("--rows-per-block", type=int, default=4, help="rows per block: the unit of resume")
    score.set_defaults(run=_score)

    data = sub.add_parser(
        "make-dataset", help="a training corpus: music21 scores arranged, rendered with a GM soundfont (Ray tasks)"
    )
    data.add_argument("--out", required=True, help="output directory (a rerun with the same settings resumes)")
    data.add_argument("--clips", type=int, required=True)
    data.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    data.add_argument("--seed", type=int, default=0, help="chooses the pieces, the split and every clip")
    data.add_argument("--heldout-fraction", type=float, default=0.1, help="share of pieces held out")
    data.add_argument("--soundfont", help="a General MIDI .sf2 (default: the system's GM soundfont)")
    data.add_argument("--address", help="Ray cluster address (default: start a local one)")
    data.add_argument("--render-cpus", type=float, default=1.0, help="CPUs per render task (one piece each)")
    data.add_argument("--task-timeout", type=float, default=300.0, help="seconds before a piece's task is dropped")
    data.set_defaults(run=_make_dataset)

    prep = sub.add_parser("prepare", help="training manifest -> Parquet shards of latents, CLIP features, tokens")
    prep.add_argument(
        "--manifest", required=True, help="JSONL/CSV/Parquet with id, audio, caption[, video, start, duration]"
    )
    prep.add_argument("--out", required=True, help="output directory or fsspec URI")
    prep.add_argument("--checkpoint", help="take the frozen VAE/CLIP/tokenizer from this checkpoint")
    prep.add_argument("--preset", default="tiny", help="else: the model config whose encoders to use")
    prep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. vae.checkpoint=URI vision.clip_checkpoint=URI",
    )
    prep.add_argument("--vae", help="encode with this train-vae export (its config and weights)")
    prep.add_argument("--address", help="Ray cluster address (default: start a local one)")
    prep.add_argument("--rows-per-shard", type=int, default=256)
    _pool_args(prep, (("encode", 8),))
    prep.set_defaults(run=_prepare)

    train = sub.add_parser("train", help="Ray Train + DeepSpeed over prepared shards (stage t2m or v2m)")
    train.add_argument("--stage", required=True, choices=["t2m", "v2m"], help="t2m: text only; v2m: adds video")
    train.add_argument("--data", required=True, help="a `videorobin prepare` output directory or URI")
    train.add_argument("--storage", required=True, help="where runs and checkpoints live (path, s3://, gs://)")
    train.add_argument("--steps", type=int, required=True, help="optimizer steps in the whole run")
    train.add_argument("--export", help="write the trained model here in the checkpoint format")
    train.add_argument("--init-from", help="start from this checkpoint (v2m: the stage-1 export)")
    train.add_argument("--name", help="run name under --storage (default: videorobin-<stage>)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run from its latest checkpoint (or start it): safe for job retries",
    )
    train.add_argument("--address", help="Ray cluster address (default: start a local one)")
    train.add_argument("--workers", type=int, default=1, help="training workers (one per GPU)")
    train.add_argument("--gpus-per-worker", type=float, default=0.0, help="0 trains on CPUs (gloo, fp32)")
    train.add_argument("--cpus-per-worker", type=float, default=1.0)
    train.add_argument("--deepspeed", help="DeepSpeed JSON (default: ZeRO-2, jobs/deepspeed/zero2.json)")
    train.add_argument("--zero-stage", type=int, choices=[1, 2, 3], help="override the JSON's ZeRO stage")
    train.add_argument("--batch-size", type=int, default=4, help="clips per worker per step")
    train.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (cosine, 10%% warm-up)")
    train.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of --steps")
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--grad-clip", type=float, default=1.0)
    train.add_argument("--clip-seconds", type=float, default=10.0, help="training crop length")
    train.add_argument("--input-mask", type=float, default=0.0, help="p of masking each text token / frame")
    train.add_argument("--video-dropout", type=float, default=0.0, help="v2m: p of a clip trained without video")
    train.add_argument("--shuffle-buffer", type=int, default=64, help="rows in each worker's shuffle buffer")
    train.add_argument("--checkpoint-every", type=int, default=100)
    train.add_argument("--keep-checkpoints", type=int, default=2)
    train.add_argument("--max-failures", type=int, default=3, help="worker-group restarts before giving up")
    train.add_argument("--log-every", type=int, default=10)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    train.set_defaults(run=_train)

    tv = sub.add_parser("train-vae", help="train the compact spectral VAE (Ray Train, CPU or GPU, resumable)")
    tv.add_argument(
        "--manifest", required=True, help="a make-dataset manifest (train.jsonl): id, audio[, start, duration]"
    )
    tv.add_argument("--storage", required=True, help="where runs and checkpoints live (path, s3://, gs://)")
    tv.add_argument("--steps", type=int, required=True, help="optimizer steps in the whole run")
    tv.add_argument("--export", help="write vae.json + vae.safetensors here (what `prepare --vae` takes)")
    tv.add_argument("--preset", default="small", help="preset or config file whose `vae` section is trained")
    tv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. vae.width=192")
    tv.add_argument("--name", default="videorobin-vae", help="run name under --storage")
    tv.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint (or start it)")
    tv.add_argument("--address", help="Ray cluster address (default: start a local one)")
    tv.add_argument("--workers", type=int, default=1)
    tv.add_argument("--gpus-per-worker", type=float, default=0.0, help="0 trains on CPUs (gloo)")
    tv.add_argument("--cpus-per-worker", type=float, default=1.0)
    tv.add_argument("--threads", type=int, help="torch threads per CPU worker (default: its CPUs)")
    tv.add_argument("--batch-size", type=int, default=8, help="crops per worker per step")
    tv.add_argument("--crop-seconds", type=float, default=2.0)
    tv.add_argument("--lr", type=float, default=1e-3)
    tv.add_argument("--checkpoint-every", type=int, default=200)
    tv.add_argument("--log-every", type=int, default=10)
    tv.add_argument("--max-failures", type=int, default=3)
    tv.add_argument("--seed", type=int, default=0)
    tv.set_defaults(run=_train_vae)

    ve = sub.add_parser("evaluate-vae", help="reconstruct held-out clips: STFT/mel distance, key and tempo kept")
    ve.add_argument("--vae", required=True, help="a train-vae export (or a checkpoint) directory")
    ve.add_argument("--manifest", required=True, help="clips to reconstruct (e.g. heldout.jsonl)")
    ve.add_argument("--out", required=True, help="output directory or fsspec URI")
    ve.add_argument("--clips", type=int, help="only the first N clips")
    ve.add_argument("--figures", type=int, default=4, help="spectrogram pairs and reconstructions to keep")
    ve.add_argument("--address", help="Ray cluster address (default: start a local one)")
    ve.add_argument("--actors", type=int, default=2)
    ve.add_argument("--actor-cpus", type=float, default=0.5)
    ve.set_defaults(run=_evaluate_vae)

    ev = sub.add_parser("evaluate", help="metrics.json + HTML report: generated vs reference, prompts, videos")
    ev.add_argument("--generated", required=True, help="directory of generated audio, or a score manifest.parquet")
    ev.add_argument("--reference", required=True, help="directory of reference audio (paired by file stem)")
    ev.add_argument("--videos", help="directory of the videos (paired by stem), for beat-to-cut alignment")
    ev.add_argument("--prompts", help="prompts: .json {name: prompt} or .jsonl rows with id and prompt")
    ev.add_argument("--out", required=True, help="output directory or fsspec URI")
    ev.add_argument(
        "--embedder",
        action="append",
        metavar="NAME[=WEIGHTS]",
        help="audio embedder, repeatable: musicnn (default, offline), vggish=PATH, panns=PATH",
    )
    ev.add_argument("--clap", help="CLAP checkpoint directory (transformers layout) for the audio-text score")
    ev.add_argument("--imagebind", help="ImageBind checkpoint (imagebind_huge.pth) for the audio-video score")
    ev.add_argument("--address", help="Ray cluster address (default: start a local one)")
    ev.add_argument("--actors", type=int, default=2, help="evaluation actors")
    ev.add_argument("--actor-cpus", type=float, default=0.5, help="CPUs per actor")
    ev.set_defaults(run=_evaluate)

    srv = sub.add_parser("serve", help="the HTTP API on Ray Serve, until interrupted (GET /readyz when ready)")
    srv.add_argument("--config", help="serving YAML: a ServeConfig, or a Serve config whose app args are one")
    srv.add_argument("--checkpoint", help="model checkpoint (overrides the config's)")
    srv.add_argument("--mode", choices=["disaggregated", "fused"], help="override the config's mode")
    srv.add_argument("--preset", default="tiny", help="random weights of this preset when no checkpoint is given")
    srv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (random model)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--address", help="Ray cluster address (default: start a local one)")
    srv.set_defaults(run=_serve)

    info = sub.add_parser("info", help="parameter counts per component")
    info.add_argument("--preset", default="paper")
    info.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("videorobin", "model", "jobs"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        args = build_parser().parse_args(argv)
        summary = args.run(args)
    except (CLIError, *USER_ERRORS) as err:
        log.debug("command failed", exc_info=True)
        print(f"videorobin: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("videorobin: interrupted", file=sys.stderr)
        return 130
    status = summary.pop("exit_status", 0)
    for key, value in summary.items():
        if value is not None:
            print(f"{key}: {value}")
    return status


if __name__ == "__main__":
    sys.exit(main())
