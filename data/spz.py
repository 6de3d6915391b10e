"""Niantic ``.spz`` (read only): versions 2 and 3 (gzip) and 4 (zstd streams).

Layout (all little-endian). Versions 2 and 3 are one gzip stream holding a 16-byte header and the payload::

    uint32 magic "NGSP" | uint32 version | uint32 N | uint8 sh_degree | uint8 fractional_bits | uint8 flags | uint8 0

Version 4 is not gzipped: a 32-byte header (the 16 bytes above with byte 15 = the number of streams S, then
uint32 offset of the table of contents, then 12 reserved bytes), a table of S ``(uint64 compressed size, uint64
uncompressed size)`` pairs, then S zstd frames, one per payload section.

Payload sections, in order, each for all N Gaussians:

- positions: 3 x 24-bit signed fixed point with ``fractional_bits`` fraction bits (9 bytes);
- alphas: ``sigmoid(opacity) * 255`` (1 byte; 0 and 255 are read as logits -+ln(509), not -+inf);
- colours: ``f_dc * 0.15 * 255 + 127.5`` (3 bytes; note 0.15, not SH_C0);
- scales: ``(log_scale + 10) * 16`` (3 bytes);
- rotations, quaternion x, y, z, w: version 2 stores x, y, z as ``(q + 1) * 127.5`` with w >= 0 derived
  (3 bytes); version 3 on stores the smallest three (4 bytes: 2 bits index of the largest, then per other
  component, lowest index first, a sign bit and 9 bits of magnitude in units of (1/sqrt2) / 511);
- SH: ``(coeff * 128 + 128)`` bytes, coefficient-major with RGB interleaved (``3 * (K - 1)`` bytes).

Coordinate frame: SPZ defines its frame as RUB (x right, y up, z back; OpenGL). gscache uses RDF (x right, y down,
z forward; OpenCV/COLMAP, as INRIA ``.ply``). ``read_spz`` therefore rotates the scene 180 degrees about x by
default: ``(x, y, z) -> (x, -y, -z)``, quaternion ``(w, x, y, z) -> (w, x, -y, -z)``, and each SH coefficient is
multiplied by the sign its basis function takes under y -> -y, z -> -z. Checked on PlayCanvas's biker: ``biker.spz``
read this way matches ``biker.compressed.ply`` (RDF). Older tools wrote SPZ files straight from INRIA ``.ply`` data
without converting (nianticlabs/spz issues #42, #84); read those with ``source_frame="rdf"``.

Not supported (clear error): version 1 (float16 positions), files with the extensions flag (0x2), SH degree 4.
Version 4 needs a zstd decoder: Python 3.14's ``compression.zstd`` or the ``zstandard`` package.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Literal, NamedTuple

import numpy as np

from renderer.splats import Splats

from ._common import LoadReport, SplatArrays, check_nonfinite_mode, finish_load, logit_from_byte, read_file_bytes
from .errors import SceneFormatError

SPZ_MAGIC = b"NGSP"
SPZ_COLOR_SCALE = 0.15
FLAG_ANTIALIASED = 0x1
FLAG_EXTENSIONS = 0x2
SourceFrame = Literal["rub", "rdf"]

# Parity of (x, y, z) in each real SH basis function after the DC term, in the 3DGS order; a diagonal flip
# (sx, sy, sz) multiplies coefficient k by sx^a * sy^b * sz^c.
SH_PARITY = np.array([
    [0, 1, 0], [0, 0, 1], [1, 0, 0],  # band 1: y, z, x
    [1, 1, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1], [0, 0, 0],  # band 2: xy, yz, 3z^2-1, xz, x^2-y^2
    [0, 1, 0], [1, 1, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0],  # band 3
])  # fmt: skip


class SpzHeader(NamedTuple):
    """The fields of an SPZ header that decoding needs."""

    version: int
    count: int
    sh_degree: int
    fractional_bits: int
    flags: int


class SpzSections(NamedTuple):
    """The raw payload sections as byte arrays, ``[N, bytes per Gaussian]`` each."""

    positions: np.ndarray  # [N, 9]
    alphas: np.ndarray  # [N]
    colors: np.ndarray  # [N, 3]
    scales: np.ndarray  # [N, 3]
    rotations: np.ndarray  # [N, 3] (v2) or [N, 4]
    sh: np.ndarray  # [N, 3 * (K - 1)]


def read_spz(path: str | os.PathLike[str], nonfinite: str = "error", source_frame: SourceFrame = "rub") -> Splats:
    """Read a Niantic ``.spz`` file into float32 CPU :class:`Splats` in gscache's RDF frame (y down).

    Args:
        path: the file.
        nonfinite: ``"error"`` or ``"drop"`` (SPZ values are quantised, so NaN/Inf cannot occur in practice).
        source_frame: ``"rub"`` (the SPZ specification, default) converts to RDF; ``"rdf"`` keeps the stored
            coordinates, for files written without the conversion.

    Raises:
        SceneFormatError: missing or truncated file, bad magic, unsupported version, flags or SH degree.
    """
    return read_spz_report(path, nonfinite, source_frame).splats


def read_spz_report(
    path: str | os.PathLike[str], nonfinite: str = "error", source_frame: SourceFrame = "rub"
) -> LoadReport:
    """:func:`read_spz`, also returning how many Gaussians were dropped for NaN/Inf values."""
    check_nonfinite_mode(nonfinite)
    if source_frame not in ("rub", "rdf"):
        raise ValueError(f"source_frame: expected 'rub' or 'rdf', got {source_frame!r}")
    header, sections = _read_sections(path, read_file_bytes(path))
    arrays = _decode(header, sections)
    if source_frame == "rub":
        arrays = _flip_yz(arrays)
    return finish_load(path, arrays, {"positions": arrays.means}, nonfinite)


def parse_spz_header(path: str | os.PathLike[str], data: bytes) -> SpzHeader:
    """Parse and check the first 16 bytes of an (uncompressed) SPZ header."""
    if len(data) < 16:
        raise SceneFormatError(path, f"file is truncated: {len(data)} bytes, an SPZ header needs 16")
    if data[:4] != SPZ_MAGIC:
        raise SceneFormatError(path, f"not an SPZ file (magic {data[:4]!r}, expected {SPZ_MAGIC!r})")
    version, count = (int(v) for v in np.frombuffer(data, "<u4", 2, 4))
    header = SpzHeader(version, count, data[12], data[13], data[14])
    if version not in (2, 3, 4):
        raise SceneFormatError(path, f"SPZ version {version} is not supported (supported: 2, 3, 4)")
    if header.flags & FLAG_EXTENSIONS:
        raise SceneFormatError(path, "SPZ extensions (flag 0x2) are not supported")
    if header.sh_degree > 3:
        raise SceneFormatError(path, f"SPZ SH degree {header.sh_degree} is not supported (expected 0..3)")
    return header


def _section_sizes(header: SpzHeader) -> list[int]:
    """Bytes per Gaussian of each payload section."""
    k1 = (header.sh_degree + 1) ** 2 - 1
    return [9, 1, 3, 3, 3 if header.version == 2 else 4, 3 * k1]


def _read_sections(path: str | os.PathLike[str], data: bytes) -> tuple[SpzHeader, SpzSections]:
    """Split the file into its header and payload sections (gunzip or zstd as the version needs)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise SceneFormatError(path, f"corrupt or truncated gzip stream: {e}") from None
        header = parse_spz_header(path, data)
        if header.version == 4:
            raise SceneFormatError(path, "SPZ version 4 inside gzip is not a known layout")
        blobs = _split_v2(path, header, data[16:])
    else:
        header = parse_spz_header(path, data)
        blobs = _split_v4(path, header, data) if header.version == 4 else _split_v2(path, header, data[16:])
    n = header.count
    arrays = [np.frombuffer(b, dtype=np.uint8).reshape(n, size) for b, size in zip(blobs, _section_sizes(header))]
    arrays[1] = arrays[1][:, 0]
    return header, SpzSections(*arrays)


def _split_v2(path: str | os.PathLike[str], header: SpzHeader, payload: bytes) -> list[bytes]:
    """The payload sections of a version 2/3 file (the bytes after the 16-byte header)."""
    sizes = [header.count * s for s in _section_sizes(header)]
    if len(payload) < sum(sizes):
        raise SceneFormatError(path, f"file is truncated: the header promises {header.count} Gaussians "
                                     f"({sum(sizes)} bytes of payload), the payload has {len(payload)}")
    offsets = np.cumsum([0] + sizes)
    return [payload[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]


def _split_v4(path: str | os.PathLike[str], header: SpzHeader, data: bytes) -> list[bytes]:
    """The decompressed payload sections of a version 4 file."""
    if len(data) < 32:
        raise SceneFormatError(path, f"file is truncated: {len(data)} bytes, an SPZ v4 header needs 32")
    num_streams, toc_offset = data[15], int(np.frombuffer(data, "<u4", 1, 16)[0])
    sizes = [header.count * s for s in _section_sizes(header)]
    expected_streams = 6 if header.sh_degree > 0 else 5
    if num_streams != expected_streams:
        raise SceneFormatError(path, f"SPZ v4 has {num_streams} streams, expected {expected_streams} "
                                     f"for SH degree {header.sh_degree}")
    if len(data) < toc_offset + 16 * num_streams:
        raise SceneFormatError(path, "file is truncated inside the SPZ v4 table of contents")
    toc = np.frombuffer(data, "<u8", 2 * num_streams, toc_offset).reshape(num_streams, 2).astype(np.int64)
    start = toc_offset + 16 * num_streams
    if len(data) < start + int(toc[:, 0].sum()):
        raise SceneFormatError(path, f"file is truncated: the SPZ v4 table of contents promises "
                                     f"{start + int(toc[:, 0].sum())} bytes, the file has {len(data)}")
    decompress = _zstd_decompressor(path)
    blobs = []
    for (compressed, uncompressed), size in zip(toc.tolist(), sizes[:num_streams]):
        if uncompressed != size:
            raise SceneFormatError(path, f"SPZ v4 stream {len(blobs)} holds {uncompressed} bytes, expected {size}")
        blob = decompress(data[start : start + compressed], size)
        if len(blob) != size:
            raise SceneFormatError(path, f"SPZ v4 stream {len(blobs)} decompressed to {len(blob)} bytes, "
                                         f"expected {size}")
        blobs.append(blob)
        start += compressed
    return blobs + [b""] * (6 - len(blobs))


def _zstd_decompressor(path: str | os.PathLike[str]):
    """A function ``(frame bytes, size) -> bytes``, from ``compression.zstd`` (3.14+) or ``zstandard``."""
    try:
        from compression import zstd  # type: ignore[import-not-found]

        def decompress(frame: bytes, size: int) -> bytes:
            return zstd.decompress(frame)

        error: type[Exception] = zstd.ZstdError
    except ImportError:
        try:
            import zstandard
        except ImportError:
            raise SceneFormatError(path, "SPZ version 4 is zstd-compressed: install the 'zstandard' package "
                                         "(or use Python 3.14+) to read it") from None

        def decompress(frame: bytes, size: int) -> bytes:
            return zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)

        error = zstandard.ZstdError

    def checked(frame: bytes, size: int) -> bytes:
        try:
            return decompress(frame, size)
        except error as e:
            raise SceneFormatError(path, f"corrupt zstd stream: {e}") from None

    return checked


def _decode(header: SpzHeader, s: SpzSections) -> SplatArrays:
    """Dequantise the payload sections (stored frame, quaternions reordered to w, x, y, z)."""
    n = header.count
    p = s.positions.reshape(n, 3, 3).astype(np.int32)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = (fixed ^ 0x800000) - 0x800000  # sign-extend 24 bits
    means = fixed.astype(np.float64) / float(1 << header.fractional_bits)
    xyzw = _rotation_v2(s.rotations) if header.version == 2 else _rotation_smallest_three(s.rotations)
    dc = (s.colors / 255.0 - 0.5) / SPZ_COLOR_SCALE
    rest = (s.sh.reshape(n, -1, 3).astype(np.float64) - 128.0) / 128.0  # coefficient-major already
    return SplatArrays(
        means=means.astype(np.float32),
        quats=xyzw[:, [3, 0, 1, 2]].astype(np.float32),
        log_scales=(s.scales / 16.0 - 10.0).astype(np.float32),
        opacity_logits=logit_from_byte(s.alphas).astype(np.float32),
        sh=np.concatenate([dc[:, None, :], rest], axis=1).astype(np.float32),
    )


def _rotation_v2(r: np.ndarray) -> np.ndarray:
    """Quaternions x, y, z, w ``[N, 4]`` from version 2's three bytes ``[N, 3]`` (w >= 0 derived)."""
    xyz = r / 127.5 - 1.0
    w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(axis=1)))
    return np.concatenate([xyz, w[:, None]], axis=1)


def _rotation_smallest_three(r: np.ndarray) -> np.ndarray:
    """Quaternions x, y, z, w ``[N, 4]`` from version 3's smallest-three words ``[N, 4]`` bytes."""
    comp = np.ascontiguousarray(r).view("<u4")[:, 0].astype(np.uint32)
    words = np.stack([(comp >> shift) & 0x3FF for shift in (20, 10, 0)], axis=1)  # lowest index first
    small = np.sqrt(0.5) * (words & 0x1FF) / 511.0
    small = np.where(words & 0x200, -small, small)
    which = (comp >> 30).astype(np.int64)
    slots = np.arange(3)[None, :]
    others = slots + (slots >= which[:, None])
    out = np.empty((len(comp), 4), dtype=np.float64)
    out[np.arange(len(comp))[:, None], others] = small
    out[np.arange(len(comp)), which] = np.sqrt(np.maximum(0.0, 1.0 - (small * small).sum(axis=1)))
    return out


def _flip_yz(a: SplatArrays) -> SplatArrays:
    """Rotate a scene 180 degrees about x (RUB <-> RDF): positions, quaternions w, x, y, z and SH signs."""
    flip = np.array([1.0, -1.0, -1.0], dtype=np.float32)
    k1 = a.sh.shape[1] - 1
    signs = np.prod(np.where(SH_PARITY[:k1] == 1, flip, 1.0), axis=1).astype(np.float32)  # [K-1]
    sh = a.sh.copy()
    sh[:, 1:, :] *= signs[None, :, None]
    quats = a.quats * np.array([1.0, 1.0, -1.0, -1.0], dtype=np.float32)
    return SplatArrays(a.means * flip, quats, a.log_scales, a.opacity_logits, sh)
