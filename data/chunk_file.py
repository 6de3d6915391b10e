"""The gscache chunk file (``.gschunks``): a scene cut into spatial chunks with levels of detail, read per chunk.

Written by ``gscache convert IN OUT --chunks`` (:func:`convert_to_chunks`), read by :class:`ChunkFile`, which the
streaming renderer (:class:`renderer.streaming.StreamingRenderer`) takes as its chunk source. Partitioning and
levels of detail are :mod:`renderer.lod`'s.

Layout, version 1 (all integers and floats little-endian):

``header`` (64 bytes, at offset 0)::

    magic          8s   b"GSCHUNK\\0"
    version        u32  1
    header_bytes   u32  64
    num_chunks     u32  M
    num_levels     u32  L (1 + coarser levels)
    sh_coeffs      u32  K (1, 4, 9 or 16)
    flags          u32  0 (reserved)
    num_gaussians  u64  N (level 0, the whole scene)
    table_offset   u64  byte offset of the table
    data_offset    u64  byte offset of the first entry's data
    table_crc      u32  CRC-32 of the table's bytes
    header_crc     u32  CRC-32 of the 60 bytes before it

``table`` (``M * L`` records of 72 bytes, chunk-major: record ``c * L + l`` is chunk ``c`` at level ``l``)::

    offset u64, count u64, chunk u32, level u32, aabb_min 3 x f32, aabb_max 3 x f32,
    center 3 x f32, radius f32, error f32, crc u32

``data``: each entry at its ``offset`` (a multiple of 64), ``count * (11 + 3 K)`` float32 values: the column blocks
``means [n, 3]``, ``quats [n, 4]``, ``log_scales [n, 3]``, ``opacity_logits [n]``, ``sh [n, K, 3]``
(:func:`renderer.lod.pack_splats`), so that an entry is one slice of a memory map. ``crc`` is the CRC-32 of the
entry's bytes; ``center``/``radius`` bound the alpha >= 1/255 ellipsoids of its Gaussians, ``error`` is the level's
geometric error in world units (0 at level 0).

Opening a file checks the magic, the version, the header and table checksums and that every entry lies inside the
file (truncation); each entry's checksum is checked when it is first read (``verify=True``) or by
:meth:`ChunkFile.verify`. Every problem is a :class:`SceneFormatError` naming the file (and the chunk).
Files are written to a temporary file in the destination folder and renamed when complete.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from renderer.lod import ChunkedScene, build_chunked_scene, floats_per_gaussian, unpack_splats
from renderer.splats import SH_COEFFS_FOR_DEGREE, Splats

from .errors import SceneFormatError

CHUNK_MAGIC = b"GSCHUNK\x00"
CHUNK_VERSION = 1
CHUNK_SUFFIX = ".gschunks"
_HEADER = struct.Struct("<8sIIIIIIQQQII")
HEADER_BYTES = _HEADER.size  # 64
_ALIGN = 64
TABLE_DTYPE = np.dtype([
    ("offset", "<u8"), ("count", "<u8"), ("chunk", "<u4"), ("level", "<u4"), ("aabb_min", "<f4", (3,)),
    ("aabb_max", "<f4", (3,)), ("center", "<f4", (3,)), ("radius", "<f4"), ("error", "<f4"), ("crc", "<u4"),
])  # fmt: skip


@dataclass(frozen=True)
class ChunkFileInfo:
    """What a chunk file holds.

    Attributes:
        path: the file; num_gaussians: N at level 0; num_chunks: M; num_levels: L; sh_coeffs: K;
        file_bytes: size of the file; largest_entry_bytes: the largest level-0 entry in bytes.
    """

    path: Path
    num_gaussians: int
    num_chunks: int
    num_levels: int
    sh_coeffs: int
    file_bytes: int
    largest_entry_bytes: int


# ----- writing -------------------------------------------------------------------------------------------------
def write_chunk_file(path: str | os.PathLike[str], scene: ChunkedScene, fsync: bool = True,
                     workers: int | None = None) -> ChunkFileInfo:
    """Write ``scene`` to ``path`` (atomically: a temporary file renamed when complete).

    Entries are written straight from the level arrays (no packed copy), by ``workers`` threads (``os.pwritev`` at
    precomputed offsets, CRC-32s computed on the same threads; 8 when None). ``fsync=False`` skips flushing the
    file to the disk before the rename (scratch files: the page cache serves the reads that follow).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise SceneFormatError(path, f"cannot write: directory '{path.parent}' does not exist")
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as f:
            _write_to(f.fileno(), scene, workers or 8)
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise SceneFormatError(path, f"cannot write: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return ChunkFile(path, verify=False).info


def _entry_layout(counts: np.ndarray, sh_coeffs: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Byte offset and size of every entry, chunk-major ``[M * L]``, and the table's offset."""
    nbytes = counts.reshape(-1).astype(np.int64) * (floats_per_gaussian(sh_coeffs) * 4)
    padded = (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    offsets = _aligned(HEADER_BYTES) + np.cumsum(padded) - padded
    end = int(offsets[-1] + nbytes[-1]) if len(nbytes) else _aligned(HEADER_BYTES)
    return offsets, nbytes, _aligned(end)


def _entry_buffers(scene: ChunkedScene, chunk: int, level: int) -> list[memoryview]:
    """The column blocks of one entry as little-endian float32 buffers (views of the level arrays, no copy)."""
    s = scene.level_starts[level]
    a, b = int(s[chunk]), int(s[chunk + 1])
    lv = scene.levels[level]
    cols = (lv.means, lv.quats, lv.log_scales, lv.opacity_logits, lv.sh)
    return [memoryview(np.ascontiguousarray(c[a:b].detach().cpu().numpy().astype("<f4", copy=False)).reshape(-1))
            for c in cols]


def _write_to(fd: int, scene: ChunkedScene, workers: int) -> None:
    m, nl, k = scene.num_chunks, scene.num_levels, scene.sh_coeffs
    counts = scene.counts.numpy()
    offsets, _, table_offset = _entry_layout(counts, k)
    table = np.zeros(m * nl, dtype=TABLE_DTYPE)
    os.ftruncate(fd, table_offset + table.nbytes)  # gaps stay zero

    def write_chunk(c: int) -> list[int]:
        crcs = []
        for level in range(nl):
            bufs = _entry_buffers(scene, c, level)
            crc = 0
            for buf in bufs:
                crc = zlib.crc32(buf, crc)
            crcs.append(crc)
            _pwritev_all(fd, bufs, int(offsets[c * nl + level]))
        return crcs

    with ThreadPoolExecutor(max(1, workers)) as pool:
        crcs = list(pool.map(write_chunk, range(m)))
    table["offset"] = offsets
    table["count"] = counts.reshape(-1)
    table["chunk"] = np.repeat(np.arange(m), nl)
    table["level"] = np.tile(np.arange(nl), m)
    table["crc"] = np.asarray(crcs, dtype=np.uint32).reshape(-1) if m else 0
    for name, values in (("aabb_min", scene.aabb_min), ("aabb_max", scene.aabb_max), ("center", scene.centers),
                         ("radius", scene.radii), ("error", scene.errors)):
        table[name] = values.reshape(m * nl, *values.shape[2:]).numpy()
    table_bytes = table.tobytes()
    _pwritev_all(fd, [memoryview(table_bytes)], table_offset)
    n = int(counts[:, 0].sum()) if m else 0
    head = _HEADER.pack(CHUNK_MAGIC, CHUNK_VERSION, HEADER_BYTES, m, nl, k, 0, n, table_offset,
                        _aligned(HEADER_BYTES), zlib.crc32(table_bytes), 0)
    _pwritev_all(fd, [memoryview(head[:-4] + struct.pack("<I", zlib.crc32(head[:-4])))], 0)


def _pwritev_all(fd: int, bufs: list[memoryview], offset: int) -> None:
    """Write every byte of ``bufs`` at ``offset`` (``os.pwritev`` may write less than asked)."""
    views = [b.cast("B") for b in bufs if b.nbytes]
    while views:
        done = os.pwritev(fd, views, offset)
        offset += done
        while views and done >= views[0].nbytes:
            done -= views[0].nbytes
            views.pop(0)
        if views and done:
            views[0] = views[0][done:]


def _aligned(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN


def convert_to_chunks(src: str | os.PathLike[str], dst: str | os.PathLike[str], chunk_size: int = 65536,
                      lod_levels: int = 0, lod_factor: int = 4, nonfinite: str = "error") -> ChunkFileInfo:
    """Load the scene ``src`` (any format ``data.load_scene`` reads), partition it into chunks of at most
    ``chunk_size`` Gaussians with ``lod_levels`` coarser levels, and write the chunk file ``dst``."""
    from .scene_io import load_scene

    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
    if not 0 <= lod_levels <= 8:
        raise ValueError(f"lod_levels: expected 0..8, got {lod_levels}")
    splats = load_scene(src, nonfinite=nonfinite)
    return write_chunk_file(dst, build_chunked_scene(splats, chunk_size, lod_levels, lod_factor))


# ----- reading -------------------------------------------------------------------------------------------------
class ChunkFile:
    """A chunk file opened for reading, memory-mapped; a chunk source for :class:`renderer.StreamingRenderer`.

    Metadata are CPU tensors indexed ``[chunk, level]``: ``counts`` (int64), ``aabb_min``/``aabb_max``
    ``[M, L, 3]``, ``centers`` ``[M, L, 3]``, ``radii`` and ``errors`` ``[M, L]`` (float32).

    Raises:
        SceneFormatError: missing file, wrong magic, another version, a checksum mismatch, truncation.
    """

    def __init__(self, path: str | os.PathLike[str], verify: bool = True) -> None:
        self.path = Path(path)
        self.verify_reads = verify
        size = self._file_size()
        head = self._read_header(size)
        _, _, _, m, nl, k, _, n, table_offset, _, table_crc, _ = head
        self.num_chunks, self.num_levels, self.sh_coeffs, self.num_gaussians = m, nl, k, n
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(size,)) if size else np.zeros(0, np.uint8)
        self.table = self._read_table(size, table_offset, table_crc)
        self._verified = np.zeros(m * nl, dtype=bool)
        t = self.table
        self.counts = torch.from_numpy(t["count"].astype(np.int64).reshape(m, nl))
        self.aabb_min = torch.from_numpy(t["aabb_min"].copy().reshape(m, nl, 3))
        self.aabb_max = torch.from_numpy(t["aabb_max"].copy().reshape(m, nl, 3))
        self.centers = torch.from_numpy(t["center"].copy().reshape(m, nl, 3))
        self.radii = torch.from_numpy(t["radius"].copy().reshape(m, nl))
        self.errors = torch.from_numpy(t["error"].copy().reshape(m, nl))
        largest = int(self.counts[:, 0].max()) if m else 0
        self.info = ChunkFileInfo(self.path, n, m, nl, k, size, largest * floats_per_gaussian(k) * 4)

    def _fail(self, problem: str) -> SceneFormatError:
        return SceneFormatError(self.path, problem)

    def _file_size(self) -> int:
        try:
            if self.path.is_dir():
                raise self._fail("is a directory, not a chunk file")
            return self.path.stat().st_size
        except FileNotFoundError:
            raise self._fail("file not found") from None
        except OSError as e:
            raise self._fail(f"cannot read the file: {e.strerror or e}") from None

    def _read_header(self, size: int) -> tuple:
        with open(self.path, "rb") as f:
            raw = f.read(HEADER_BYTES)
        if not raw.startswith(CHUNK_MAGIC):
            if CHUNK_MAGIC.startswith(raw):
                raise self._fail(f"truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
            raise self._fail(f"not a gscache chunk file (bad magic {raw[:8]!r}, expected {CHUNK_MAGIC!r})")
        if len(raw) < HEADER_BYTES:
            raise self._fail(f"truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
        head = _HEADER.unpack(raw)
        if head[1] != CHUNK_VERSION:
            raise self._fail(f"chunk file version {head[1]}, this gscache reads version {CHUNK_VERSION} "
                             "(convert the scene again with 'gscache convert --chunks')")
        if zlib.crc32(raw[:-4]) != head[-1]:
            raise self._fail("header checksum mismatch (the file is corrupt)")
        _, _, header_bytes, m, nl, k, _, _, table_offset, _, _, _ = head
        if header_bytes != HEADER_BYTES or nl < 1 or k not in SH_COEFFS_FOR_DEGREE.values():
            raise self._fail(f"malformed header (header_bytes={header_bytes}, levels={nl}, sh_coeffs={k})")
        if table_offset + m * nl * TABLE_DTYPE.itemsize > size:
            raise self._fail(f"truncated: the chunk table ends at byte {table_offset + m * nl * TABLE_DTYPE.itemsize}"
                             f", the file has {size} bytes")
        return head

    def _read_table(self, size: int, offset: int, crc: int) -> np.ndarray:
        nbytes = self.num_chunks * self.num_levels * TABLE_DTYPE.itemsize
        raw = bytes(self._map[offset:offset + nbytes])
        if zlib.crc32(raw) != crc:
            raise self._fail("chunk table checksum mismatch (the file is corrupt)")
        table = np.frombuffer(raw, dtype=TABLE_DTYPE)
        m, nl = self.num_chunks, self.num_levels
        expect_chunk = np.repeat(np.arange(m), nl)
        expect_level = np.tile(np.arange(nl), m)
        if not (np.array_equal(table["chunk"], expect_chunk) and np.array_equal(table["level"], expect_level)):
            raise self._fail("malformed chunk table (records out of chunk/level order)")
        ends = table["offset"].astype(np.int64) + table["count"].astype(np.int64) * floats_per_gaussian(
            self.sh_coeffs) * 4
        if len(table) and int(ends.max()) > size:
            bad = int(np.argmax(ends > size))
            raise self._fail(f"truncated: chunk {bad // nl} (level {bad % nl}) ends at byte {int(ends[bad])}, the "
                             f"file has {size} bytes")
        if m and int(table["count"].reshape(m, nl)[:, 0].sum()) != self.num_gaussians:
            raise self._fail("malformed: level-0 chunk counts do not add up to the header's Gaussian count")
        return table

    # ----- the chunk-source interface ----------------------------------------------------------------------------
    def entry_bytes(self, chunk: int, level: int = 0) -> int:
        """Size in bytes of the packed entry of ``chunk`` at ``level``."""
        return int(self.counts[chunk, level]) * floats_per_gaussian(self.sh_coeffs) * 4

    def read(self, chunk: int, level: int = 0) -> torch.Tensor:
        """The packed entry (``renderer.lod.pack_splats`` layout) of ``chunk`` at ``level``: a float32 CPU tensor
        ``[count * (11 + 3 K)]`` (a copy), its checksum checked on the first read when ``verify``."""
        if not (0 <= chunk < self.num_chunks and 0 <= level < self.num_levels):
            raise ValueError(f"chunk, level: expected 0..{self.num_chunks - 1}, 0..{self.num_levels - 1}, "
                             f"got {chunk}, {level}")
        i = chunk * self.num_levels + level
        start = int(self.table["offset"][i])
        raw = self._map[start:start + self.entry_bytes(chunk, level)]
        if self.verify_reads and not self._verified[i]:
            self._check(i, raw)
        return torch.from_numpy(np.array(raw.view("<f4"), dtype=np.float32))

    def entry_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """Byte offset in the file and size of every entry, chunk-major ``[M * L]`` (record ``c * L + l``)."""
        offsets = self.table["offset"].astype(np.int64)
        sizes = self.table["count"].astype(np.int64) * (floats_per_gaussian(self.sh_coeffs) * 4)
        return offsets, sizes

    def data_span(self) -> tuple[int, int]:
        """The byte range ``[start, end)`` of the file that holds every entry (header and table excluded)."""
        offsets, sizes = self.entry_spans()
        if not len(offsets):
            return HEADER_BYTES, HEADER_BYTES
        return int(offsets.min()), int((offsets + sizes).max())

    def read_span(self, out: np.ndarray, workers: int = 8, piece_bytes: int = 1 << 26) -> None:
        """Read :meth:`data_span` into ``out`` (uint8, exactly that many bytes; e.g. a pinned buffer's numpy view)
        with ``workers`` threads (``os.preadv``, no memory map in between); entry checksums are checked on the same
        threads when the file was opened with ``verify``.

        Raises:
            SceneFormatError: a checksum mismatch (naming the chunk), or the file shrank under us.
        """
        start, end = self.data_span()
        if out.dtype != np.uint8 or out.ndim != 1 or out.size != end - start:
            raise ValueError(f"out: expected a uint8 array of {end - start} bytes, got {out.dtype} {out.shape}")
        pieces = [(a, min(a + piece_bytes, end)) for a in range(start, end, piece_bytes)]
        with open(self.path, "rb") as f, ThreadPoolExecutor(max(1, workers)) as pool:
            fd = f.fileno()

            def read(piece: tuple[int, int]) -> None:
                a, b = piece
                view = memoryview(out[a - start:b - start])
                while view.nbytes:
                    got = os.preadv(fd, [view], a)
                    if got <= 0:
                        raise self._fail(f"truncated: reading bytes {a}..{b} returned nothing")
                    view, a = view[got:], a + got

            list(pool.map(read, pieces))
            if self.verify_reads:
                offsets, sizes = self.entry_spans()

                def check(i: int) -> None:
                    lo = int(offsets[i]) - start
                    self._check(i, out[lo:lo + int(sizes[i])])

                list(pool.map(check, range(len(offsets))))

    def _check(self, i: int, raw: np.ndarray) -> None:
        if zlib.crc32(raw) != int(self.table["crc"][i]):
            raise self._fail(f"chunk {i // self.num_levels} (level {i % self.num_levels}): checksum mismatch "
                             "(the file is corrupt)")
        self._verified[i] = True

    def chunk_splats(self, chunk: int, level: int = 0) -> Splats:
        """The Gaussians of ``chunk`` at ``level`` as float32 CPU :class:`Splats`."""
        return unpack_splats(self.read(chunk, level), int(self.counts[chunk, level]), self.sh_coeffs)

    def load_level(self, level: int = 0) -> Splats:
        """Every chunk at ``level`` as one :class:`Splats` in chunk order (level 0: the whole scene)."""
        parts = [self.chunk_splats(c, level) for c in range(self.num_chunks)]
        if not parts:
            return Splats.random(0, sh_degree=SH_DEGREE_OF[self.sh_coeffs])
        return Splats(*(torch.cat([getattr(p, f) for p in parts]) for f in
                        ("means", "quats", "log_scales", "opacity_logits", "sh")))

    def verify(self) -> None:
        """Check every entry's checksum now (raises :class:`SceneFormatError` naming the first bad chunk)."""
        for i in range(len(self.table)):
            start = int(self.table["offset"][i])
            self._check(i, self._map[start:start + self.entry_bytes(i // self.num_levels, i % self.num_levels)])


SH_DEGREE_OF = {k: d for d, k in SH_COEFFS_FOR_DEGREE.items()}


def open_chunk_file(path: str | os.PathLike[str], verify: bool = True) -> ChunkFile:
    """Open the chunk file at ``path`` (see :class:`ChunkFile`)."""
    return ChunkFile(path, verify=verify)


def is_chunk_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` starts with the chunk-file magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(CHUNK_MAGIC)) == CHUNK_MAGIC
    except OSError:
        return False
