"""Encoded video round trips through both decoders."""

import numpy as np
import pytest

from dataset_preparation.synthetic import WorldSpec, render_video, write_video
from fedvssl.data.video import DecordReader, FallbackReader, PyAVReader, make_reader


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    spec = WorldSpec(num_frames=20, height=48, width=64)
    frames = render_video("orbit_cw", np.random.default_rng(3), spec)
    out = {}
    for ext in ("mp4", "avi"):
        path = tmp_path_factory.mktemp("v") / f"clip.{ext}"
        write_video(path, frames, spec.fps)
        out[ext] = str(path)
    return frames, out


@pytest.mark.parametrize("ext", ["mp4", "avi"])
def test_decoded_clip_round_trips(clips, ext):
    frames, paths = clips
    for reader in (DecordReader(), PyAVReader()):
        assert reader.num_frames(paths[ext]) == len(frames)
        idx = [0, 7, 3, 19]
        got = reader.get_frames(paths[ext], idx)
        assert got.shape == (4, 48, 64, 3) and got.dtype == np.uint8
        # Lossy codecs (and 4:2:0 chroma): close to the source frames, and in the requested order.
        err = np.abs(got.astype(np.int16) - frames[idx].astype(np.int16)).mean(axis=(1, 2, 3))
        assert err.max() < 10, err
        swapped = np.abs(got[[1, 2]].astype(np.int16) - frames[[3, 7]].astype(np.int16)).mean(axis=(1, 2, 3))
        assert (swapped > err[[1, 2]]).all()


@pytest.mark.parametrize("ext", ["mp4", "avi"])
def test_decord_and_pyav_agree_exactly(clips, ext):
    _, paths = clips
    idx = np.array([19, 0, 5, 5, 12])
    np.testing.assert_array_equal(DecordReader().get_frames(paths[ext], idx), PyAVReader().get_frames(paths[ext], idx))


def test_backend_selection(monkeypatch, clips):
    assert make_reader("pyav").name == "pyav"
    assert make_reader("decord").name == "decord"
    assert make_reader("auto").name == "decord+pyav"
    import builtins

    real_import = builtins.__import__

    def no_decord(name, *args, **kwargs):
        if name == "decord":
            raise ImportError("no decord here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_decord)
    assert make_reader("auto").name == "pyav"
    with pytest.raises(ImportError):
        make_reader("decord")
    with pytest.raises(ValueError, match="decode_backend"):
        make_reader("opencv")


def test_fallback_reader_uses_pyav_when_decord_fails(clips):
    frames, paths = clips

    class Failing:
        name = "failing"

        def num_frames(self, path):
            raise RuntimeError("decoder bug")

        def get_frames(self, path, indices):
            raise RuntimeError("decoder bug")

    reader = FallbackReader(Failing(), PyAVReader())
    assert reader.num_frames(paths["avi"]) == len(frames)
    np.testing.assert_array_equal(
        reader.get_frames(paths["avi"], [2, 4]), PyAVReader().get_frames(paths["avi"], [2, 4])
    )
