"""`videorobin make-dataset`: a real, offline training corpus of music clips with known attributes.

Excerpts of music21-corpus pieces (`jobs.corpus`), each transposed, given a tempo, instruments and maybe
drums (`jobs.arrange`), are rendered to 48 kHz stereo by fluidsynth with a General MIDI soundfont and
normalised to one loudness. Each clip gets a synthetic video whose background cuts on every bar line and
whose square jumps on every beat, and a caption stating its key, tempo, instruments and mood
(`jobs.captions`). The manifest keeps the attributes as ground truth.

Pieces are rendered by Ray tasks, one per piece so it is parsed once, CLIPS_PER_PIECE clips each. A piece
that does not parse, gives no usable excerpt or runs past the task timeout is skipped and its clips go to the
next unused piece, so `--clips N` gives N clips while the corpus lasts. Each piece is in one split, train or
heldout. Every file is written under a temporary name and moved into place, a clip's row last; a rerun with
the same settings renders only clips without a row, then writes the manifests again from the rows.

    DIR/audio/<id>.flac  DIR/video/<id>.mp4  DIR/midi/<id>.mid  DIR/rows/<id>.json
    DIR/manifest.jsonl  DIR/train.jsonl  DIR/heldout.jsonl  DIR/prompts-heldout.jsonl
    DIR/dataset.json (the settings)  DIR/skipped.jsonl (pieces skipped, with the reason)
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict, Field

from jobs.arrange import Arrangement, ExcerptError, arrange, draws, excerpt, measures_of, midi_bytes
from jobs.captions import Facts, caption
from jobs.corpus import Piece, PieceError, ordered, parse, split_of
from jobs.ray_session import connect
from model.errors import InputError
from model.io import write_bytes_atomic
from model.media import write_audio, write_beat_video

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
BACKSTOP_S = 120.0  # the driver cancels a task this long past its timeout (an alarm cannot reach C code)
SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
)
CLIPS_PER_PIECE = 4  # excerpts from different bars; 2,000 clips use 500 pieces
TARGET_RMS = 10 ** (-20 / 20)  # -20 dBFS
MAX_PEAK = 0.95
VIDEO_FPS, VIDEO_SIZE = 25, 64
SUBDIRS = ("audio", "video", "midi", "rows")
SETTINGS = ("seed", "duration", "heldout_fraction")  # what a clip depends on besides its id and piece


class RenderError(RuntimeError):
    """fluidsynth is missing, failed, or produced no sound."""


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: str
    clips: int = Field(ge=1)
    duration: float = Field(default=10.0, gt=0, le=120)
    seed: int = 0
    heldout_fraction: float = Field(default=0.1, ge=0, lt=1)
    soundfont: str | None = None
    address: str | None = None
    render_cpus: float = Field(default=1.0, gt=0)
    task_timeout: float = Field(default=300.0, gt=0)


@dataclass(frozen=True)
class PieceJob:
    piece: Piece
    clip_ids: tuple[str, ...]
    split: str


def find_soundfont(path: str | None = None) -> str:
    for candidate in [path] if path else SOUNDFONTS:
        if os.path.isfile(candidate):
            return candidate
    raise RenderError(f"no GM soundfont found ({path or ', '.join(SOUNDFONTS)}): apt-get install timgm6mb-soundfont")


def _fluidsynth() -> str:
    binary = shutil.which("fluidsynth")
    if binary is None:
        raise RenderError("fluidsynth not found: apt-get install fluidsynth")
    return binary


def render_midi(midi_path: str, soundfont: str, seconds: float, timeout_s: float = 60.0) -> np.ndarray:
    """Render at most `seconds` of a MIDI file: (2, S) float32 at 48 kHz. Bounded in bytes and time: fluidsynth
    has been seen writing without end on some MIDI files."""
    wanted = int(round(seconds * SAMPLE_RATE)) * 2 * 2  # stereo, 16-bit
    cmd = [_fluidsynth(), "-ni", "-q", "-g", "0.6", "-r", str(SAMPLE_RATE), "-T", "raw", "-O", "s16", "-F", "-"]
    with subprocess.Popen([*cmd, soundfont, midi_path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        chunks, got = [], 0
        try:
            while got < wanted:
                chunk = proc.stdout.read(min(1 << 16, wanted - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        finally:
            proc.kill()  # stop it whatever it meant to write next
        proc.wait(timeout=timeout_s)
    pcm = np.frombuffer(b"".join(chunks), dtype="<i2")[: wanted // 2]
    audio = (pcm.reshape(-1, 2).T.astype(np.float32) / 32768.0) if pcm.size else np.zeros((2, 0), np.float32)
    if audio.shape[1] < wanted // 4:
        audio = np.pad(audio, ((0, 0), (0, wanted // 4 - audio.shape[1])))  # the piece ended: silence after
    if float(np.abs(audio).max()) < 1e-4:
        raise RenderError(f"{midi_path}: the render is silent")
    return audio


def normalise(audio: np.ndarray) -> np.ndarray:
    """Scale to TARGET_RMS, or less if that would take the peak above MAX_PEAK: one loudness for all clips."""
    rms, peak = float(np.sqrt(np.mean(audio**2))), float(np.abs(audio).max())
    return audio * min(TARGET_RMS / rms, MAX_PEAK / peak)


def spell_key(key) -> str:
    """A music21 Key as a caption spells it: "A-flat major", "F-sharp minor"."""
    return f"{key.tonic.name.replace('-', '-flat ').replace('#', '-sharp ').strip()} {key.mode}"


def _paths(out: str, clip_id: str) -> dict[str, str]:
    return {
        "audio": os.path.join(out, "audio", f"{clip_id}.flac"),
        "video": os.path.join(out, "video", f"{clip_id}.mp4"),
        "midi": os.path.join(out, "midi", f"{clip_id}.mid"),
        "row": os.path.join(out, "rows", f"{clip_id}.json"),
    }


def _row_if_done(out: str, clip_id: str, piece: Piece) -> dict | None:
    """The clip's row if the clip is finished for this piece (an earlier round may have given its id to a
    piece that was skipped later)."""
    paths = _paths(out, clip_id)
    if not all(os.path.exists(p) for p in paths.values()):
        return None
    with open(paths["row"]) as f:
        row = json.load(f)
    return row if row["piece"] == piece.name else None


# ---- one clip, one piece (run inside the Ray tasks) ------------------------------------------------------------


def _render_bytes(midi: bytes, soundfont: str, seconds: float) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".mid") as f:
        f.write(midi)
        f.flush()
        return render_midi(f.name, soundfont, seconds)


@dataclass(frozen=True)
class Rendered:
    arrangement: Arrangement
    key: str  # spelled by `spell_key`
    semitones: int  # the transposition
    start_measure: int  # the first bar's number in the score
    midi: bytes
    audio: np.ndarray  # (2, S) at SAMPLE_RATE, as fluidsynth wrote it


def _render_first_usable(score, measures, rng: random.Random, clip_id: str, cfg: DatasetConfig) -> Rendered:
    """The first of the clip's arrangements that gives a usable excerpt and a sounding render."""
    from music21.exceptions21 import Music21Exception

    problem = "no stretch of whole bars long enough at the tempi drawn"
    for arrangement in draws(measures, len(score.parts), rng, cfg.duration):
        try:
            cut = excerpt(score, arrangement)
            key, semitones = arrange(cut, arrangement)
            midi = midi_bytes(cut, arrangement)
            audio = _render_bytes(midi, cfg.soundfont, cfg.duration)
        except (ExcerptError, RenderError, Music21Exception) as err:
            problem = f"{type(err).__name__}: {err}"
            continue
        first = cut.parts[0].getElementsByClass("Measure").first().number
        return Rendered(arrangement, spell_key(key), semitones, first, midi, audio)
    raise PieceError(f"{clip_id}: no usable excerpt ({problem})")


def _row(clip_id: str, job: PieceJob, clip: Rendered, parts: int, rng: random.Random, cfg: DatasetConfig) -> dict:
    arrangement, paths = clip.arrangement, _paths(cfg.out, clip_id)
    voices = arrangement.instrumentation.parts(parts)
    instruments = list(dict.fromkeys(label for _, label in voices)) + (["drums"] if arrangement.drums else [])
    piece = job.piece
    facts = Facts(
        clip.key, arrangement.bpm, arrangement.instrumentation.label, arrangement.drums, arrangement.metre,
        piece.style, piece.composer,
    )  # fmt: skip
    return {
        "id": clip_id,
        "audio": paths["audio"],
        "video": paths["video"],
        "midi": paths["midi"],
        "caption": caption(facts, rng, complete=job.split == "heldout"),
        "start": 0.0,
        "duration": cfg.duration,
        "key": clip.key,
        "tempo_bpm": arrangement.bpm,
        "time_signature": arrangement.metre,
        "instruments": instruments,
        "family": arrangement.instrumentation.family,
        "drums": arrangement.drums,
        "composer": piece.composer,
        "style": piece.style,
        "piece": piece.name,
        "transpose": clip.semitones,
        "start_measure": clip.start_measure,
        "cut_every_s": arrangement.bar_s,
        "beat_s": arrangement.beat_s,
        "split": job.split,
        "source": f"music21 corpus: {piece.name}",
    }


def make_clip(score, measures, job: PieceJob, clip_id: str, cfg: DatasetConfig) -> None:
    """Render one clip of a parsed piece and write its files, its row last (the row says the clip is done)."""
    rng = random.Random(f"{cfg.seed}/{clip_id}")  # every choice for the clip, in a fixed order
    clip = _render_first_usable(score, measures, rng, clip_id, cfg)
    row = _row(clip_id, job, clip, len(score.parts), rng, cfg)
    arrangement, paths = clip.arrangement, _paths(cfg.out, clip_id)
    write_bytes_atomic(paths["midi"], clip.midi)
    write_audio(paths["audio"], normalise(clip.audio), SAMPLE_RATE, "flac")
    video_seed = rng.getrandbits(32)
    write_beat_video(
        paths["video"], cfg.duration, arrangement.beat_s, arrangement.beats, VIDEO_FPS, VIDEO_SIZE, video_seed
    )
    write_bytes_atomic(paths["row"], json.dumps(row).encode())


class PieceTimeout(BaseException):
    """The piece's task ran past --task-timeout.

    A BaseException, like KeyboardInterrupt: the alarm fires anywhere, often inside music21's parser, whose
    callers catch Exception (`corpus.parse`), and a timeout must not be recorded as a parse error."""


def render_piece(job: PieceJob, cfg: DatasetConfig) -> str | None:
    """Parse the piece once and render its unfinished clips. Returns why the piece was skipped, or None.

    The deadline is an alarm in the task itself, so it counts from when the task starts running: on a busy
    shared cluster a task may wait long for a CPU, and that wait says nothing about the piece."""

    def expire(signum, frame):
        raise PieceTimeout(f"timed out after {cfg.task_timeout:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, cfg.task_timeout)
    try:
        score = parse(job.piece)
        measures = measures_of(score)
        for clip_id in job.clip_ids:
            if _row_if_done(cfg.out, clip_id, job.piece) is None:
                make_clip(score, measures, job, clip_id, cfg)
    except PieceTimeout as err:
        return str(err)
    except Exception as err:  # whatever a score does to music21 or fluidsynth, only this piece is lost
        return str(err) if isinstance(err, PieceError) else f"{type(err).__name__}: {err}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return None


# ---- the run (driver) ------------------------------------------------------------------------------------------


def plan(pool: list[Piece], cfg: DatasetConfig, skipped: dict[str, str]) -> list[PieceJob]:
    """Clip ids by piece: the k-th group of CLIPS_PER_PIECE ids goes to the k-th piece of the seed's order, or,
    if that piece was skipped, to the next piece after all the groups' own (in order) not skipped yet."""
    groups = -(-cfg.clips // CLIPS_PER_PIECE)
    spare = (p for p in pool[groups:] if p.name not in skipped)
    jobs = []
    for g in range(groups):
        piece = pool[g] if g < len(pool) and pool[g].name not in skipped else next(spare, None)
        if piece is None:
            log.warning("the corpus ran out of pieces: %d of %d clips", len(jobs) * CLIPS_PER_PIECE, cfg.clips)
            break
        ids = tuple(f"clip{i:05d}" for i in range(g * CLIPS_PER_PIECE, min(cfg.clips, (g + 1) * CLIPS_PER_PIECE)))
        jobs.append(PieceJob(piece, ids, split_of(piece, cfg.seed, cfg.heldout_fraction)))
    return jobs


def _render_all(jobs: list[PieceJob], cfg: DatasetConfig) -> dict[str, str]:
    """Run one task per piece, as many at a time as the cluster has CPUs for. A task stops itself at the
    timeout (`render_piece`); one stuck where no alarm reaches it (inside C code) is cancelled by the driver
    BACKSTOP_S after its timeout, counted from submission. Returns the pieces skipped, with the reason."""
    task = ray.remote(render_piece).options(num_cpus=cfg.render_cpus, max_retries=0)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cfg.render_cpus))
    queue, running, skipped = list(jobs), {}, {}
    while queue or running:
        while queue and len(running) < slots:
            job = queue.pop(0)
            running[task.remote(job, cfg)] = (job, time.monotonic() + cfg.task_timeout + BACKSTOP_S)
        wait_s = max(0.0, min(deadline for _, deadline in running.values()) - time.monotonic())
        ready, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
        for ref in ready:
            job, _ = running.pop(ref)
            try:
                reason = ray.get(ref)
            except ray.exceptions.RayError as err:  # the worker died (e.g. out of memory)
                reason = f"task failed: {type(err).__name__}"
            if reason is not None:
                skipped[job.piece.name] = reason
        for ref, (job, deadline) in list(running.items()):
            if deadline <= time.monotonic():
                ray.cancel(ref, force=True)
                running.pop(ref)
                skipped[job.piece.name] = f"cancelled {cfg.task_timeout + BACKSTOP_S:g} s after submission"
    for name, reason in skipped.items():
        log.warning("skipped %s: %s", name, reason)
    return skipped


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: str, rows: list[dict]) -> None:
    write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _prepare_out(cfg: DatasetConfig) -> None:
    """Make the directories, refuse a directory made with other settings (its clips would not be this run's),
    and delete temporary files a killed run left (they never carry a final name)."""
    for sub in SUBDIRS:
        os.makedirs(os.path.join(cfg.out, sub), exist_ok=True)
    settings = {name: getattr(cfg, name) for name in SETTINGS}
    path = os.path.join(cfg.out, "dataset.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        if before != settings:
            raise InputError(f"{cfg.out} was made with {before}, not {settings}: use another --out")
    else:
        write_bytes_atomic(path, json.dumps(settings).encode())
    for sub in SUBDIRS:
        for name in os.listdir(os.path.join(cfg.out, sub)):
            if name.startswith("."):
                os.remove(os.path.join(cfg.out, sub, name))


def _write_manifests(out: str, rows: list[dict]) -> str:
    heldout = [r for r in rows if r["split"] == "heldout"]
    _write_jsonl(os.path.join(out, "train.jsonl"), [r for r in rows if r["split"] == "train"])
    _write_jsonl(os.path.join(out, "heldout.jsonl"), heldout)
    _write_jsonl(os.path.join(out, "prompts-heldout.jsonl"), [{"id": r["id"], "prompt": r["caption"]} for r in heldout])
    manifest = os.path.join(out, "manifest.jsonl")
    _write_jsonl(manifest, rows)
    return manifest


def run(cfg: DatasetConfig) -> dict:
    """Render what is missing, then write the manifests; returns counts for the command line (exit status 1 if
    there are fewer clips than asked: every piece of a round skipped, or the corpus used up)."""
    started = time.perf_counter()
    _fluidsynth()
    cfg = cfg.model_copy(update={"out": os.path.abspath(cfg.out), "soundfont": find_soundfont(cfg.soundfont)})
    _prepare_out(cfg)
    pool = ordered(cfg.seed)
    skipped_path = os.path.join(cfg.out, "skipped.jsonl")
    skipped = {r["piece"]: r["reason"] for r in _read_jsonl(skipped_path)}
    started_ray = False
    try:
        while True:  # a skipped piece hands its clips to another piece, which may be skipped in turn
            jobs = plan(pool, cfg, skipped)
            todo = [j for j in jobs if any(_row_if_done(cfg.out, i, j.piece) is None for i in j.clip_ids)]
            if not todo:
                break
            started_ray = connect(cfg.address) or started_ray
            new = _render_all(todo, cfg)
            skipped.update(new)
            _write_jsonl(skipped_path, [{"piece": p, "reason": r} for p, r in skipped.items()])
            if not new or len(new) == len(todo):  # done, or nothing works (a bad soundfont): stop either way
                break
    finally:
        if started_ray:
            ray.shutdown()
    rows = [row for j in jobs for i in j.clip_ids if (row := _row_if_done(cfg.out, i, j.piece)) is not None]
    manifest = _write_manifests(cfg.out, rows)
    return {
        "manifest": manifest,
        "clips": len(rows),
        "train": sum(r["split"] == "train" for r in rows),
        "heldout": sum(r["split"] == "heldout" for r in rows),
        "pieces": len({r["piece"] for r in rows}),
        "skipped_pieces": len(skipped),
        "wall_s": round(time.perf_counter() - started, 1),
        "exit_status": 1 if len(rows) < cfg.clips else 0,
    }


def make_dataset(out: str, clips: int, seconds: float = 10.0, soundfont: str | None = None, **options) -> str:
    """Write a dataset of `clips` clips of `seconds` into `out` (see DatasetConfig for the options); returns the
    path of its manifest."""
    return run(DatasetConfig(out=out, clips=clips, duration=seconds, soundfont=soundfont, **options))["manifest"]
