"""`videorobin make-dataset`: real scores, real renders, ground truth that matches what was written."""

import json
import subprocess
import sys
import time

import av
import mido
import numpy as np
import pytest
import soundfile as sf

from jobs.dataset import RenderError, find_soundfont, render_midi


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "make-dataset", "--out", str(out), "--clips", "3", "--duration", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out, [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_each_clip_has_real_audio_a_video_and_a_caption_stating_its_attributes(dataset):
    out, rows = dataset
    assert [r["id"] for r in rows] == ["clip0000", "clip0001", "clip0002"]
    assert len({r["tempo_bpm"] for r in rows}) == 3 and len({r["composer"] for r in rows}) == 2
    for row in rows:
        audio, sr = sf.read(row["audio"], always_2d=True)
        assert sr == 48000 and audio.shape == (3 * 48000, 2)
        assert np.sqrt((audio**2).mean()) > 0.005  # music, not silence
        with av.open(row["video"]) as c:
            assert abs(float(c.streams.video[0].duration * c.streams.video[0].time_base) - 3.0) < 0.05
        for fact in (f"{row['tempo_bpm']} BPM", row["key"], row["time_signature"], row["composer"]):
            assert fact in row["caption"]


def test_ground_truth_matches_the_midi_that_was_rendered(dataset):
    from music21 import converter

    _, rows = dataset
    for row in rows:
        tempos = [m.tempo for m in mido.MidiFile(row["midi"]).tracks[0] if m.type == "set_tempo"]
        beats_per_minute = {round(mido.tempo2bpm(t)) for t in tempos}
        quarter_bpm = row["tempo_bpm"] * (1.5 if row["time_signature"].endswith("/8") else 1.0)
        assert beats_per_minute == {round(quarter_bpm)}, row["id"]
        key = converter.parse(row["midi"]).analyze("key")
        assert key.mode in row["key"] and key.tonic.name[0] == row["key"][0], (row["id"], key, row["key"])


def test_renders_are_bounded_however_long_the_midi(tmp_path):
    song = mido.MidiFile()
    track = mido.MidiTrack()
    song.tracks.append(track)
    for i in range(240):  # two minutes of notes at the default 120 BPM
        track.append(mido.Message("note_on", note=60 + i % 12, velocity=90, time=0))
        track.append(mido.Message("note_off", note=60 + i % 12, velocity=0, time=480))
    song.save(tmp_path / "long.mid")
    start = time.perf_counter()
    audio = render_midi(str(tmp_path / "long.mid"), find_soundfont(), seconds=1.5)
    assert audio.shape == (2, 72000) and time.perf_counter() - start < 20


def test_missing_soundfont_is_a_clear_error(tmp_path):
    with pytest.raises(RenderError, match="soundfont"):
        find_soundfont(str(tmp_path / "nope.sf2"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "make-dataset",
            "--out",
            str(tmp_path / "d"),
            "--clips",
            "1",
            "--soundfont",
            str(tmp_path / "nope.sf2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr and "soundfont" in result.stderr
