"""A strict PLY header parser and a fast reader of binary PLY element data (plyfile for ASCII and lists).

Parsing the header ourselves lets every reader report precise errors (not a PLY, malformed header, truncated data)
and read fixed-size binary rows straight into numpy structured arrays.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ._common import read_file_bytes
from .errors import SceneFormatError

PLY_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
PLY_FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}
MAX_HEADER_BYTES = 1 << 16


class PlyProperty(NamedTuple):
    """One ``property`` line: its name, its PLY type, and for list properties the type of the length prefix."""

    name: str
    type: str
    list_count_type: str | None = None


class PlyElementSpec(NamedTuple):
    """One ``element`` line and its properties."""

    name: str
    count: int
    properties: tuple[PlyProperty, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.properties]

    @property
    def has_lists(self) -> bool:
        return any(p.list_count_type is not None for p in self.properties)

    def dtype(self, byte_order: str) -> np.dtype:
        """The structured row dtype of a binary element without list properties."""
        return np.dtype([(p.name, byte_order + PLY_TYPES[p.type]) for p in self.properties])


class PlyHeader(NamedTuple):
    """A parsed PLY header.

    Attributes:
        format: ``"ascii"``, ``"binary_little_endian"`` or ``"binary_big_endian"``.
        elements: the elements in file order.
        comments: the ``comment`` lines' text.
        size: bytes up to and including the newline after ``end_header``.
    """

    format: str
    elements: tuple[PlyElementSpec, ...]
    comments: tuple[str, ...]
    size: int

    def element(self, name: str) -> PlyElementSpec | None:
        return next((e for e in self.elements if e.name == name), None)


def read_ply_header(path: str | os.PathLike[str]) -> PlyHeader:
    """Parse the header of the PLY file at ``path`` or raise :class:`SceneFormatError`."""
    head = read_file_bytes(path, MAX_HEADER_BYTES)
    if not (head.startswith(b"ply\n") or head.startswith(b"ply\r\n")):
        raise SceneFormatError(path, f"not a PLY file (it starts with {head[:8]!r}, expected b'ply\\n')")
    end = head.find(b"end_header")
    newline = head.find(b"\n", end) if end >= 0 else -1
    if newline < 0:
        where = "the file" if len(head) < MAX_HEADER_BYTES else f"the first {MAX_HEADER_BYTES} bytes"
        raise SceneFormatError(path, f"malformed PLY header: no 'end_header' line in {where}")
    try:
        text = head[:newline].decode("ascii")
    except UnicodeDecodeError:
        raise SceneFormatError(path, "malformed PLY header: it is not ASCII text") from None
    return _parse_lines(path, text.splitlines()[1:], newline + 1)


def _parse_lines(path: str | os.PathLike[str], lines: list[str], size: int) -> PlyHeader:
    """Parse the header lines after ``ply`` up to and including ``end_header``."""
    fmt = None
    elements: list[tuple[str, int, list[PlyProperty]]] = []
    comments: list[str] = []
    for number, line in enumerate(lines, start=2):
        words = line.split()
        if not words or words[0] in ("obj_info",):
            continue
        if words[0] == "comment":
            comments.append(line.strip()[len("comment"):].strip())
        elif words[0] == "format":
            if len(words) != 3 or words[1] not in PLY_FORMATS or words[2] != "1.0":
                raise SceneFormatError(path, f"malformed PLY header: line {number} {line.strip()!r} "
                                             "is not a known format")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise SceneFormatError(path, f"malformed PLY header: line {number} {line.strip()!r} "
                                             "should be 'element NAME COUNT'")
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise SceneFormatError(path, f"malformed PLY header: line {number} has a property before any element")
            elements[-1][2].append(_parse_property(path, number, line, words))
        elif words[0] == "end_header":
            break
        else:
            raise SceneFormatError(path, f"malformed PLY header: line {number} {line.strip()!r} is not a header line")
    if fmt is None:
        raise SceneFormatError(path, "malformed PLY header: no 'format' line")
    specs = tuple(PlyElementSpec(name, count, tuple(props)) for name, count, props in elements)
    return PlyHeader(fmt, specs, tuple(comments), size)


def _parse_property(path: str | os.PathLike[str], number: int, line: str, words: list[str]) -> PlyProperty:
    if len(words) == 5 and words[1] == "list" and words[2] in PLY_TYPES and words[3] in PLY_TYPES:
        return PlyProperty(words[4], words[3], words[2])
    if len(words) == 3 and words[1] in PLY_TYPES:
        return PlyProperty(words[2], words[1])
    raise SceneFormatError(path, f"malformed PLY header: line {number} {line.strip()!r} is not a valid property "
                                 f"(known types: {', '.join(sorted(set(PLY_TYPES)))})")


def read_ply_elements(path: str | os.PathLike[str], header: PlyHeader) -> dict[str, np.ndarray]:
    """Every element's rows as a numpy structured array, by element name.

    Binary files without list properties are read with ``np.fromfile`` after checking that the file holds all the
    bytes the header promises; ASCII files and list properties go through plyfile.
    """
    if header.format == "ascii" or any(e.has_lists for e in header.elements):
        return _read_with_plyfile(path)
    order = PLY_FORMATS[header.format]
    dtypes = [e.dtype(order) for e in header.elements]
    needed = header.size + sum(e.count * dt.itemsize for e, dt in zip(header.elements, dtypes))
    actual = os.path.getsize(path)
    if actual < needed:
        detail = ", ".join(f"{e.count} x {dt.itemsize} B of '{e.name}'" for e, dt in zip(header.elements, dtypes))
        raise SceneFormatError(path, f"file is truncated: the header promises {needed} bytes "
                                     f"({header.size} B header + {detail}), the file has {actual}")
    out = {}
    with open(path, "rb") as f:
        f.seek(header.size)
        for e, dt in zip(header.elements, dtypes):
            out[e.name] = np.fromfile(f, dtype=dt, count=e.count)
    return out


def _read_with_plyfile(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    from plyfile import PlyData, PlyParseError

    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, ValueError, EOFError) as e:
        raise SceneFormatError(path, f"cannot parse PLY data: {e}") from None
    return {el.name: el.data for el in ply.elements}
