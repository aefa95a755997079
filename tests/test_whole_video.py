"""A data set that lists a video many times decodes it once, whole, and serves the same frames."""

import numpy as np
import pytest
import torch
from helpers import make_speed

from dataset_preparation.synthetic import WorldSpec, render_video, write_video
from fedvssl.data import datasets
from fedvssl.data.annotations import VideoRecord
from fedvssl.data.datasets import PretextDataset
from fedvssl.data.samplers import read_clip
from fedvssl.data.video import DecodedVideos, DecordReader, PyAVReader, WholeVideoReader, make_reader

SPEC = WorldSpec(num_frames=20, height=48, width=64)
VIDEO_BYTES = SPEC.num_frames * SPEC.height * SPEC.width * 3


class Counting:
    """A reader that counts what it is asked, and can refuse to decode more than ``most`` frames at once."""

    def __init__(self, inner, most: int | None = None) -> None:
        self.inner, self.most, self.name = inner, most, inner.name
        self.lengths, self.decodes = 0, []

    def num_frames(self, path):
        self.lengths += 1
        return self.inner.num_frames(path)

    def get_frames(self, path, indices):
        self.decodes.append((path, len(indices)))
        if self.most is not None and len(indices) > self.most:
            raise ValueError("truncated file")
        return self.inner.get_frames(path, indices)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    paths = []
    for i, motion in enumerate(("orbit_cw", "slide_right")):
        path = folder / f"{motion}.mp4"
        write_video(path, render_video(motion, np.random.default_rng(i), SPEC), SPEC.fps)
        paths.append(str(path))
    return paths


def _clips(rng, paths, n=30):
    return [(paths[int(rng.integers(len(paths)))], rng.integers(0, SPEC.num_frames, size=8)) for _ in range(n)]


@pytest.mark.parametrize("decoder", [DecordReader, PyAVReader], ids=["decord", "pyav"])
def test_clips_from_memory_are_the_decoded_clips_and_each_video_is_decoded_once(videos, decoder):
    whole = WholeVideoReader(Counting(decoder()), DecodedVideos(2**30))
    direct = decoder()
    for path, idx in _clips(np.random.default_rng(0), videos):
        assert whole.num_frames(path) == SPEC.num_frames
        np.testing.assert_array_equal(read_clip(whole, path, idx), read_clip(direct, path, idx))
    assert sorted(whole.inner.decodes) == sorted((p, SPEC.num_frames) for p in videos)
    assert whole.inner.lengths == len(videos)


def test_the_memory_bound_keeps_the_newest_videos_and_the_frames_stay_right(videos):
    whole = WholeVideoReader(Counting(DecordReader()), DecodedVideos(int(1.5 * VIDEO_BYTES)))  # room for one
    direct = DecordReader()
    a, b = videos
    for path in (a, b, a, a):
        np.testing.assert_array_equal(whole.get_frames(path, [3, 1, 19]), direct.get_frames(path, [3, 1, 19]))
    assert [p for p, _ in whole.inner.decodes] == [a, b, a]  # b pushed a out; the last a came from memory


def test_a_video_that_does_not_decode_whole_is_read_clip_by_clip(videos):
    whole = WholeVideoReader(Counting(DecordReader(), most=8), DecodedVideos(2**30))
    path = videos[0]
    for idx in ([0, 4, 8], [2, 3], [19]):
        np.testing.assert_array_equal(whole.get_frames(path, idx), DecordReader().get_frames(path, idx))
    assert whole.inner.decodes == [(path, SPEC.num_frames), (path, 3), (path, 2), (path, 1)]  # whole tried once


def test_clips_in_any_order_come_straight_from_memory_or_sorted_from_the_decoder(videos):
    """read_clip asks the whole-video reader for a clip as it is (reversed, repeated frames); a
    video that does not decode whole still reaches its decoder once per distinct frame, in order."""
    path, idx = videos[0], np.array([8, 0, 8, 4, 19, 19])
    expected = DecordReader().get_frames(path, idx)
    whole = WholeVideoReader(Counting(DecordReader()), DecodedVideos(2**30))
    np.testing.assert_array_equal(read_clip(whole, path, idx), expected)
    assert whole.inner.decodes == [(path, SPEC.num_frames)]
    piecewise = WholeVideoReader(Counting(DecordReader(), most=8), DecodedVideos(2**30))
    np.testing.assert_array_equal(read_clip(piecewise, path, idx), expected)
    assert piecewise.inner.decodes == [(path, SPEC.num_frames), (path, 4)]  # 0, 4, 8, 19


def test_later_readers_of_the_process_reuse_the_frames_and_a_changed_file_is_decoded_anew(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, render_video("orbit_cw", np.random.default_rng(0), SPEC), SPEC.fps)
    store = DecodedVideos(2**30)
    first, second = Counting(DecordReader()), Counting(DecordReader())
    WholeVideoReader(first, store).get_frames(str(path), [0])
    WholeVideoReader(second, store).get_frames(str(path), [1])  # the next round's data set
    assert len(first.decodes) == 1 and second.decodes == [] and second.lengths == 0
    write_video(
        path,
        render_video("fall", np.random.default_rng(1), WorldSpec(num_frames=12, height=48, width=64)),
        SPEC.fps,
    )
    got = WholeVideoReader(second, store).get_frames(str(path), [11])
    np.testing.assert_array_equal(got, DecordReader().get_frames(str(path), [11]))
    assert second.decodes == [(str(path), 12)]


def test_only_a_data_set_that_repeats_videos_keeps_them_and_its_examples_do_not_change(videos):
    method = make_speed(clip_len=4, crop=32)
    records = [VideoRecord(path=p, label=0, name=p) for p in videos]
    once = PretextDataset(records, method, "auto", seed=(1,))
    assert not isinstance(once.reader, WholeVideoReader)
    repeated = PretextDataset(records * 3, method, "auto", seed=(1,))
    assert isinstance(repeated.reader, WholeVideoReader)
    plain = PretextDataset(records * 3, method, "auto", seed=(1,))
    plain._reader = make_reader("auto")  # the same list, decoded clip by clip
    for i in range(len(repeated)):
        a, b = repeated[i], plain[i]
        assert a["label"] == b["label"] and torch.equal(a["imgs"], b["imgs"])


def test_the_environment_bounds_the_decoded_videos_and_zero_turns_them_off(videos, monkeypatch):
    monkeypatch.setenv("FEDVSSL_DECODED_VIDEOS_MB", "0")
    monkeypatch.setattr(datasets, "DECODED", DecodedVideos())
    records = [VideoRecord(path=p, label=0, name=p) for p in videos]
    assert not isinstance(PretextDataset(records * 3, make_speed(), "auto", seed=(1,)).reader, WholeVideoReader)
    monkeypatch.setenv("FEDVSSL_DECODED_VIDEOS_MB", "64")
    assert DecodedVideos().max_bytes == 64 * 2**20
    monkeypatch.setenv("FEDVSSL_DECODED_VIDEOS_MB", "lots")
    with pytest.raises(ValueError, match="FEDVSSL_DECODED_VIDEOS_MB='lots': expected a whole number of MiB"):
        _ = DecodedVideos().max_bytes
