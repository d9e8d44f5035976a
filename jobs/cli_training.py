"""Commands that make a model: make-dataset, train-tokenizer, train-vae, prepare, train, pipeline."""

from __future__ import annotations

from jobs.cli_common import (
    CLIError,
    add_pool_args,
    add_run_args,
    example,
    job_flags,
    say,
    training_failed,
)
from jobs.cli_config import add_config_arg
from model.config import SOLVERS


def _make_dataset(args) -> dict:
    from jobs.dataset import DatasetConfig, RenderError, run

    try:
        return run(DatasetConfig(**job_flags(args, DatasetConfig)))
    except RenderError as err:
        raise CLIError(str(err)) from None


def _train_tokenizer(args) -> dict:
    from jobs.tokenizer import run

    return run(args.manifest, args.out, args.vocab_size)


def _prepare(args) -> dict:
    from jobs.catalogue import CatalogueError
    from jobs.prepare import PrepareConfig, run
    from model.checkpoint import read_config
    from model.config import load_config, with_vae

    if args.checkpoint and args.vae:
        raise CLIError("--vae and --checkpoint both name a VAE: give one")
    if args.checkpoint and ("preset" in getattr(args, "given", ()) or args.set):  # a checkpoint has its config
        raise CLIError("--preset and --set choose the model config; --checkpoint brings its own: give one")
    model = read_config(args.checkpoint) if args.checkpoint else load_config(args.preset, args.set)
    if args.vae:
        from jobs.train_vae import read_export

        model = with_vae(model, read_export(args.vae))
    try:
        summary = run(PrepareConfig(**job_flags(args, PrepareConfig), model=model))
    except CatalogueError as err:
        raise CLIError(str(err)) from None
    return {**summary, "exit_status": 1 if summary["failed"] else 0}


def _train(args) -> dict:
    from jobs.train import TrainConfig, run
    from jobs.train_runs import TrainingFailed

    try:
        summary = run(TrainConfig(**job_flags(args, TrainConfig)))
    except TrainingFailed as err:
        return training_failed(err)
    say(
        args,
        f"train {summary['stage']}: {summary['steps']} steps, loss {summary['first_loss']} -> "
        f"{summary['final_loss']}, {summary['samples_per_s']} samples/s; checkpoint {summary['checkpoint']}",
    )
    return summary


def _train_vae(args) -> dict:
    from jobs.train_runs import TrainingFailed
    from jobs.train_vae import TrainVAEConfig, run
    from model.config import SpectralVAEConfig, load_config

    vae = load_config(args.preset, args.set).vae
    if not isinstance(vae, SpectralVAEConfig):
        raise CLIError(f"--preset {args.preset}: its VAE is {vae.family!r}; train-vae trains the spectral family")
    flags = job_flags(args, TrainVAEConfig) | {"vae": vae.model_copy(update={"checkpoint": None})}
    try:
        summary = run(TrainVAEConfig(**flags))
    except TrainingFailed as err:
        return training_failed(err)
    say(
        args,
        f"train-vae: {summary['steps']} steps, loss {summary['first_loss']} -> {summary['final_loss']}, "
        f"{summary['audio_s_per_s']} audio-s/s; checkpoint {summary['checkpoint']}",
    )
    return summary


def _pipeline(args) -> dict:
    from jobs.pipeline import PipelineError, load_recipe, run
    from jobs.train_runs import TrainingFailed

    try:
        recipe = load_recipe(args.recipe, args.set)
        return run(recipe, args.out, args.address, args.only, args.publish)
    except PipelineError as err:
        raise CLIError(str(err)) from None
    except TrainingFailed as err:
        return training_failed(err)


def add_parsers(sub) -> None:
    data = sub.add_parser(
        "make-dataset",
        help="a training corpus: music21 scores arranged, rendered with a GM soundfont (Ray tasks)",
        epilog=example("videorobin make-dataset --out data/ --clips 200 --duration 10"),
    )
    data.add_argument("--out", required=True, help="output directory (a rerun with the same settings resumes)")
    data.add_argument("--clips", type=int, required=True, help="clips to render (train and held out)")
    data.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    data.add_argument("--seed", type=int, default=0, help="chooses the pieces, the split and every clip")
    data.add_argument("--heldout-fraction", type=float, default=0.1, help="share of pieces held out")
    data.add_argument("--soundfont", help="a General MIDI .sf2 (default: the system's GM soundfont)")
    data.add_argument("--address", help="Ray cluster address (default: start a local one)")
    data.add_argument("--render-cpus", type=float, default=1.0, help="CPUs per render task (one piece each)")
    data.add_argument("--task-timeout", type=float, default=300.0, help="seconds before a piece's task is dropped")
    add_config_arg(data)
    data.set_defaults(run=_make_dataset)

    tok = sub.add_parser(
        "train-tokenizer",
        help="a BPE prompt tokenizer learned from a manifest's captions",
        epilog=example("videorobin train-tokenizer --manifest data/train.jsonl --out tokenizer/ --vocab-size 512"),
    )
    tok.add_argument("--manifest", required=True, help="a make-dataset manifest (train.jsonl)")
    tok.add_argument("--out", required=True, help="output directory (the transformers tokenizer layout)")
    tok.add_argument("--vocab-size", type=int, default=512, help="at most the SemanticLM's vocab_size")
    add_config_arg(tok)
    tok.set_defaults(run=_train_tokenizer)

    tv = sub.add_parser(
        "train-vae",
        help="train the compact spectral VAE (Ray Train, CPU or GPU, resumable)",
        epilog=example("videorobin train-vae --manifest data/train.jsonl --storage runs/ --steps 2000 --export vae/"),
    )
    tv.add_argument(
        "--manifest", required=True, help="a make-dataset manifest (train.jsonl): id, audio[, start, duration]"
    )
    tv.add_argument("--export", help="write vae.json + vae.safetensors here (what `prepare --vae` takes)")
    tv.add_argument("--preset", default="small", help="preset or config file whose `vae` section is trained")
    tv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. vae.width=192")
    add_run_args(tv, "videorobin-vae")
    tv.add_argument("--crop-seconds", type=float, default=2.0, help="seconds of audio per training crop")
    tv.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    add_config_arg(tv, extras=("losses", "warmup", "weight_decay", "grad_clip", "keep_checkpoints"))
    tv.set_defaults(run=_train_vae, batch_size=8, checkpoint_every=200)

    prep = sub.add_parser(
        "prepare",
        help="training manifest -> Parquet shards of latents, CLIP features, tokens",
        epilog=example("videorobin prepare --manifest data/train.jsonl --out prepared/ --vae vae/"),
    )
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
    prep.add_argument("--rows-per-shard", type=int, default=256, help="rows per Parquet shard")
    prep.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (swapped in once the new run is complete)"
    )
    add_pool_args(prep, (("encode", 8),))
    add_config_arg(prep, extras=("read_cpus", "read_tasks"))
    prep.set_defaults(run=_prepare)

    train = sub.add_parser(
        "train",
        help="Ray Train + DeepSpeed over prepared shards (stage t2m, v2m or distill)",
        epilog=example(
            "videorobin train --stage t2m --data prepared/ --storage runs/ --steps 1000 --export t2m/",
            "videorobin train --stage distill --init-from t2m/ --data prepared/ --storage runs/ --steps 200 "
            "--export fast/",
        ),
    )
    train.add_argument(
        "--stage",
        required=True,
        choices=["t2m", "v2m", "distill"],
        help="t2m: text only; v2m: adds video; distill: a few-step LocDiT for --init-from's model",
    )
    train.add_argument("--data", required=True, help="a `videorobin prepare` output directory or URI")
    train.add_argument("--export", help="write the trained model here in the checkpoint format")
    train.add_argument("--init-from", help="start from this checkpoint (v2m: the stage-1 export; distill: the teacher)")
    add_run_args(train, None)
    train.add_argument("--deepspeed", help="DeepSpeed JSON (default: ZeRO-2, jobs/deepspeed/zero2.json)")
    train.add_argument("--zero-stage", type=int, choices=[1, 2, 3], help="override the JSON's ZeRO stage")
    train.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (cosine, 10%% warm-up)")
    train.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of --steps")
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    train.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip")
    train.add_argument("--clip-seconds", type=float, default=10.0, help="training crop length")
    train.add_argument("--input-mask", type=float, default=0.0, help="p of masking each text token / frame")
    train.add_argument("--video-dropout", type=float, default=0.0, help="v2m: p of a clip trained without video")
    train.add_argument("--shuffle-buffer", type=int, default=64, help="rows in each worker's shuffle buffer")
    train.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept in the run directory")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    distill = train.add_argument_group("stage distill")
    distill.add_argument("--student-steps", type=int, default=4, help="Euler steps the student learns to take")
    distill.add_argument("--teacher-steps", type=int, default=8, help="the teacher's steps per patch")
    distill.add_argument("--teacher-solver", choices=SOLVERS, default="midpoint", help="the teacher's solver")
    distill.add_argument("--distill-patches", type=int, default=64, help="patches per worker per micro-step")
    distill.add_argument(
        "--distill-guidance",
        type=float,
        nargs=2,
        default=(1.0, 4.0),
        metavar=("LOW", "HIGH"),
        help="each patch's guidance weight is drawn from this range",
    )
    add_config_arg(train, extras=("read_cpus",))
    train.set_defaults(run=_train)

    pipe = sub.add_parser(
        "pipeline",
        help="the whole recipe: data -> VAE -> t2m -> v2m -> quality -> publish",
        epilog=example("videorobin pipeline --recipe default --out pipeline/ --set t2m.steps=200"),
    )
    pipe.add_argument(
        "--recipe", "--config", default="default", help="a recipe name (jobs/recipes/) or YAML file: the config"
    )
    pipe.add_argument("--out", required=True, help="where every step writes (a rerun skips finished steps)")
    pipe.add_argument("--set", action="append", default=[], metavar="STEP.KEY=VALUE", help="recipe override")
    pipe.add_argument("--only", nargs="+", help="run only these steps (their inputs must exist)")
    pipe.add_argument("--publish", help="copy the result (fp16) with its provenance here, e.g. model/default")
    pipe.add_argument("--address", help="Ray cluster address (default: start a local one)")
    pipe.set_defaults(run=_pipeline)
