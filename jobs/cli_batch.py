"""Commands that run over many clips with Ray Data: score, evaluate, evaluate-vae, quality."""

from __future__ import annotations

from jobs.cli_common import (
    CLIError,
    add_model_args,
    add_pool_args,
    add_sampler_args,
    example,
    job_flags,
    model_checkpoint,
    saved_model,
    say,
)
from jobs.cli_config import add_config_arg


def _score(args) -> dict:
    from jobs.catalogue import CatalogueError
    from jobs.score import ScoreConfig, run
    from model.io import uri_join

    checkpoint = saved_model(args, uri_join(args.out, "model"))  # random weights are saved once for every worker
    flags = job_flags(args, ScoreConfig) | {"checkpoint": checkpoint, "max_duration_s": args.max_duration}
    try:
        summary = run(ScoreConfig(**flags))
    except CatalogueError as err:
        raise CLIError(str(err)) from None
    say(
        args,
        f"score: {summary['ok']} ok, {summary['failed']} failed, {summary['skipped']} skipped; "
        f"{summary['generated']} generated in {summary['wall_s']} s ({summary['videos_per_s']} videos/s, "
        f"{summary['audio_s_per_wall_s']} audio-s per wall-s)",
    )
    return {**summary, "exit_status": 1 if summary["failed"] else 0}


def _evaluate(args) -> dict:
    from jobs.evaluate import EvaluateConfig, EvaluateError, run

    flags = job_flags(args, EvaluateConfig) | {"embedders": args.embedder or ["musicnn"]}
    try:
        summary = run(EvaluateConfig(**flags))
    except EvaluateError as err:
        raise CLIError(str(err)) from None
    say(args, f"evaluate: {summary['ok']} clips evaluated, {summary['failed']} failed; report {summary['report']}")
    return {**summary, "exit_status": 1 if summary["failed"] else 0}


def _evaluate_vae(args) -> dict:
    from jobs.train_vae import read_export
    from jobs.vae_report import VAEReportConfig, run

    flags = job_flags(args, VAEReportConfig) | {"vae": read_export(args.vae)}
    summary = run(VAEReportConfig(**flags))
    say(
        args,
        f"evaluate-vae: {summary['clips']} clips; key kept {summary.get('key_kept')}, tempo kept "
        f"{summary.get('tempo_kept')}; STFT distance {summary.get('stft_distance')}, mel {summary.get('mel_distance')}",
    )
    return {**summary, "exit_status": 1 if summary.get("failed") else 0}


def _quality(args) -> dict:
    from jobs.quality import QualityConfig, format_table, run

    flags = job_flags(args, QualityConfig) | {"checkpoint": model_checkpoint(args)}
    report = run(QualityConfig(**{k: v for k, v in flags.items() if v is not None}))
    say(args, format_table(report["conditions"]))
    return {"quality": f"{args.out}/quality.json"}


def add_parsers(sub) -> None:
    score = sub.add_parser(
        "score",
        help="soundtracks for a whole video catalogue (Ray Data, resumable)",
        epilog=example(
            "videorobin score --catalogue catalogue.parquet --out scored/ --generate-actors 2 --generate-gpus 1",
            "videorobin score --config score.yaml --out scored/   # the file's settings, --out from here",
        ),
    )
    score.add_argument("--catalogue", required=True, help="manifest (.parquet/.csv/.jsonl) or a glob (dir/*.mp4)")
    score.add_argument("--out", required=True, help="output directory or fsspec URI")
    score.add_argument("--default-prompt", help="prompt for rows without one (default: the static prompt)")
    score.add_argument("--format", default="wav", choices=["wav", "flac"], help="audio file format")
    score.add_argument("--mux", action="store_true", help="also write mp4/<id>.mp4 with the music muxed in")
    score.add_argument("--address", help="Ray cluster address (default: start a local one)")
    score.add_argument("--skip-failed", action="store_true", help="on a rerun, do not retry failed rows")
    score.add_argument("--dataset", help="the metrics' dataset label (default: the catalogue's file or folder name)")
    add_model_args(score, device=False, seed=False)  # each row has its seed; each actor pool its --*-gpus
    add_pool_args(score, (("generate", 8), ("decode", 4)))
    score.add_argument("--probe-cpus", type=float, default=0.25, help="CPUs per probe/write task")
    score.add_argument("--probe-tasks", type=int, default=4, help="concurrent probe/write tasks")
    score.add_argument("--rows-per-block", type=int, default=4, help="rows per block: the unit of resume")
    add_config_arg(score, keys={"max_duration_s": "max_duration"})
    score.set_defaults(run=_score)

    ev = sub.add_parser(
        "evaluate",
        help="metrics.json + HTML report: generated vs reference, prompts, videos",
        epilog=example("videorobin evaluate --generated scored/manifest.parquet --reference refs/ --out eval/"),
    )
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
    add_config_arg(ev, keys={"embedders": "embedder"})
    ev.set_defaults(run=_evaluate)

    ve = sub.add_parser(
        "evaluate-vae",
        help="reconstruct held-out clips: STFT/mel distance, key and tempo kept",
        epilog=example("videorobin evaluate-vae --vae vae-export/ --manifest data/heldout.jsonl --out vae-report/"),
    )
    ve.add_argument("--vae", required=True, help="a train-vae export (or a checkpoint) directory")
    ve.add_argument("--manifest", required=True, help="clips to reconstruct (e.g. heldout.jsonl)")
    ve.add_argument("--out", required=True, help="output directory or fsspec URI")
    ve.add_argument("--clips", type=int, help="only the first N clips")
    ve.add_argument("--figures", type=int, default=4, help="spectrogram pairs and reconstructions to keep")
    ve.add_argument("--address", help="Ray cluster address (default: start a local one)")
    ve.add_argument("--actors", type=int, default=2, help="reconstruction actors")
    ve.add_argument("--actor-cpus", type=float, default=0.5, help="CPUs per actor")
    add_config_arg(ve)
    ve.set_defaults(run=_evaluate_vae)

    q = sub.add_parser(
        "quality",
        help="held-out prompt/video following next to controls (score + evaluate)",
        epilog=example("videorobin quality --manifest data/heldout.jsonl --out quality/ --clips 16"),
    )
    q.add_argument("--manifest", required=True, help="held-out clips (make-dataset's heldout.jsonl)")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--checkpoint", help="the model (default: the shipped one)")
    q.add_argument("--clips", type=int, help="only the first N held-out clips")
    q.add_argument("--conditions", nargs="+", help="a subset of the conditions (default: all; see the README)")
    add_sampler_args(q)
    q.add_argument("--address", help="Ray cluster address (default: start a local one)")
    q.add_argument("--generate-batch", type=int, default=8, help="rows per generate batch")
    q.add_argument("--actors", type=int, default=2, help="evaluation actors")
    q.add_argument("--actor-cpus", type=float, default=0.5, help="CPUs per actor")
    q.add_argument("--seed", type=int, default=0, help="seeds the shuffled controls and every clip's sampling")
    add_config_arg(q)
    q.set_defaults(run=_quality, preset=None)
