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

from jobs.dataset import RenderError, find_soundfont, render_midi, spell_key


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "make-dataset", "--out", str(out), "--clips", "8", "--duration", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out, [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_each_clip_has_real_audio_a_video_and_a_caption_stating_its_attributes(dataset):
    out, rows = dataset
    assert [r["id"] for r in rows] == [f"clip{i:04d}" for i in range(8)]
    assert len({r["tempo_bpm"] for r in rows}) == 8 and len({r["composer"] for r in rows}) == 5
    for row in rows:
        audio, sr = sf.read(row["audio"], always_2d=True)
        assert sr == 48000 and audio.shape == (2 * 48000, 2)
        assert np.sqrt((audio**2).mean()) > 0.005  # music, not silence
        with av.open(row["video"]) as c:
            assert abs(float(c.streams.video[0].duration * c.streams.video[0].time_base) - 2.0) < 0.05
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
        key = converter.parse(row["midi"]).analyze("key")  # from the rendered notes, without the notation
        candidates = [spell_key(k) for k in [key, *key.alternateInterpretations[:2]]]
        assert row["key"] in candidates, (row["id"], row["key"], candidates)


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
