"""`videorobin quality`: does a trained model follow the prompt and the video? Held-out clips, next to controls.

Every condition generates a soundtrack for every held-out clip with `videorobin score` (same seeds), and
`videorobin evaluate` measures all of them against the same truth: the clip's own caption (tempo, key),
its real video's cuts, and the held-out reference renders (musicnn FD, tags).

    references      the held-out renders themselves: the ceiling
    prompted        the model, its caption and its video
    shuffled        the model, its video, another clip's caption (a derangement): prompt-following control
    random          the same architecture with random weights (trained VAE and latent statistics kept)
    video_only      the model, its video, the static video-only prompt
    still_video     the model, the static prompt, a still of the video's first frame: video-following control
    text_only       the model, its caption, no video (the stage-1 use; also how tokenizers are compared)
    text_shuffled   the model, another clip's caption, no video: the control of text_only

    DIR/<condition>/score/   the score job's audio and manifest
    DIR/<condition>/eval/    metrics.json and report.html
    DIR/quality.json         the table: per condition, tempo accuracy (octave-tolerant, 4 %), key score,
                             beat-to-cut F-measure, musicnn FD to the references, family-tag hit rate
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from fractions import Fraction

import av
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from jobs.catalogue import read_table
from jobs.evaluation.music import parse_tempo, tempo_score
from jobs.ray_session import connect
from model.config import STATIC_PROMPT, Solver
from model.errors import InputError
from model.io import read_bytes, temp_sibling, uri_exists, uri_join, write_bytes_atomic

log = logging.getLogger(__name__)

CONDITIONS = (
    "references", "prompted", "shuffled", "random", "video_only", "still_video", "text_only", "text_shuffled"
)  # fmt: skip
TEXT_CONDITIONS = ("text_only", "text_shuffled")  # no video: generated in process, not through `score`
TEMPO_TOLERANCE = 0.04


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    manifest: str  # the held-out rows of make-dataset (heldout.jsonl)
    out: str
    clips: int | None = Field(default=None, ge=2)  # the first N held-out clips (default: all)
    conditions: list[str] = list(CONDITIONS)
    steps: int | None = Field(default=None, ge=1)  # LocDiT solver steps per patch (default: the model's)
    guidance: float | None = Field(default=None, ge=0)
    solver: Solver | None = None  # default: the model's
    address: str | None = None
    generate_batch: int = Field(default=8, ge=1)
    actors: int = Field(default=2, ge=1)
    actor_cpus: float = Field(default=0.5, gt=0)
    seed: int = 0


def held_out_rows(manifest: str, clips: int | None) -> list[dict]:
    rows = read_table(manifest)
    missing = {"id", "audio", "video", "caption"} - set(rows[0])
    if missing:
        raise InputError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}")
    return rows[:clips]


def derangement(n: int, seed: int) -> list[int]:
    """A permutation with no fixed point: clip i gets the caption of clip perm[i] != i."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    perm = np.empty(n, int)
    perm[order] = np.roll(order, 1)  # a single cycle through a random order
    return perm.tolist()


def write_still_video(source: str, out: str, duration_s: float, fps: int = 25) -> None:
    """An H.264 video of `source`'s first frame held for `duration_s`: the same picture, no visual rhythm."""
    with av.open(source) as src:
        first = next(src.decode(video=0)).to_ndarray(format="rgb24")
    tmp = temp_sibling(out, ".mp4")
    try:
        with av.open(tmp, "w") as dst:
            stream = dst.add_stream("libx264", rate=fps)
            stream.height, stream.width = first.shape[:2]
            stream.pix_fmt = "yuv420p"
            stream.time_base = Fraction(1, fps)
            for i in range(max(1, round(duration_s * fps))):
                frame = av.VideoFrame.from_ndarray(first, format="rgb24")
                frame.pts = i
                for packet in stream.encode(frame):
                    dst.mux(packet)
            for packet in stream.encode(None):
                dst.mux(packet)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def clip_seed(clip_id: str, seed: int) -> int:
    return zlib.crc32(f"{seed}:{clip_id}".encode())


def catalogue(condition: str, rows: list[dict], out: str, seed: int) -> list[dict]:
    """The score catalogue of one condition."""
    perm = derangement(len(rows), seed)
    entries = []
    for i, row in enumerate(rows):
        video, prompt = row["video"], row["caption"]
        if condition in ("shuffled", "text_shuffled"):
            prompt = rows[perm[i]]["caption"]
        elif condition in ("video_only", "still_video"):
            prompt = STATIC_PROMPT
        if condition == "still_video":
            video = os.path.join(out, "still", f"{row['id']}.mp4")
            if not os.path.exists(video):
                os.makedirs(os.path.dirname(video), exist_ok=True)
                write_still_video(row["video"], video, float(row["duration"]))
        entries.append(
            {
                "id": row["id"],
                "video": video,
                "prompt": prompt,
                "seed": clip_seed(row["id"], seed),
                "duration": row["duration"],
            }
        )
    return entries


def generate_from_prompts(checkpoint: str, entries: list[dict], out: str, cfg: QualityConfig) -> str:
    """Prompt-only soundtracks (no video) with the engine in this process: `out/<id>.wav`; existing ones kept."""
    from model.checkpoint import load_bundle
    from model.engine import Engine, GenerationParams
    from model.media import write_audio

    todo = [e for e in entries if not uri_exists(uri_join(out, f"{e['id']}.wav"))]
    engine = Engine(load_bundle(checkpoint), max_batch=cfg.generate_batch)
    for first in range(0, len(todo), cfg.generate_batch):
        chunk = todo[first : first + cfg.generate_batch]
        requests = [
            engine.make_request(
                prompt=e["prompt"],
                params=GenerationParams(e["seed"], float(e["duration"]), cfg.steps, cfg.guidance, cfg.solver),
                request_id=e["id"],
            )
            for e in chunk
        ]
        for result in engine.generate(requests):
            write_audio(uri_join(out, f"{result.request_id}.wav"), result.audio, result.sample_rate)
    return out


def random_checkpoint(trained: str, out: str) -> str:
    """The trained model's architecture with fresh random weights, keeping its VAE, CLIP tower, tokenizer and
    latent statistics: the control isolates what the generator learned."""
    import torch

    from model.build import Bundle
    from model.checkpoint import load_bundle, save_bundle
    from model.videorobin import VideoRobin

    path = uri_join(out, "random_model")
    if uri_exists(uri_join(path, "config.json")):
        return path
    bundle = load_bundle(trained)
    torch.manual_seed(0)
    model = VideoRobin(bundle.config)
    if model.clip is not None:
        model.clip.load_state_dict(bundle.model.clip.state_dict())
    model.latent_mean.copy_(bundle.model.latent_mean)
    model.latent_std.copy_(bundle.model.latent_std)
    save_bundle(Bundle(bundle.config, model, bundle.vae, bundle.tokenizer), path)
    return path


def reference_dir(rows: list[dict], out: str) -> str:
    """A directory holding only the held-out references (evaluate pairs references by file stem)."""
    directory = os.path.join(out, "references")
    os.makedirs(directory, exist_ok=True)
    for row in rows:
        link = os.path.join(directory, os.path.basename(row["audio"]))
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(row["audio"]), link)
    return directory


def tag_hits(clips: list[dict], families: dict[str, str]) -> float | None:
    """Fraction of clips whose top musicnn tags name their prompted instrument family."""
    scored = [c for c in clips if c.get("top_tags") and families.get(c["name"])]
    if not scored:
        return None
    return float(np.mean([families[c["name"]] in c["top_tags"].split(", ") for c in scored]))


def tag_chance(clips: list[dict], families: dict[str, str]) -> float | None:
    """The same hit rate if each clip's tags were checked against every other clip's family: chance level."""
    scored = [c for c in clips if c.get("top_tags")]
    names = [n for n in families if families[n]]
    if not scored or len(names) < 2:
        return None
    hits = [families[n] in c["top_tags"].split(", ") for c in scored for n in names if n != c["name"]]
    return float(np.mean(hits))


def summarise(metrics: dict, captions: dict[str, str], families: dict[str, str]) -> dict:
    """One condition's row of the table, from its metrics.json."""
    clips = [c for c in metrics["clips"] if c["status"] == "ok"]
    tempo = [
        tempo_score(c["tempo_bpm"], parse_tempo(captions[c["name"]]), TEMPO_TOLERANCE)["octave_match"]
        for c in clips
        if c.get("tempo_bpm") and parse_tempo(captions.get(c["name"], "") or "")
    ]
    value = {m["name"]: m["value"] for m in metrics["metrics"] if m["embedder"] == "musicnn-MTT"}
    mean = lambda key: float(np.mean([c[key] for c in clips if c.get(key) is not None])) if clips else None  # noqa: E731
    return {
        "clips": len(clips),
        "tempo_accuracy": float(np.mean(tempo)) if tempo else None,
        "key_score": mean("key_score"),
        "beat_cut_f": mean("cut_f_measure"),
        "fd_musicnn": value.get("FD"),
        "family_tag_hits": tag_hits(clips, families),
        "family_tag_chance": tag_chance(clips, families),
    }


COLUMNS = (
    ("tempo_accuracy", "tempo acc."),
    ("key_score", "key score"),
    ("beat_cut_f", "beat-cut F"),
    ("fd_musicnn", "FD musicnn"),
    ("family_tag_hits", "family tags"),
    ("family_tag_chance", "tag chance"),
)


def format_table(conditions: dict[str, dict]) -> str:
    """The quality table as Markdown, one row per condition."""
    lines = ["| condition | clips | " + " | ".join(label for _, label in COLUMNS) + " |"]
    lines.append("|" + " --- |" * (len(COLUMNS) + 2))
    for name, row in conditions.items():
        cells = ["" if row.get(k) is None else f"{row[k]:.3f}" for k, _ in COLUMNS]
        lines.append(f"| {name} | {row['clips']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg: QualityConfig) -> dict:
    from jobs.evaluate import EvaluateConfig
    from jobs.evaluate import run as evaluate
    from jobs.score import ScoreConfig
    from jobs.score import run as score

    rows = held_out_rows(cfg.manifest, cfg.clips)
    os.makedirs(cfg.out, exist_ok=True)
    captions = {r["id"]: r["caption"] for r in rows}
    families = {r["id"]: r.get("family") or "" for r in rows}
    prompts = os.path.join(cfg.out, "prompts.jsonl")
    write_bytes_atomic(
        prompts, "".join(json.dumps({"id": k, "prompt": v}) + "\n" for k, v in captions.items()).encode()
    )
    references = reference_dir(rows, cfg.out)
    videos = os.path.dirname(os.path.abspath(rows[0]["video"]))
    connect(cfg.address)
    table = {}
    for condition in cfg.conditions:
        if condition not in CONDITIONS:
            raise InputError(f"unknown condition {condition!r} (known: {', '.join(CONDITIONS)})")
        where = uri_join(cfg.out, condition)
        metrics_uri = uri_join(where, "eval/metrics.json")
        if not uri_exists(metrics_uri):  # a rerun picks up where a stopped one ended
            generated = references
            if condition in TEXT_CONDITIONS:
                entries = catalogue(condition, rows, cfg.out, cfg.seed)
                generated = generate_from_prompts(cfg.checkpoint, entries, uri_join(where, "audio"), cfg)
            elif condition != "references":
                checkpoint = random_checkpoint(cfg.checkpoint, cfg.out) if condition == "random" else cfg.checkpoint
                entries = catalogue(condition, rows, cfg.out, cfg.seed)
                catalogue_uri = uri_join(where, "catalogue.jsonl")
                write_bytes_atomic(catalogue_uri, "".join(json.dumps(e) + "\n" for e in entries).encode())
                score(
                    ScoreConfig(
                        catalogue=catalogue_uri,
                        out=uri_join(where, "score"),
                        checkpoint=checkpoint,
                        steps=cfg.steps,
                        guidance=cfg.guidance,
                        solver=cfg.solver,
                        generate_batch=cfg.generate_batch,
                        actor_cpus=cfg.actor_cpus,
                    )
                )
                generated = uri_join(where, "score/manifest.parquet")
            evaluate(
                EvaluateConfig(
                    generated=generated,
                    reference=references,
                    videos=videos,
                    prompts=prompts,
                    out=uri_join(where, "eval"),
                    actors=cfg.actors,
                    actor_cpus=cfg.actor_cpus,
                )
            )
        table[condition] = summarise(json.loads(read_bytes(metrics_uri)), captions, families)
        log.info("[videorobin quality] %s: %s", condition, table[condition])
    report = {"checkpoint": cfg.checkpoint, "manifest": cfg.manifest, "clips": len(rows), "conditions": table}
    write_bytes_atomic(uri_join(cfg.out, "quality.json"), json.dumps(report, indent=2).encode())
    return report
