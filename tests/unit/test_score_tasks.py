import io

import av
import fsspec
import numpy as np

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
