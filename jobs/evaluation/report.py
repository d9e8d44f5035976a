"""The evaluation report: a spectrogram figure per clip and one self-contained HTML page of tables."""

from __future__ import annotations

import html
import io

import numpy as np

SPECTROGRAM_RATE = 22050


def _mel_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    from jobs.evaluation.music import to_mono

    mel = librosa.feature.melspectrogram(y=to_mono(audio, sample_rate, SPECTROGRAM_RATE), sr=SPECTROGRAM_RATE)
    return librosa.power_to_db(mel, ref=1.0, top_db=80.0)


def spectrogram_png(title: str, panels: dict[str, tuple[np.ndarray, int]]) -> bytes:
    """PNG bytes of stacked mel spectrograms, one panel per (label -> (audio, sample rate))."""
    import matplotlib

    matplotlib.use("Agg")
    import librosa.display
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), squeeze=False, sharex=True)
    for ax, (label, (audio, rate)) in zip(axes[:, 0], panels.items(), strict=True):
        image = librosa.display.specshow(
            _mel_db(audio, rate), sr=SPECTROGRAM_RATE, x_axis="time", y_axis="mel", ax=ax, vmin=-80, vmax=0
        )
        ax.set_title(f"{title}: {label}", fontsize=9)
        ax.label_outer()  # one time axis, under the last panel
    fig.colorbar(image, ax=axes[:, 0].tolist(), format="%+.0f dB")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


CLIP_COLUMNS = (
    ("clip", "name"),
    ("status", "status"),
    ("prompt", "prompt"),
    ("tempo asked", "tempo_asked"),
    ("tempo found", "tempo_bpm"),
    ("key asked", "key_asked"),
    ("key found", "key_found"),
    ("key score", "key_score"),
    ("cut F", "cut_f_measure"),
    ("LUFS", "loudness_lufs"),
    ("clipped", "clipped_fraction"),
    ("silent", "silent_fraction"),
    ("CLAP", "clap_cosine"),
    ("ImageBind", "imagebind_cosine"),
    ("top tags", "top_tags"),
    ("error", "error"),
)


def render_html(metrics: dict) -> str:
    """A page with the set metrics (each with its embedder), the per-clip table and the spectrograms."""
    summary = _table(
        ["metric", "value", "embedder", "clips", "note"],
        [[m["name"], m["value"], m["embedder"], m["clips"], m.get("note")] for m in metrics["metrics"]],
    )
    clips = metrics["clips"]
    per_clip = _table([c for c, _ in CLIP_COLUMNS], [[clip.get(k) for _, k in CLIP_COLUMNS] for clip in clips])
    figures = "".join(
        f'<figure><img src="{html.escape(c["spectrogram"])}" alt="{html.escape(c["name"])}">'
        f"<figcaption>{html.escape(c['name'])}</figcaption></figure>"
        for c in clips
        if c.get("spectrogram")
    )
    counts = metrics["counts"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Video-Robin evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}}img{{max-width:100%}}</style>
</head><body>
<h1>Video-Robin evaluation</h1>
<p>generated: {html.escape(metrics["generated"])}<br>reference: {html.escape(metrics["reference"])}<br>
clips: {counts["ok"]} evaluated, {counts["failed"]} failed, {counts["references"]} references</p>
<h2>Set metrics</h2>{summary}
<h2>Per clip</h2>{per_clip}
<h2>Spectrograms (generated vs reference)</h2>{figures}
</body></html>
"""
