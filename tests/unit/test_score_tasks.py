import io

import av
import fsspec
import numpy as np
import pytest

from jobs.score_tasks import _write_mp4, error_text


def test_muxed_mp4_reaches_a_remote_uri_whole(videos):
    audio = np.zeros((2, 48000), np.float32)
    _write_mp4(videos["short"], audio, 48000, "memory://scored/mp4/clip.mp4")
    fs = fsspec.filesystem("memory")
    assert fs.ls("/scored/mp4", detail=False) == ["/scored/mp4/clip.mp4"]  # no temporary left beside it
    with av.open(io.BytesIO(fs.cat("/scored/mp4/clip.mp4"))) as c:
        assert sorted(s.type for s in c.streams) == ["audio", "video"]


def test_error_text_is_one_line_naming_the_stage():
    assert error_text("probe", ValueError("bad\n  header")) == "probe: bad header"
    assert error_text("write", OSError()) == "write: OSError"


def test_a_row_that_breaks_the_decoder_fails_alone(tmp_path, tiny_bundle, tiny_cfg):
    from jobs.score import DecodeAudio
    from model.checkpoint import save_bundle

    save_bundle(tiny_bundle, str(tmp_path / "ckpt"))
    good = np.zeros((tiny_cfg.latent_dim, 8), np.float32)
    wrong_width = np.zeros((tiny_cfg.latent_dim + 3, 8), np.float32)  # latents of another model
    batch = {
        "id": np.array(["a", "b", "c"]),
        "status": np.array(["ok", "ok", "ok"]),
        "error": np.array(["", "", ""]),
        "latents": np.array([good, wrong_width, good, None], dtype=object)[:-1],
        "duration_s": np.array([0.3, 0.3, 0.3]),
    }
    out = DecodeAudio(str(tmp_path / "ckpt"), gpus=0)(batch)
    assert list(out["status"]) == ["ok", "failed", "ok"]
    assert out["error"][1].startswith("decode: ") and out["error"][0] == out["error"][2] == ""
    assert out["audio"][0].shape == out["audio"][2].shape and out["audio"][0].shape[1] > 0


def test_a_writer_that_fails_leaves_no_temporary_file(tmp_path):
    from model.io import write_bytes_atomic

    with pytest.raises(TypeError):
        write_bytes_atomic(str(tmp_path / "manifest.parquet"), "text where bytes belong")
    assert list(tmp_path.iterdir()) == []
