"""`videorobin make-dataset`: real scores, real renders, ground truth that matches what was written."""

import json
import os
import random
import re
import signal
import subprocess
import sys

import av
import mido
import numpy as np
import pytest
import soundfile as sf

from jobs.arrange import Measure, _stop
from jobs.captions import MOODS, PACE, TEMPLATES, Facts, caption
from jobs.corpus import collection, ordered, split_of
from jobs.dataset import CLIPS_PER_PIECE, DatasetConfig, RenderError, find_soundfont, plan, render_midi, render_piece
from jobs.evaluation.cuts import detect_cuts
from jobs.evaluation.music import parse_key, parse_tempo

CLIPS, SECONDS = 12, 2.0
# Seed 2 starts with a folk song, a Palestrina Credo and a Bach chorale (1, 6 and 4 parts; both splits at 0.3).
ARGS = ["--clips", str(CLIPS), "--duration", str(SECONDS), "--seed", "2", "--heldout-fraction", "0.3"]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
FIELDS = {
    "id", "audio", "video", "midi", "caption", "start", "duration", "key", "tempo_bpm", "time_signature",
    "instruments", "family", "drums", "composer", "style", "piece", "transpose", "start_measure", "cut_every_s",
    "beat_s", "split", "source",
}  # fmt: skip


def make_dataset(out, *args, timeout=240):
    """The command line, starting its own local Ray."""
    cmd = [sys.executable, "-m", "jobs.cli", "make-dataset", "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    result = make_dataset(out, *ARGS)
    assert result.returncode == 0, result.stderr
    assert f"clips: {CLIPS}" in result.stdout and "skipped_pieces: 0" in result.stdout
    return out, read_jsonl(out / "manifest.jsonl")


@pytest.mark.ray  # make-dataset starts a local Ray
def test_each_clip_has_loudness_normalised_audio_a_video_and_the_full_schema(dataset):
    _, rows = dataset
    assert [r["id"] for r in rows] == [f"clip{i:05d}" for i in range(CLIPS)]
    for row in rows:
        assert set(row) == FIELDS and row["start"] == 0.0 and row["duration"] == SECONDS
        audio, sr = sf.read(row["audio"], always_2d=True)
        assert row["audio"].endswith(".flac") and sr == 48000 and audio.shape == (int(SECONDS * 48000), 2)
        rms, peak = np.sqrt((audio**2).mean()), np.abs(audio).max()
        assert peak <= 0.951 and (abs(20 * np.log10(rms) + 20) < 0.1 or peak > 0.94), (row["id"], rms, peak)
        with av.open(row["video"]) as c:
            assert abs(float(c.streams.video[0].duration * c.streams.video[0].time_base) - SECONDS) < 0.05
        assert row["cut_every_s"] == pytest.approx(row["beat_s"] * int(round(row["cut_every_s"] / row["beat_s"])))
        assert row["beat_s"] == pytest.approx(60 / row["tempo_bpm"]) and -6 <= row["transpose"] <= 5


@pytest.mark.ray  # make-dataset starts a local Ray
def test_every_caption_reads_back_as_the_rows_key_and_tempo(dataset):
    _, rows = dataset
    for row in rows:
        assert parse_key(row["caption"]) == parse_key(row["key"]) is not None, row["caption"]
        assert parse_tempo(row["caption"]) == row["tempo_bpm"], row["caption"]


@pytest.mark.ray  # make-dataset starts a local Ray
def test_each_piece_is_in_one_split_and_the_split_files_agree(dataset):
    out, rows = dataset
    splits = {}
    for row in rows:
        splits.setdefault(row["piece"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values()) and len(splits) == CLIPS // CLIPS_PER_PIECE
    assert {"train", "heldout"} == {r["split"] for r in rows}
    train, heldout = read_jsonl(out / "train.jsonl"), read_jsonl(out / "heldout.jsonl")
    assert train == [r for r in rows if r["split"] == "train"]
    assert heldout == [r for r in rows if r["split"] == "heldout"]
    assert read_jsonl(out / "prompts-heldout.jsonl") == [{"id": r["id"], "prompt": r["caption"]} for r in heldout]


@pytest.mark.ray  # make-dataset starts a local Ray
def test_ground_truth_matches_the_midi_that_was_rendered(dataset):
    from music21 import converter, meter

    _, rows = dataset
    for row in rows:
        song = mido.MidiFile(row["midi"])
        quarter_bpm = row["tempo_bpm"] * meter.TimeSignature(row["time_signature"]).beatDuration.quarterLength
        tempos = {round(mido.tempo2bpm(m.tempo), 2) for m in song.tracks[0] if m.type == "set_tempo"}
        assert tempos == {round(quarter_bpm, 2)}, row["id"]
        drummed = any(m.type == "note_on" and m.channel == 9 for track in song.tracks for m in track)
        assert drummed == row["drums"] == ("drums" in row["instruments"]), row["id"]
        key = converter.parse(row["midi"]).analyze("key")  # from the notes (drums are unpitched), no notation
        candidates = [parse_key(f"{k.tonic.name} {k.mode}") for k in [key, *key.alternateInterpretations[:2]]]
        assert parse_key(row["key"]) in candidates, (row["id"], row["key"], candidates)


@pytest.mark.ray  # make-dataset starts a local Ray
def test_the_video_cuts_on_every_bar_line(dataset):
    _, rows = dataset
    for row in rows:
        bar_lines = np.arange(1, 100) * row["cut_every_s"]
        bar_lines = bar_lines[bar_lines <= (SECONDS * 25 - 1) / 25 + 1e-6]  # a frame shows each of them
        cuts = detect_cuts(row["video"])
        assert len(cuts) == len(bar_lines), (row["id"], cuts, bar_lines)
        assert np.all((cuts >= bar_lines - 1e-6) & (cuts < bar_lines + 1 / 25 + 1e-6)), (row["id"], cuts, bar_lines)


@pytest.mark.ray  # make-dataset starts a local Ray
def test_a_rerun_writes_nothing_and_gives_the_same_manifests(dataset):
    out, rows = dataset
    files = {p: p.stat().st_mtime_ns for sub in ("audio", "video", "midi", "rows") for p in (out / sub).iterdir()}
    assert len(files) == 4 * CLIPS
    before = {name: (out / name).read_bytes() for name in ("manifest.jsonl", "train.jsonl", "heldout.jsonl")}
    result = make_dataset(out, *ARGS)
    assert result.returncode == 0 and f"clips: {CLIPS}" in result.stdout, result.stderr
    after = {p: p.stat().st_mtime_ns for sub in ("audio", "video", "midi", "rows") for p in (out / sub).iterdir()}
    assert after == files
    assert before == {name: (out / name).read_bytes() for name in before}
    other = make_dataset(out, *ARGS[:-1], "0.5")  # a split decided otherwise would not match the clips on disk
    assert other.returncode == 2 and "heldout_fraction" in other.stderr and "Traceback" not in other.stderr


@pytest.mark.ray  # make-dataset starts a local Ray
def test_a_piece_past_the_task_timeout_is_cancelled_and_recorded(tmp_path):
    result = make_dataset(tmp_path, "--clips", "4", "--duration", "2", "--seed", "2", "--task-timeout", "0.05")
    assert result.returncode == 1 and "clips: 0" in result.stdout, result.stderr
    assert read_jsonl(tmp_path / "skipped.jsonl") == [{"piece": ordered(2)[0].name, "reason": "timed out after 0.05 s"}]


def test_a_deadline_that_fires_inside_the_score_parser_is_still_a_timeout(tmp_path):
    """music21's parser catches Exception around its readers; on a loaded machine the alarm lands there."""
    job = plan(ordered(2), DatasetConfig(out=str(tmp_path), clips=4), {})[0]
    assert render_piece(job, DatasetConfig(out=str(tmp_path), clips=4, task_timeout=0.001)) == "timed out after 0.001 s"
    assert not list(tmp_path.rglob("*.json"))  # nothing of the piece was written


def test_the_pool_mixes_collections_and_splits_stably_by_piece():
    pool = ordered(0)
    first = pool[:500]  # what a run of 2,000 clips uses
    assert len({p.name for p in pool}) == len(pool) > 5000 and pool == ordered(0) and pool[:50] != ordered(1)[:50]
    shares = {name: sum(collection(p) == name for p in first) / len(first) for name in map(collection, first)}
    assert len(shares) >= 8 and max(shares.values()) < 0.25, shares
    heldout = [p for p in first if split_of(p, 0, 0.1) == "heldout"]
    assert 0.05 < len(heldout) / len(first) < 0.15
    small, large = (plan(pool, DatasetConfig(out="x", clips=n), {}) for n in (40, 400))
    assert [(j.piece, j.clip_ids, j.split) for j in small] == [(j.piece, j.clip_ids, j.split) for j in large[:10]]


def test_a_skipped_piece_hands_its_clips_to_the_next_spare_piece():
    pool, cfg = ordered(0), DatasetConfig(out="x", clips=10)
    jobs = plan(pool, cfg, {pool[1].name: "does not parse"})
    assert [j.piece for j in jobs] == [pool[0], pool[3], pool[2]]
    assert [j.clip_ids for j in jobs] == [("clip00000", "clip00001", "clip00002", "clip00003"),
                                          ("clip00004", "clip00005", "clip00006", "clip00007"),
                                          ("clip00008", "clip00009")]  # fmt: skip


def test_an_excerpt_starts_on_a_whole_bar_and_keeps_every_bar_line_on_its_grid():
    pickup, bar, half_a, half_b = (Measure(q, "4/4", 4, 1.0) for q in (1.0, 4.0, 3.0, 1.0))
    chorale = [pickup, bar, bar, half_a, half_b, bar, Measure(3.0, "3/4", 3, 1.0)]
    assert _stop(chorale, 0, 2) is None  # a pickup is no downbeat
    assert _stop(chorale, 1, 4) == 6  # the bar written as 3 + 1 counts as one
    assert _stop(chorale, 1, 5) is None  # the metre changes
    assert _stop(chorale, 5, 1) == 6
    assert _stop([bar, half_b, bar], 0, 2) is None  # a lone short measure shifts the bar lines


def test_captions_always_state_a_readable_key_and_tempo():
    rng = random.Random(0)
    tonics = ("C", "D-flat", "F-sharp", "E-flat", "G-sharp", "B-flat", "A")
    keys = [f"{tonic} {mode}" for tonic in tonics for mode in ("major", "minor")]
    for i in range(2000):
        facts = Facts(
            rng.choice(keys), rng.randint(60, 180), rng.choice(["piano", "string quartet", "choir"]),
            rng.random() < 0.3, rng.choice(["3/4", "6/8", "4/2"]), rng.choice(["baroque chorale", "Irish folk tune"]),
            rng.choice(["J.S. Bach", "C.P.E. Bach", "traditional", ""]),
        )  # fmt: skip
        text = caption(facts, rng, complete=i % 2 == 0)
        assert parse_key(text) == parse_key(facts.key) and parse_tempo(text) == facts.bpm, text
        assert facts.instrument in text or i % 2, text  # held-out captions always name the instrument


def test_captions_come_in_many_phrasings():
    facts = Facts("C major", 100, "piano", False, "3/4", "baroque chorale", "J.S. Bach")
    words = "|".join(w for group in (*MOODS.values(), *PACE.values()) for w in group)
    shapes = set()
    for i in range(500):
        text = re.sub(r"100 ?bpm", "T", caption(facts, random.Random(i), complete=i % 2 == 0).lower())
        shapes.add(re.sub(rf"\b({words})( and ({words}))?\b", "M", text))  # one shape per template
    assert len(shapes) == len(TEMPLATES) >= 8, shapes


def test_renders_are_bounded_however_long_the_midi(tmp_path, monkeypatch):
    song = mido.MidiFile()
    track = mido.MidiTrack()
    song.tracks.append(track)
    for i in range(240):  # two minutes of notes at the default 120 BPM
        track.append(mido.Message("note_on", note=60 + i % 12, velocity=90, time=0))
        track.append(mido.Message("note_off", note=60 + i % 12, velocity=0, time=480))
    song.save(tmp_path / "long.mid")
    started, popen = [], subprocess.Popen

    def recorded(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", recorded)
    audio = render_midi(str(tmp_path / "long.mid"), find_soundfont(), seconds=1.5)
    assert audio.shape == (2, 72000)
    # fluidsynth was stopped, not left to write the two minutes (it cannot: nobody reads its pipe past 1.5 s)
    (synth,) = [p for p in started if str(tmp_path / "long.mid") in p.args]
    assert synth.returncode == -signal.SIGKILL


def test_missing_soundfont_is_a_clear_error(tmp_path):
    with pytest.raises(RenderError, match="soundfont"):
        find_soundfont(str(tmp_path / "nope.sf2"))
    result = make_dataset(tmp_path / "d", "--clips", "1", "--soundfont", str(tmp_path / "nope.sf2"), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "soundfont" in result.stderr
