"""`videorobin evaluate`: score generated soundtracks against references, videos and prompts (Ray Data).

    clips (generated, reference, video, prompt, paired by name) -> one actor pool that decodes both
      audios, embeds them with every configured embedder, checks tempo/key against the prompt, beats
      against the video's cuts, technical QC, CLAP text score, and draws the spectrogram figure
    -> the driver computes the set metrics (FD/FAD, KL, IS, Density/Coverage) and writes

    DIR/metrics.json       every number with the embedder or analyser that produced it, and per clip
    DIR/report.html        the same as tables, with the figures
    DIR/spectrograms/      one PNG per clip: generated above reference

A clip whose files cannot be read becomes a `failed` row with a one-line error; the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict, Field

from jobs.catalogue import read_manifests
from jobs.evaluation.cuts import cut_alignment, detect_cuts
from jobs.evaluation.distribution import density_coverage, frechet_distance_between, inception_score, kl_divergence
from jobs.evaluation.embedders import check_weights, load_audio_embedder, parse_embedder
from jobs.evaluation.music import (
    beat_times,
    compile_beat_tracker,
    estimate_key,
    key_score,
    parse_key,
    parse_tempo,
    tempo_score,
)
from jobs.evaluation.qc import technical_qc
from jobs.evaluation.report import render_html, spectrogram_png
from jobs.progress import track
from jobs.ray_session import connect
from jobs.score_tasks import error_text
from model.errors import InputError
from model.io import glob_uris, read_bytes, uri_exists, uri_join, write_bytes_atomic
from model.media import read_audio

log = logging.getLogger(__name__)

RATE = 48000  # every clip is decoded to 48 kHz stereo, then each analyser resamples to its own rate
AUDIO_SUFFIXES = ("wav", "flac", "mp3", "ogg", "m4a", "mp4")
VIDEO_SUFFIXES = ("mp4", "mov", "mkv", "webm", "avi")
NEAREST_K = 5  # Density/Coverage neighbourhood, as in Naeem et al.
TOP_TAGS = 3


class EvaluateError(InputError):
    """Inputs that cannot be evaluated, with a one-line reason."""


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generated: str
    reference: str
    out: str
    videos: str | None = None
    prompts: str | None = None
    embedders: list[str] = Field(default_factory=lambda: ["musicnn"])
    clap: str | None = None
    imagebind: str | None = None
    address: str | None = None
    actors: int = Field(default=2, ge=1)
    actor_cpus: float = Field(default=0.5, gt=0)


def _stem(uri: str) -> str:
    return posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]


def _by_stem(directory: str, suffixes: tuple[str, ...], what: str) -> dict[str, str]:
    if not uri_exists(directory):
        raise EvaluateError(f"{what} {directory}: no such directory")
    files = {_stem(u): u for s in suffixes for u in glob_uris(uri_join(directory, f"*.{s}"))}
    if not files:
        raise EvaluateError(f"{what} {directory}: no {'/'.join(suffixes)} files")
    return files


def read_prompts(uri: str) -> dict[str, str]:
    """A .json object {name: prompt} or .jsonl rows with `id` (or `name`) and `prompt`."""
    try:
        text = read_bytes(uri).decode()
        if uri.endswith(".json"):
            return {str(k): str(v) for k, v in json.loads(text).items()}
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return {str(r.get("id", r.get("name"))): str(r["prompt"]) for r in rows if r.get("prompt")}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError) as err:
        raise EvaluateError(f"prompts {uri}: {' '.join(str(err).split()) or type(err).__name__}") from None


def collect_clips(cfg: EvaluateConfig) -> list[dict]:
    """One row per name: its generated and reference audio, video and prompt ("" where absent)."""
    rows: dict[str, dict] = {}
    if cfg.generated.endswith(".parquet"):  # a `videorobin score` manifest
        if not uri_exists(cfg.generated):
            raise EvaluateError(f"generated {cfg.generated}: no such manifest")
        for r in read_manifests([cfg.generated]).values():
            rows[r["id"]] = {
                "generated": r["audio"] or "",
                "video": r["video"] or "",
                "prompt": r["prompt"] or "",
                "status": r["status"],
                "error": r["error"] or "",
            }
    else:
        for name, uri in _by_stem(cfg.generated, AUDIO_SUFFIXES, "generated").items():
            rows[name] = {"generated": uri, "video": "", "prompt": "", "status": "ok", "error": ""}
    if not rows:
        raise EvaluateError(f"generated {cfg.generated}: no clips")
    videos = _by_stem(cfg.videos, VIDEO_SUFFIXES, "videos") if cfg.videos else {}
    prompts = read_prompts(cfg.prompts) if cfg.prompts else {}
    references = _by_stem(cfg.reference, AUDIO_SUFFIXES, "reference")
    for name, row in rows.items():
        row["video"] = videos.get(name, row["video"])
        row["prompt"] = prompts.get(name, row["prompt"])
        row["reference"] = references.get(name, "")
    for name in references.keys() - rows.keys():  # unpaired references still shape the reference set
        rows[name] = {
            "generated": "",
            "video": "",
            "prompt": "",
            "status": "ok",
            "error": "",
            "reference": references[name],
        }
    return [{"name": name, **row} for name, row in sorted(rows.items())]


def _file_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return safe if safe == name else f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


class ClipEvaluator:
    """A Ray Data actor: loads the embedders once, then evaluates one clip per call."""

    def __init__(self, embedders: list[str], clap: str | None, imagebind: str | None, out: str):
        compile_beat_tracker()
        self.embedders = [load_audio_embedder(*parse_embedder(spec)) for spec in embedders]
        self.clap = self.imagebind = None
        if clap:
            from jobs.evaluation.embedders.clap import ClapScorer

            self.clap = ClapScorer(clap)
        if imagebind:
            from jobs.evaluation.embedders.imagebind import ImageBindScorer

            self.imagebind = ImageBindScorer(imagebind)
        self.out = out

    def __call__(self, row: dict) -> dict:
        result = {k: row[k] for k in ("name", "status", "error", "prompt")}
        result["role"] = "clip" if row["generated"] else "reference"
        if row["status"] == "ok":
            try:
                result.update(self.evaluate(row))
            except Exception as err:  # noqa: BLE001 - a bad clip fails alone, the job goes on
                result["status"], result["error"] = "failed", error_text("evaluate", err)
        return {"result": json.dumps(result)}

    def evaluate(self, row: dict) -> dict:
        generated = read_audio(row["generated"], RATE) if row["generated"] else None
        reference = read_audio(row["reference"], RATE) if row["reference"] else None
        features = {}
        for embedder in self.embedders:
            features[embedder.name] = {
                role: {"embedding": f.embedding.tolist(), "probabilities": _list(f.probabilities)}
                for role, audio in (("generated", generated), ("reference", reference))
                if audio is not None
                for f in [embedder(audio, RATE)]
            }
        out = {"features": features}
        if generated is not None:
            out.update(self.analyse(row, generated, features))
            out["spectrogram"] = self.draw(row["name"], generated, reference)
        return out

    def analyse(self, row: dict, audio: np.ndarray, features: dict) -> dict:
        out: dict = {"duration_s": audio.shape[1] / RATE, **technical_qc(audio, RATE)}
        tempo, beats = beat_times(audio, RATE)
        key = estimate_key(audio, RATE)
        out.update(tempo_bpm=tempo, key_found=str(key))
        asked_tempo, asked_key = parse_tempo(row["prompt"]), parse_key(row["prompt"])
        if asked_tempo:
            out.update(tempo_asked=asked_tempo, tempo_match=tempo_score(tempo, asked_tempo)["octave_match"])
        if asked_key:
            out.update(key_asked=str(asked_key), key_score=key_score(key, asked_key))
        if row["video"]:
            cuts = detect_cuts(row["video"])
            out["cuts"] = len(cuts)
            if len(cuts):
                out["cut_f_measure"] = cut_alignment(cuts, beats)["f_measure"]
            if self.imagebind is not None:
                out["imagebind_cosine"] = float(self.imagebind.audio(audio, RATE) @ self.imagebind.video(row["video"]))
        if self.clap is not None and row["prompt"]:
            out["clap_cosine"] = float(self.clap.audio(audio, RATE) @ self.clap.text(row["prompt"]))
        tagger = next((e for e in self.embedders if getattr(e, "labels", None)), None)
        if tagger is not None:
            probabilities = np.asarray(features[tagger.name]["generated"]["probabilities"])
            out["top_tags"] = ", ".join(tagger.labels[i] for i in np.argsort(-probabilities)[:TOP_TAGS])
        return out

    def draw(self, name: str, generated: np.ndarray, reference: np.ndarray | None) -> str:
        panels = {"generated": (generated, RATE)}
        if reference is not None:
            panels["reference"] = (reference, RATE)
        relative = f"spectrograms/{_file_name(name)}.png"
        write_bytes_atomic(uri_join(self.out, relative), spectrogram_png(name, panels))
        return relative


def _list(x: np.ndarray | None) -> list | None:
    return None if x is None else x.tolist()


def _attempt(compute):
    """(value, None), or (None, why) for a metric that cannot be computed on this set."""
    try:
        return compute(), None
    except ValueError as err:
        return None, str(err)


def _record(name: str, embedder: str, clips: int, value, note: str | None = None) -> dict:
    return {"name": name, "value": value, "embedder": embedder, "clips": clips, "note": note}


def _mean(clips: list[dict], key: str):
    values = [float(c[key]) for c in clips if c.get(key) is not None]
    return (float(np.mean(values)) if values else None), len(values)


def embedding_metrics(done: list[dict], embedder: str) -> list[dict]:
    """FD (FAD on VGGish), Density/Coverage and, for classifiers, KL and IS of one embedder's features."""
    feats = [c["features"].get(embedder, {}) for c in done]
    gen = [f["generated"] for f in feats if "generated" in f]
    g = np.array([f["embedding"] for f in gen])
    r = np.array([f["reference"]["embedding"] for f in feats if "reference" in f])
    fd_name = "FAD" if embedder == "VGGish" else "FD"
    records = [_record(fd_name, embedder, len(g), *_attempt(lambda: frechet_distance_between(g, r)))]
    k = max(1, min(NEAREST_K, len(g) - 1, len(r) - 1))  # small sets: the largest k they allow
    dc, note = _attempt(lambda: density_coverage(r, g, k))
    for key in ("density", "coverage"):
        records.append(_record(key.title(), embedder, len(g), dc and dc[key], note or f"k={k}"))
    if gen and gen[0]["probabilities"] is not None:
        pairs = [f for f in feats if len(f) == 2]
        p_gen = np.array([f["generated"]["probabilities"] for f in pairs])
        p_ref = np.array([f["reference"]["probabilities"] for f in pairs])
        p_all = np.array([f["probabilities"] for f in gen])
        records.append(_record("KL", embedder, len(pairs), *_attempt(lambda: kl_divergence(p_gen, p_ref))))
        records.append(_record("IS", embedder, len(gen), *_attempt(lambda: inception_score(p_all))))
    return records


ANALYSES = (
    ("tempo match (octave-tolerant)", "tempo_match", "librosa beat tracker"),
    ("key score (MIREX)", "key_score", "essentia KeyExtractor"),
    ("beat-to-cut F-measure", "cut_f_measure", "histogram cuts + librosa beats (mir_eval, ±0.1 s)"),
    ("CLAP audio-text cosine", "clap_cosine", "CLAP"),
    ("ImageBind audio-video cosine", "imagebind_cosine", "ImageBind (huge)"),
    ("loudness LUFS (mean)", "loudness_lufs", "essentia EBU R128"),
    ("clipped fraction (mean)", "clipped_fraction", "sample peaks"),
    ("silent fraction (mean)", "silent_fraction", "RMS < -60 dBFS"),
)


def set_metrics(clips: list[dict], embedders: list[str]) -> list[dict]:
    """The set-level numbers, each named with the embedder or analyser behind it."""
    done = [c for c in clips if c["status"] == "ok"]
    records = [r for embedder in embedders for r in embedding_metrics(done, embedder)]
    generated = [c for c in done if c["role"] == "clip"]
    for name, key, analyser in ANALYSES:
        value, count = _mean(generated, key)
        if count:
            records.append(_record(name, analyser, count, value))
    return records


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate every clip, write metrics.json, the report and the figures; return the summary."""
    for spec in cfg.embedders:  # names and weights checked here, before any Ray actor loads them
        try:
            check_weights(*parse_embedder(spec))
        except ValueError as err:
            raise EvaluateError(str(err)) from None
    for scorer, uri in (("clap", cfg.clap), ("imagebind", cfg.imagebind)):
        if uri is not None and not uri_exists(uri):
            raise EvaluateError(f"--{scorer}: no weights at {uri}")
    rows = collect_clips(cfg)
    connect(cfg.address)
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
        ClipEvaluator,
        fn_constructor_kwargs={
            "embedders": cfg.embedders,
            "clap": cfg.clap,
            "imagebind": cfg.imagebind,
            "out": cfg.out,
        },
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.actor_cpus,
    )
    results = track(ds.iter_rows(), "evaluate", len(rows))  # the progress line
    clips = sorted((json.loads(r["result"]) for r in results), key=lambda c: c["name"])
    names = sorted({e for c in clips for e in c.get("features", {})})
    metrics = {
        "generated": cfg.generated,
        "reference": cfg.reference,
        "videos": cfg.videos,
        "prompts": cfg.prompts,
        "counts": {
            "ok": sum(c["status"] == "ok" and c["role"] == "clip" for c in clips),
            "failed": sum(c["status"] == "failed" for c in clips),
            "references": sum(1 for r in rows if r["reference"]),
        },
        "embedders": names,
        "metrics": set_metrics(clips, names),
        "clips": [
            {k: v for k, v in c.items() if k != "features"} for c in clips if c["role"] == "clip" or c["status"] != "ok"
        ],
    }
    write_bytes_atomic(uri_join(cfg.out, "metrics.json"), json.dumps(metrics, indent=2).encode())
    write_bytes_atomic(uri_join(cfg.out, "report.html"), render_html(metrics).encode())
    return {
        **metrics["counts"],
        "metrics": uri_join(cfg.out, "metrics.json"),
        "report": uri_join(cfg.out, "report.html"),
    }
