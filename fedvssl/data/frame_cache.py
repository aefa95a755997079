"""A pre-decoded frame cache: every frame of a video as a JPEG at a fixed short side, one file per video.

CPU decoding of long-GOP videos (Kinetics) runs at about a tenth of what a GPU trains
on; reading JPEGs is about ten times faster (benchmarks/README.md, "Does the decoder keep up?").

A cache folder holds ``frame_cache.json`` (the format version, short side and JPEG
quality every entry was built with), ``failures.json`` (videos the build could not
decode) and one entry per video under ``entries/<2 hex>/<sha1>.jpgs``, named by the
SHA-1 of the video's resolved absolute path. An entry is:

- a fixed header (``HEADER``): magic, format version, frame count, frame height and
  width, the build's short side and quality, the source's size and mtime_ns, the
  length of the source path;
- the source's resolved path (UTF-8), so that an entry says what it holds;
- ``frames + 1`` little-endian uint64 offsets of the images, from the end of the offsets;
- the JPEG images, in frame order.

An entry is fresh while its source has the size and mtime_ns in its header; the reader
refuses anything else (:class:`CacheMiss`), so a changed video is never trained on
from its old frames.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedvssl.core.files import write_bytes, write_json

VERSION = 1
MAGIC = b"FVSSLJPG"
# magic, version, frames, height, width, short side, quality, source size, source mtime_ns, path length
HEADER = struct.Struct("<8sIIIIIIQqI")
MANIFEST = "frame_cache.json"
FAILURES = "failures.json"
FORMAT_NAME = "fedvssl frame cache"
# The screening reasons of a video the cache cannot serve (docs/data.md, "Missing and broken videos").
NOT_CACHED = "not in the frame cache"
STALE = "stale in the frame cache"
UNDECODABLE = "undecodable"  # the build could not decode it: the same reason as a failed probe
_FIRST_READ = 1 << 16  # one read holds the header, the path and the offsets of videos up to ~8,000 frames


class OtherVersion(ValueError):
    """An entry or a folder written in another format version."""


class CacheMiss(ValueError):
    """A video the cache cannot serve; ``reason`` is one of the screening reasons above."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Manifest:
    """What a cache folder was built with; every entry in it has these settings."""

    short_side: int
    quality: int
    version: int = VERSION


@dataclass(frozen=True)
class Header:
    frames: int
    height: int
    width: int
    short_side: int
    quality: int
    source_size: int
    source_mtime_ns: int
    source: str
    data_start: int  # where the images begin
    offsets: np.ndarray  # [frames + 1], from data_start

    @property
    def file_size(self) -> int:
        return self.data_start + int(self.offsets[-1])


def source_key(path: str) -> str:
    """The resolved absolute path an entry is named by (symlinks to one file share an entry)."""
    return os.path.realpath(path)


def entry_path(folder: str | Path, path: str) -> Path:
    digest = hashlib.sha1(source_key(path).encode()).hexdigest()
    return Path(folder) / "entries" / digest[:2] / f"{digest}.jpgs"


def read_manifest(folder: str | Path) -> Manifest | None:
    """The folder's manifest, or None where there is none (not a cache, or not built yet)."""
    file = Path(folder) / MANIFEST
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    if data.get("format") != FORMAT_NAME:
        raise ValueError(f"{file} is not a {FORMAT_NAME} manifest")
    return Manifest(short_side=int(data["short_side"]), quality=int(data["quality"]), version=int(data["version"]))


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    write_json(Path(folder) / MANIFEST, {"format": FORMAT_NAME, **manifest.__dict__})


def read_failures(folder: str | Path) -> dict[str, dict]:
    """Resolved path -> {size, mtime_ns, error} of every video the build could not decode."""
    file = Path(folder) / FAILURES
    return json.loads(file.read_text()) if file.is_file() else {}


def write_failures(folder: str | Path, failures: dict[str, dict]) -> None:
    write_json(Path(folder) / FAILURES, failures)


def encode_entry(
    source: str, stat: os.stat_result, images: list[bytes], height: int, width: int, manifest: Manifest
) -> bytes:
    """The bytes of one entry: header, source path, offsets, images."""
    name = source_key(source).encode()
    offsets = np.cumsum([0] + [len(b) for b in images], dtype=np.uint64).astype("<u8")
    header = HEADER.pack(
        MAGIC,
        manifest.version,
        len(images),
        height,
        width,
        manifest.short_side,
        manifest.quality,
        stat.st_size,
        stat.st_mtime_ns,
        len(name),
    )
    return b"".join([header, name, offsets.tobytes(), *images])


def write_entry(folder: str | Path, source: str, data: bytes) -> Path:
    """Write an entry atomically: a reader sees the old entry or the new one, never half of one."""
    file = entry_path(folder, source)
    write_bytes(file, data)
    return file


def _fixed(data: bytes) -> tuple:
    if len(data) < HEADER.size:
        raise ValueError("truncated entry")
    fields = HEADER.unpack_from(data)
    if fields[0] != MAGIC:
        raise ValueError("not a frame cache entry")
    if fields[1] != VERSION:
        raise OtherVersion(f"entry format version {fields[1]}, expected {VERSION}")
    return fields


def parse_header(data: bytes) -> Header:
    """The header of an entry from its first bytes (at least the header, path and offsets)."""
    _, _, frames, height, width, short_side, quality, size, mtime_ns, name_len = _fixed(data)
    start = HEADER.size + name_len
    data_start = start + 8 * (frames + 1)
    if len(data) < data_start:
        raise ValueError("truncated entry")
    offsets = np.frombuffer(data, "<u8", frames + 1, start)
    source = data[HEADER.size : start].decode()
    return Header(frames, height, width, short_side, quality, size, mtime_ns, source, data_start, offsets)


def read_header(file: Path) -> Header:
    with open(file, "rb") as f:
        data = f.read(_FIRST_READ)
        fields = _fixed(data)
        frames, name_len = fields[2], fields[9]
        need = HEADER.size + name_len + 8 * (frames + 1)
        if need > len(data):  # a long video: its offsets reach past the first read
            data += f.read(need - len(data))
    return parse_header(data)


def check_entry(folder: str | Path, path: str, stat: os.stat_result | None = None) -> Header:
    """The fresh entry of ``path``, or :class:`CacheMiss` with the reason it cannot be used."""
    file = entry_path(folder, path)
    try:
        header = read_header(file)
    except FileNotFoundError:
        raise CacheMiss(path, NOT_CACHED) from None
    except OtherVersion:  # the build replaces it
        raise CacheMiss(path, STALE) from None
    except ValueError:  # damaged (not written by a build, which writes atomically): the build replaces it
        raise CacheMiss(path, NOT_CACHED) from None
    stat = stat or os.stat(path)
    if (header.source_size, header.source_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        raise CacheMiss(path, STALE)
    if file.stat().st_size != header.file_size:
        raise CacheMiss(path, NOT_CACHED)
    return header


def entry_status(folder: str | Path, path: str, stat: os.stat_result, failures: dict[str, dict]) -> tuple[str, int]:
    """(``ok`` or the reason, frame count) of a listed video that exists: the screening's view."""
    try:
        return "ok", check_entry(folder, path, stat).frames
    except CacheMiss as miss:
        failed = failures.get(source_key(path), {})
        same_file = [failed.get("size"), failed.get("mtime_ns")] == [stat.st_size, stat.st_mtime_ns]
        return (UNDECODABLE if miss.reason == NOT_CACHED and same_file else miss.reason), -1


class FrameCacheReader:
    """The :class:`fedvssl.data.video.VideoReader` of a cache folder: RGB uint8 frames [n, h, w, 3].

    Indices past the last frame give the last frame, as decord's clamp does. Each call
    checks the entry against its source (one ``stat``), so a stale or missing entry
    raises :class:`CacheMiss` and the dataset replaces the video, counting it as bad.
    """

    name = "cache"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def num_frames(self, path: str) -> int:
        return check_entry(self.folder, path).frames

    def get_frames(self, path: str, indices: list[int] | np.ndarray) -> np.ndarray:
        header = check_entry(self.folder, path)
        idx = np.clip(np.asarray(indices, dtype=np.int64), 0, header.frames - 1)
        wanted, where = np.unique(idx, return_inverse=True)  # each distinct frame once, in file order
        images = []
        with open(entry_path(self.folder, path), "rb") as f:
            for i in wanted.tolist():
                start, end = int(header.offsets[i]), int(header.offsets[i + 1])
                f.seek(header.data_start + start)
                images.append(bytearray(f.read(end - start)))
        return decode_jpegs(images)[where]


# JPEG coding goes through Pillow (libjpeg-turbo in its wheels). torchvision.io does the same
# work slightly faster, but torchvision 0.29 deprecates its image codecs for removal.
def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """One RGB uint8 frame [h, w, 3] as a JPEG (libjpeg-turbo's defaults: 4:2:0 chroma)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpegs(images: list[bytearray]) -> np.ndarray:
    """JPEGs of one size -> RGB uint8 frames [n, h, w, 3], C-contiguous as decord's."""
    from PIL import Image

    first = Image.open(io.BytesIO(images[0]))
    frames = np.empty((len(images), first.height, first.width, 3), np.uint8)
    for k, data in enumerate(images):
        image = first if k == 0 else Image.open(io.BytesIO(data))
        frames[k] = np.asarray(image.convert("RGB"))
    return frames
