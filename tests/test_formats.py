"""Scene files: INRIA .ply, PlayCanvas .compressed.ply, antimatter15 .splat, Niantic .spz, and scene_io.

Fixtures are in assets/fixtures (see its SOURCE.md for how they were made and the values asserted here).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from data import (
    SceneFormatError,
    SceneInfo,
    convert_scene,
    detect_format,
    load_scene,
    load_scene_report,
    read_compressed_ply,
    read_ply,
    read_splat,
    read_spz,
    save_scene,
    scene_info,
    scene_io,
    write_ply,
    write_splat,
)
from data._common import splat_arrays
from data.ply import inria_property_names
from data.splat_format import splat_bytes
from data.spz import _flip_yz, _read_sections
from renderer._torch_impl import _eval_sh
from renderer.splats import SH_C0, Splats

FIX = Path(__file__).resolve().parents[1] / "assets" / "fixtures"
GUITAR_2K = FIX / "guitar_2k.ply"
LN509 = math.log(509.0)


# ----- helpers ---------------------------------------------------------------------------------------------------
def assert_bit_exact(a: Splats, b: Splats) -> None:
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == torch.float32, name
        assert torch.equal(x.view(torch.int32), y.view(torch.int32)), f"{name} differs"


def write_hand_ply(
    path: Path, columns: dict[str, np.ndarray], types: dict[str, str] | None = None, fmt: str = "binary_little_endian"
) -> Path:
    """A PLY with one element 'vertex' holding ``columns`` in the given order (float unless ``types`` says)."""
    types = types or {}
    n = len(next(iter(columns.values()))) if columns else 0
    order = ">" if fmt == "binary_big_endian" else "<"
    np_types = {"float": order + "f4", "double": order + "f8", "uchar": "u1", "int": order + "i4"}
    props = "".join(f"property {types.get(k, 'float')} {k}\n" for k in columns)
    header = f"ply\nformat {fmt} 1.0\nelement vertex {n}\n{props}end_header\n".encode()
    if fmt == "ascii":
        body = "".join(" ".join(repr(float(columns[k][i])) for k in columns) + "\n" for i in range(n)).encode()
    else:
        rows = np.empty(n, dtype=[(k, np_types[types.get(k, "float")]) for k in columns])
        for k, v in columns.items():
            rows[k] = v
        body = rows.tobytes()
    path.write_bytes(header + body)
    return path


def inria_columns(splats: Splats, tmp_path: Path) -> dict[str, np.ndarray]:
    """The scene's INRIA columns by property name (written by write_ply, read back with plyfile)."""
    from plyfile import PlyData

    write_ply(tmp_path / "cols.ply", splats)
    v = PlyData.read(str(tmp_path / "cols.ply"))["vertex"].data
    return {name: np.asarray(v[name]) for name in v.dtype.names}


def unit_quat_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Largest per-row component difference of unit quaternions, up to sign ``[N]``."""
    qa, qb = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    return torch.minimum((qa - qb).abs().amax(-1), (qa + qb).abs().amax(-1))


# ----- SceneFormatError ------------------------------------------------------------------------------------------
def test_error_message_is_one_line_naming_the_file(tmp_path: Path) -> None:
    e = SceneFormatError(tmp_path / "guitar.ply", "property 'opacity' missing\nfrom element 'vertex'")
    assert str(e) == "guitar.ply: property 'opacity' missing from element 'vertex'"
    assert isinstance(e, ValueError) and e.path == tmp_path / "guitar.ply"


# ----- INRIA .ply ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip_is_bit_exact(tmp_path: Path, degree: int) -> None:
    scene = Splats.random(300, sh_degree=degree, seed=degree)
    write_ply(tmp_path / "s.ply", scene)
    back = read_ply(tmp_path / "s.ply")
    assert back.sh_degree == degree
    assert_bit_exact(scene, back)


@pytest.mark.parametrize("degree", [0, 3])
def test_ply_writer_uses_the_exact_inria_header(tmp_path: Path, degree: int) -> None:
    write_ply(tmp_path / "s.ply", Splats.random(7, sh_degree=degree))
    data = (tmp_path / "s.ply").read_bytes()
    header = data[: data.index(b"end_header\n") + len(b"end_header\n")].decode()
    props = "".join(f"property float {n}\n" for n in inria_property_names(degree))
    assert header == f"ply\nformat binary_little_endian 1.0\nelement vertex 7\n{props}end_header\n"
    rest = 3 * ((degree + 1) ** 2 - 1)
    assert len(inria_property_names(degree)) == 17 + rest
    assert len(data) == len(header) + 7 * 4 * (17 + rest)
    values = np.frombuffer(data[len(header) :], "<f4").reshape(7, -1)
    assert not values[:, 3:6].any(), "normals are written as zeros"


def test_ply_channel_major_layout_against_a_hand_built_file(tmp_path: Path) -> None:
    # SH degree 1: f_rest_{c*3 + (k-1)} holds sh[:, k, c]
    cols = {n: np.zeros(2, np.float32) for n in inria_property_names(1)}
    for i in range(9):
        cols[f"f_rest_{i}"] = np.array([100 + i, 200 + i], np.float32)
    cols["rot_0"] = np.ones(2, np.float32)
    s = read_ply(write_hand_ply(tmp_path / "hand.ply", cols))
    expected = torch.tensor([[100.0, 103.0, 106.0], [101.0, 104.0, 107.0], [102.0, 105.0, 108.0]])
    assert torch.equal(s.sh[0, 1:], expected)  # [K-1, 3], coefficient-major in memory
    assert torch.equal(s.sh[1, 1:], expected + 100)
    write_ply(tmp_path / "again.ply", s)
    assert (tmp_path / "again.ply").read_bytes() == (tmp_path / "hand.ply").read_bytes()


def test_ply_properties_found_by_name_and_f_rest_sorted_numerically(tmp_path: Path) -> None:
    scene = Splats.random(50, sh_degree=3, seed=5)
    cols = inria_columns(scene, tmp_path)
    names = list(cols)
    names.sort(key=lambda n: n.replace("f_rest_", "f_rest_~"))  # string order: f_rest_10 before f_rest_2
    assert names.index("f_rest_10") < names.index("f_rest_2")
    np.random.default_rng(1).shuffle(names)
    shuffled = write_hand_ply(tmp_path / "shuffled.ply", {n: cols[n] for n in names})
    assert_bit_exact(scene, read_ply(shuffled))


def test_ply_without_normals_doubles_ascii_big_endian(tmp_path: Path) -> None:
    scene = Splats.random(20, sh_degree=1, seed=2)
    cols = {k: v for k, v in inria_columns(scene, tmp_path).items() if k not in ("nx", "ny", "nz")}
    assert_bit_exact(scene, read_ply(write_hand_ply(tmp_path / "no_normals.ply", cols)))
    doubles = write_hand_ply(tmp_path / "doubles.ply", cols, types=dict.fromkeys(cols, "double"))
    assert_bit_exact(scene, read_ply(doubles))
    assert_bit_exact(scene, read_ply(write_hand_ply(tmp_path / "ascii.ply", cols, fmt="ascii")))
    assert_bit_exact(scene, read_ply(write_hand_ply(tmp_path / "big.ply", cols, fmt="binary_big_endian")))


def test_ply_empty_scene_is_allowed(tmp_path: Path) -> None:
    write_ply(tmp_path / "empty.ply", Splats.random(0, sh_degree=2))
    s = read_ply(tmp_path / "empty.ply")
    assert len(s) == 0 and s.sh_degree == 2 and s.dtype == torch.float32


def test_ply_guitar_fixture_known_values() -> None:
    s = read_ply(GUITAR_2K)
    assert len(s) == 2000 and s.sh_degree == 0 and s.device.type == "cpu"
    low, high = s.bounds()
    assert low.tolist() == pytest.approx([-0.6075342, -4.2835855, -0.5144865], abs=1e-6)
    assert high.tolist() == pytest.approx([0.7695329, 0.0860915, 0.9009417], abs=1e-6)
    assert s.means[0].tolist() == pytest.approx([-0.47249085, -4.0782046, -0.1663459], abs=1e-6)
    assert s.log_scales[0].tolist() == pytest.approx([-8.798642, -5.232893, -5.7257104], abs=1e-5)
    assert s.quats[0].tolist() == pytest.approx([0.79510754, 0.57715946, -0.046311002, -0.18040554], abs=1e-6)
    assert s.opacity_logits[0].item() == pytest.approx(0.7646061, abs=1e-6)
    assert s.sh[0, 0].tolist() == pytest.approx([0.1326713, -0.8460118, -1.5064528], abs=1e-6)


def test_ply_sh3_fixture_is_the_guitar_subset_with_added_bands() -> None:
    base, sh3 = read_ply(GUITAR_2K), read_ply(FIX / "guitar_1k_sh3.ply")
    assert len(sh3) == 1000 and sh3.sh_degree == 3
    half = base.subset(slice(None, None, 2))
    for name in ("means", "quats", "log_scales", "opacity_logits"):
        assert torch.equal(getattr(sh3, name), getattr(half, name)), name
    assert torch.equal(sh3.sh[:, 0], half.sh[:, 0])
    g = torch.Generator().manual_seed(1234)
    assert torch.equal(sh3.sh[:, 1:], torch.randn((1000, 15, 3), generator=g) * 0.1)


def test_ply_reads_a_large_scene_fast(tmp_path: Path) -> None:
    write_ply(tmp_path / "big.ply", Splats.random(90_000, sh_degree=0))
    start = time.perf_counter()
    assert len(read_ply(tmp_path / "big.ply")) == 90_000
    assert time.perf_counter() - start < 2.0  # about 0.05 s on a 2-core CI machine


# ----- INRIA .ply: bad input -------------------------------------------------------------------------------------
def test_ply_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SceneFormatError, match=r"^nothere\.ply: file not found$"):
        read_ply(tmp_path / "nothere.ply")


def test_ply_truncated_file(tmp_path: Path) -> None:
    data = GUITAR_2K.read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[: len(data) - 1000])
    with pytest.raises(SceneFormatError, match=r"cut\.ply: file is truncated: the header promises 136414 bytes .* "
                                               r"the file has 135414"):  # fmt: skip
        read_ply(tmp_path / "cut.ply")
    (tmp_path / "header_only.ply").write_bytes(data[:200])
    with pytest.raises(SceneFormatError, match="no 'end_header' line in the file"):
        read_ply(tmp_path / "header_only.ply")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("format binary_little_endian 2.0\nelement vertex 0\n", "line 2 'format binary_little_endian 2.0' is not"),
        ("format binary_little_endian 1.0\nelement vertex many\n", "line 3 'element vertex many' should be 'element"),
        ("format binary_little_endian 1.0\nelement vertex 0\nproperty float128 x\n", "is not a valid property"),
        ("format binary_little_endian 1.0\nproperty float x\n", "has a property before any element"),
        ("element vertex 0\n", "no 'format' line"),
        ("format ascii 1.0\nelement vertex 0\nbogus line\n", "line 4 'bogus line' is not a header line"),
    ],
)
def test_ply_malformed_header(tmp_path: Path, header: str, message: str) -> None:
    (tmp_path / "bad.ply").write_bytes(f"ply\n{header}end_header\n".encode())
    with pytest.raises(SceneFormatError, match=r"bad\.ply: malformed PLY header: .*" + re.escape(message)):
        read_ply(tmp_path / "bad.ply")


def test_ply_not_a_ply(tmp_path: Path) -> None:
    (tmp_path / "fake.ply").write_bytes(b"solid cube\nfacet normal 0 0 1\n")
    with pytest.raises(SceneFormatError, match=r"fake\.ply: not a PLY file \(it starts with b'solid cu'"):
        read_ply(tmp_path / "fake.ply")


def test_ply_missing_and_unknown_properties(tmp_path: Path) -> None:
    cols = {n: np.zeros(3, np.float32) for n in inria_property_names(0)}
    no_opacity = {k: v for k, v in cols.items() if k != "opacity"}
    with pytest.raises(SceneFormatError, match=r"^a\.ply: property 'opacity' missing from element 'vertex'$"):
        read_ply(write_hand_ply(tmp_path / "a.ply", no_opacity))
    no_rot = {k: v for k, v in cols.items() if not k.startswith("rot")}
    with pytest.raises(SceneFormatError, match=r"property 'rot_0' missing from element 'vertex' \(and 3 more\)"):
        read_ply(write_hand_ply(tmp_path / "b.ply", no_rot))
    with pytest.raises(SceneFormatError, match=r"unexpected property 'scale_3' in element 'vertex' \(the INRIA layout "
                                               r"has scale_0\.\.scale_2\)"):  # fmt: skip
        read_ply(write_hand_ply(tmp_path / "c.ply", {**cols, "scale_3": np.zeros(3, np.float32)}))
    point_cloud = {"x": np.zeros(3), "y": np.zeros(3), "z": np.zeros(3), "red": np.zeros(3)}
    with pytest.raises(SceneFormatError, match="property 'f_dc_0' missing from element 'vertex'"):
        read_ply(write_hand_ply(tmp_path / "d.ply", point_cloud, types={"red": "uchar"}))
    (tmp_path / "e.ply").write_bytes(b"ply\nformat ascii 1.0\nelement face 0\nproperty float q\nend_header\n")
    with pytest.raises(SceneFormatError, match=r"no element 'vertex' in the PLY header \(elements: 'face'\)"):
        read_ply(tmp_path / "e.ply")


@pytest.mark.parametrize(("count", "skip", "message"), [
    (10, None, "element 'vertex' has 10 f_rest properties, expected 0, 9, 24 or 45 (SH degree 0..3)"),
    (3, None, "element 'vertex' has 3 f_rest properties, expected 0, 9, 24 or 45"),
    (10, 8, "f_rest properties must be numbered f_rest_0..f_rest_8, f_rest_8 is missing"),
])  # fmt: skip
def test_ply_wrong_f_rest_count(tmp_path: Path, count: int, skip: int | None, message: str) -> None:
    cols = {n: np.zeros(2, np.float32) for n in inria_property_names(0)}
    cols.update({f"f_rest_{i}": np.zeros(2, np.float32) for i in range(count) if i != skip})
    with pytest.raises(SceneFormatError, match=re.escape(message)):
        read_ply(write_hand_ply(tmp_path / "rest.ply", cols))


def test_ply_nonfinite_values_error_or_drop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scene = Splats.random(10, sh_degree=1, seed=3)
    cols = inria_columns(scene, tmp_path)
    cols["x"][2] = np.nan
    cols["opacity"][5] = np.inf
    cols["f_rest_4"][5] = -np.inf
    path = write_hand_ply(tmp_path / "nan.ply", cols)
    message = "nan.ply: 2 of 10 Gaussians have NaN/Inf values (in x, f_rest_4, opacity); load with nonfinite='drop'"
    with pytest.raises(SceneFormatError, match=re.escape(message)):
        read_ply(path)
    with caplog.at_level(logging.WARNING, logger="data"):
        kept = read_ply(path, nonfinite="drop")
    assert "nan.ply: dropped 2 of 10 Gaussians with NaN/Inf values" in caplog.text
    keep = torch.tensor([i not in (2, 5) for i in range(10)])
    assert_bit_exact(kept, scene.subset(keep))
    with pytest.raises(ValueError, match="nonfinite: expected 'error' or 'drop', got 'skip'"):
        read_ply(path, nonfinite="skip")


def test_ply_reader_refuses_a_compressed_ply() -> None:
    with pytest.raises(SceneFormatError, match="is a PlayCanvas compressed PLY, not the INRIA layout"):
        read_ply(FIX / "guitar_8chunks.compressed.ply")


# ----- PlayCanvas .compressed.ply --------------------------------------------------------------------------------
def guitar_rows_in_compressed_cut() -> tuple[np.ndarray, np.ndarray]:
    """(rows of guitar_2k.ply, rows of guitar_8chunks.compressed.ply) that are the same Gaussians of guitar.ply."""
    subset_src = np.linspace(0, 90853, 2000).round().astype(np.int64)
    chunks = [0, 51, 101, 152, 202, 253, 303, 354]
    cut_src = np.concatenate([np.arange(c * 256, min((c + 1) * 256, 90854)) for c in chunks])
    common, in_subset, in_cut = np.intersect1d(subset_src, cut_src, return_indices=True)
    return in_subset, in_cut


def test_compressed_fixture_known_values() -> None:
    s = read_compressed_ply(FIX / "guitar_8chunks.compressed.ply")
    assert len(s) == 2022 and s.sh_degree == 0
    low, high = s.bounds()
    assert low.tolist() == pytest.approx([-0.5394077, -4.2714682, -0.2541015], abs=1e-6)
    assert high.tolist() == pytest.approx([0.6168979, 0.0788909, 0.7538047], abs=1e-6)
    assert torch.allclose(s.unit_quats().norm(dim=1), torch.ones(2022), atol=1e-6)


def test_compressed_decode_matches_the_inria_subset_of_the_same_gaussians() -> None:
    inria, comp = read_ply(GUITAR_2K), read_compressed_ply(FIX / "guitar_8chunks.compressed.ply")
    in_subset, in_cut = guitar_rows_in_compressed_cut()
    assert len(in_subset) == 45
    a, b = inria.subset(torch.from_numpy(in_subset)), comp.subset(torch.from_numpy(in_cut))
    # guitar.ply is splat-transform's float decode of the same file: equal far inside the quantisation step
    assert torch.allclose(a.means, b.means, atol=1e-6)
    assert torch.allclose(a.log_scales, b.log_scales, atol=1e-5)
    assert torch.allclose(a.opacity_logits, b.opacity_logits, atol=1e-5)
    assert torch.allclose(a.sh, b.sh, atol=1e-5)
    assert unit_quat_distance(a.quats, b.quats).max() < 1e-6


def write_compressed(path: Path, chunk: dict[str, list[float]], vertex: dict[str, list[int]],
                     sh: dict[str, list[int]] | None = None, chunk_count: int | None = None) -> Path:  # fmt: skip
    n = len(vertex["packed_position"])
    parts = [("chunk", chunk, "float", "<f4", chunk_count or -(-n // 256)), ("vertex", vertex, "uint", "<u4", n)]
    if sh:
        parts.append(("sh", sh, "uchar", "u1", n))
    header, body = "ply\nformat binary_little_endian 1.0\n", b""
    for name, cols, ptype, dtype, count in parts:
        header += f"element {name} {count}\n" + "".join(f"property {ptype} {k}\n" for k in cols)
        rows = np.zeros(count, dtype=[(k, dtype) for k in cols])
        for k, v in cols.items():
            rows[k] = v
        body += rows.tobytes()
    path.write_bytes((header + "end_header\n").encode() + body)
    return path


def hand_chunk(colors: bool) -> dict[str, list[float]]:
    chunk = {"min_x": [-1.0], "min_y": [0.0], "min_z": [2.0], "max_x": [1.0], "max_y": [4.0], "max_z": [3.0],
             "min_scale_x": [-5.0], "min_scale_y": [-5.0], "min_scale_z": [-5.0],
             "max_scale_x": [-1.0], "max_scale_y": [-1.0], "max_scale_z": [-1.0]}  # fmt: skip
    if colors:
        chunk.update({"min_r": [0.0], "min_g": [0.0], "min_b": [0.0], "max_r": [2.0], "max_g": [1.0], "max_b": [0.5]})
    return chunk


def test_compressed_decode_of_a_hand_built_file(tmp_path: Path) -> None:
    # position bits 2047/1023/0: max x, max y, min z; rotation: index 1 largest (x), others at mid = 0
    mid = (512 << 20) | (512 << 10) | 512
    vertex = {"packed_position": [(2047 << 21) | (1023 << 11), 0], "packed_rotation": [(1 << 30) | mid, mid],
              "packed_scale": [0, 0xFFFFFFFF], "packed_color": [0xFF00FFFF, 0x80808000]}  # fmt: skip
    sh = {f"f_rest_{i}": [0, 255] if i == 0 else [128, 128] for i in range(9)}
    s = read_compressed_ply(write_compressed(tmp_path / "hand.compressed.ply", hand_chunk(True), vertex, sh))
    assert s.means.tolist() == [[1.0, 4.0, 2.0], [-1.0, 0.0, 2.0]]
    assert s.log_scales.tolist() == [[-5.0] * 3, [-1.0] * 3]
    assert s.unit_quats()[0].tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0], abs=2e-3)
    assert s.unit_quats()[1].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=2e-3)
    assert s.opacity_logits.tolist() == pytest.approx([LN509, -LN509], abs=1e-5)  # alpha bytes 255 and 0
    rgb = 0.5 + SH_C0 * s.sh[:, 0]  # the stored value is the base colour, lerped in the chunk's colour range
    assert rgb[0].tolist() == pytest.approx([2.0, 0.0, 0.5], abs=1e-6)
    assert rgb[1].tolist() == pytest.approx([2 * 128 / 255, 128 / 255, 0.5 * 128 / 255], abs=1e-6)
    assert s.sh_degree == 1 and s.sh[:, 1, 0].tolist() == [-4.0, 4.0]  # f_rest_0 = sh[:, 1, R]; bytes 0, 255
    assert s.sh[0, 2, 0].item() == pytest.approx((128.5 / 256 - 0.5) * 8)
    no_colors = write_compressed(tmp_path / "plain.compressed.ply", hand_chunk(False), vertex)
    rgb = 0.5 + SH_C0 * read_compressed_ply(no_colors).sh[:, 0]
    assert rgb[0].tolist() == pytest.approx([1.0, 0.0, 1.0], abs=1e-6)  # without chunk colours: byte / 255


def test_compressed_bad_chunk_count_and_missing_property(tmp_path: Path) -> None:
    vertex = {k: [0] for k in ("packed_position", "packed_rotation", "packed_scale", "packed_color")}
    bad = write_compressed(tmp_path / "bad.compressed.ply", hand_chunk(True), vertex, chunk_count=2)
    with pytest.raises(SceneFormatError, match=re.escape("element 'chunk' has 2 rows, expected ceil(1 / 256) = 1")):
        read_compressed_ply(bad)
    del vertex["packed_scale"]
    with pytest.raises(SceneFormatError, match="property 'packed_scale' missing from element 'vertex'"):
        read_compressed_ply(write_compressed(tmp_path / "m.compressed.ply", hand_chunk(True), vertex))
    with pytest.raises(SceneFormatError, match="compressed PLY has no element 'chunk'"):
        read_compressed_ply(GUITAR_2K)


def test_compressed_truncated(tmp_path: Path) -> None:
    data = (FIX / "guitar_8chunks.compressed.ply").read_bytes()
    (tmp_path / "cut.compressed.ply").write_bytes(data[:-16])
    with pytest.raises(SceneFormatError, match=r"file is truncated: .* 8 x 72 B of 'chunk', 2022 x 16 B of 'vertex'"):
        read_compressed_ply(tmp_path / "cut.compressed.ply")


# ----- antimatter15 .splat ---------------------------------------------------------------------------------------
def test_splat_fixture_known_values() -> None:
    s, ref = read_splat(FIX / "guitar_2k.splat"), read_ply(GUITAR_2K)
    assert len(s) == 2000 and s.sh_degree == 0
    assert [t.tolist() for t in s.bounds()] == [t.tolist() for t in ref.bounds()]  # float32 positions, exact
    assert s.means[0].tolist() == pytest.approx([0.37659234, -0.611085, 0.10972084], abs=1e-7)
    assert s.quats[0].tolist() == [(242 - 128) / 128, (162 - 128) / 128, (98 - 128) / 128, (94 - 128) / 128]
    # antimatter15's order: big and opaque first (up to float rounding between near-equal neighbours)
    where = {tuple(m): i for i, m in enumerate(ref.means.tolist())}
    order = torch.tensor([where[tuple(m)] for m in s.means.tolist()])
    assert sorted(order.tolist()) == list(range(2000))
    importance = ref.log_scales.double().sum(dim=1).exp() * torch.sigmoid(ref.opacity_logits.double())
    assert (importance[order][1:] <= importance[order][:-1] * (1 + 1e-6)).all()
    # convert.py truncates to bytes, so decoded colours lie up to one step below the originals
    step = 1 / 255 + 1e-6
    diff = ref.base_colors()[order].clamp(0, 1) - (0.5 + SH_C0 * s.sh[:, 0])
    assert diff.min() > -1e-6 and diff.max() < step
    op = ref.opacities()[order] - s.opacities()
    assert op.min() > -1e-6 and op.max() < step
    assert unit_quat_distance(s.quats, ref.quats[order]).max() < 2.5 / 128


def test_splat_round_trip_within_quantisation(tmp_path: Path) -> None:
    scene = Splats.random(500, sh_degree=2, seed=7)
    write_splat(tmp_path / "s.splat", scene)
    back = read_splat(tmp_path / "s.splat")
    assert back.sh_degree == 0  # higher bands are dropped by the format
    importance = scene.log_scales.double().sum(dim=1).exp() * torch.sigmoid(scene.opacity_logits.double())
    order = torch.argsort(-importance, stable=True)
    ref = scene.subset(order)
    assert torch.equal(back.means, ref.means)
    assert torch.allclose(back.log_scales, ref.log_scales, atol=1e-5)
    half = 0.5 / 255 + 1e-6
    assert ((0.5 + SH_C0 * back.sh[:, 0]) - ref.base_colors().clamp(0, 1)).abs().max() <= half
    assert (back.opacities() - ref.opacities()).abs().max() <= half
    assert unit_quat_distance(back.quats, ref.quats).max() <= 1.5 / 128
    assert splat_bytes(scene) == (tmp_path / "s.splat").read_bytes()


def test_splat_bad_size(tmp_path: Path) -> None:
    (tmp_path / "odd.splat").write_bytes(bytes(33))
    with pytest.raises(SceneFormatError, match=r"odd\.splat: size 33 bytes is not a multiple of 32"):
        read_splat(tmp_path / "odd.splat")


def test_splat_nonfinite(tmp_path: Path) -> None:
    rows = bytearray((FIX / "guitar_2k.splat").read_bytes()[: 32 * 4])
    rows[32 : 36] = np.float32(np.nan).tobytes()
    (tmp_path / "nan.splat").write_bytes(bytes(rows))
    with pytest.raises(SceneFormatError, match=re.escape("1 of 4 Gaussians have NaN/Inf values (in position)")):
        read_splat(tmp_path / "nan.splat")
    assert len(read_splat(tmp_path / "nan.splat", nonfinite="drop")) == 3
    report = load_scene_report(tmp_path / "nan.splat", nonfinite="drop")
    assert (len(report.splats), report.format, report.dropped) == (3, "splat", 1)
    assert scene_info(tmp_path / "nan.splat", nonfinite="drop").dropped == 1


# ----- Niantic .spz ----------------------------------------------------------------------------------------------
def test_spz_fixture_known_values() -> None:
    s = read_spz(FIX / "biker_4chunks.spz")
    assert len(s) == 938 and s.sh_degree == 0
    low, high = s.bounds()
    assert low.tolist() == pytest.approx([-0.1682129, -2.5131836, -0.4653320], abs=1e-6)
    assert high.tolist() == pytest.approx([0.2846680, -0.0012207, 0.3610840], abs=1e-6)
    assert s.means[0].tolist() == [-0.1044921875, -2.387939453125, -0.36083984375]
    assert torch.allclose(s.quats.norm(dim=1), torch.ones(938), atol=1e-5)


def test_spz_is_converted_to_the_frame_of_the_compressed_ply() -> None:
    # SPZ stores RUB (y up); gscache and PlayCanvas's compressed.ply use RDF (y down): the same Gaussians must agree
    spz, comp = read_spz(FIX / "biker_4chunks.spz"), read_compressed_ply(FIX / "biker_4chunks.compressed.ply")
    step = 1 / 4096  # SPZ's position step with 12 fractional bits
    assert (spz.means - comp.means).abs().max() < step
    for a, b in zip(spz.bounds(), comp.bounds()):
        assert torch.allclose(a, b, atol=step)
    assert torch.equal(spz.opacity_logits, comp.opacity_logits)
    assert (spz.base_colors() - comp.base_colors()).abs().max() < 0.005
    assert unit_quat_distance(spz.quats, comp.quats).max() < 2e-3
    assert (spz.log_scales - comp.log_scales).abs().max() < 1 / 32 + 1e-3  # half of SPZ's 1/16 step, and more
    cov_spz, cov_comp = spz.covariances(), comp.covariances()
    largest = cov_comp.diagonal(dim1=1, dim2=2).amax(dim=1)
    assert ((cov_spz - cov_comp).abs().amax(dim=(1, 2)) / largest).max() < 0.1
    raw = read_spz(FIX / "biker_4chunks.spz", source_frame="rdf")
    assert torch.equal(raw.means, spz.means * torch.tensor([1.0, -1.0, -1.0]))
    assert raw.means[:, 1].min() >= 0  # as stored: y up


def test_spz_v2_matches_v3() -> None:
    v2, v3 = read_spz(FIX / "biker_256_v2.spz"), read_spz(FIX / "biker_4chunks.spz").subset(slice(0, 256))
    assert len(v2) == 256
    for name in ("means", "log_scales", "opacity_logits", "sh"):
        assert torch.equal(getattr(v2, name), getattr(v3, name)), name
    assert unit_quat_distance(v2.quats, v3.quats).max() < 1.5 / 127.5


def test_spz_frame_flip_keeps_covariances_and_sh_colours() -> None:
    scene = Splats.random(64, sh_degree=3, seed=11)
    flipped = _flip_yz(splat_arrays(scene)).to_splats()
    s = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(flipped.covariances(), s @ scene.covariances() @ s, atol=1e-6)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.allclose(_eval_sh(3, dirs @ s, flipped.sh), _eval_sh(3, dirs, scene.sh), atol=1e-5)


def spz_bytes(version: int, count: int, payload: bytes, sh_degree: int = 0, flags: int = 0) -> bytes:
    return b"NGSP" + np.array([version, count], "<u4").tobytes() + bytes([sh_degree, 12, flags, 0]) + payload


@pytest.mark.parametrize(("data", "message"), [
    (gzip.compress(b"XXXX" + bytes(12)), "not an SPZ file (magic b'XXXX', expected b'NGSP')"),
    (gzip.compress(spz_bytes(1, 0, b"")), "SPZ version 1 is not supported (supported: 2, 3, 4)"),
    (gzip.compress(spz_bytes(3, 0, b"", flags=2)), "SPZ extensions (flag 0x2) are not supported"),
    (gzip.compress(spz_bytes(3, 0, b"", sh_degree=4)), "SPZ SH degree 4 is not supported (expected 0..3)"),
    (gzip.compress(spz_bytes(3, 10, bytes(50))), "file is truncated: the header promises 10 Gaussians (200 bytes"),
    (gzip.compress(b"NGSP"), "file is truncated: 4 bytes, an SPZ header needs 16"),
])  # fmt: skip
def test_spz_bad_input(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / "bad.spz").write_bytes(data)
    with pytest.raises(SceneFormatError, match=r"^bad\.spz: " + re.escape(message)):
        read_spz(tmp_path / "bad.spz")


def test_spz_truncated_gzip(tmp_path: Path) -> None:
    data = (FIX / "biker_4chunks.spz").read_bytes()
    (tmp_path / "cut.spz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SceneFormatError, match="cut.spz: corrupt or truncated gzip stream"):
        read_spz(tmp_path / "cut.spz")


def spz_v4_from_fixture(compress: Callable[[bytes], bytes]) -> bytes:
    """The biker fixture re-packed as SPZ v4: 32-byte header, table of contents, one zstd frame per section."""
    header, sections = _read_sections(FIX / "biker_4chunks.spz", (FIX / "biker_4chunks.spz").read_bytes())
    blobs = [np.ascontiguousarray(s).tobytes() for s in sections[:5]]
    frames = [compress(b) for b in blobs]
    head = spz_bytes(4, header.count, b"")[:15] + bytes([5]) + np.array([32], "<u4").tobytes() + bytes(12)
    toc = np.array([[len(f), len(b)] for f, b in zip(frames, blobs)], "<u8").tobytes()
    return head + toc + b"".join(frames)


def test_spz_v4_with_zstandard(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    (tmp_path / "v4.spz").write_bytes(spz_v4_from_fixture(zstandard.ZstdCompressor().compress))
    assert_bit_exact(read_spz(tmp_path / "v4.spz"), read_spz(FIX / "biker_4chunks.spz"))


def test_spz_v4_without_a_zstd_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = spz_bytes(4, 1, b"")[:15] + bytes([5]) + np.array([32], "<u4").tobytes() + bytes(12)
    toc = np.array([[0, size] for size in (9, 1, 3, 3, 4)], "<u8").tobytes()
    (tmp_path / "v4.spz").write_bytes(head + toc)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    monkeypatch.setitem(sys.modules, "compression", None)
    with pytest.raises(SceneFormatError, match="SPZ version 4 is zstd-compressed: install the 'zstandard' package"):
        read_spz(tmp_path / "v4.spz")


# ----- scene_io --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fmt", "count"), [
    ("guitar_2k.ply", "ply", 2000), ("guitar_1k_sh3.ply", "ply", 1000), ("guitar_2k.splat", "splat", 2000),
    ("guitar_8chunks.compressed.ply", "compressed_ply", 2022), ("biker_4chunks.spz", "spz", 938),
    ("biker_256_v2.spz", "spz", 256),
])  # fmt: skip
def test_load_scene_dispatches_by_content(tmp_path: Path, name: str, fmt: str, count: int) -> None:
    assert detect_format(FIX / name) == fmt
    s = load_scene(FIX / name)
    assert len(s) == count and s.dtype == torch.float32 and s.device.type == "cpu"
    if fmt != "splat":  # content wins over the extension
        renamed = tmp_path / "scene.bin"
        renamed.write_bytes((FIX / name).read_bytes())
        assert detect_format(renamed) == fmt


def test_load_scene_unknown_and_missing(tmp_path: Path) -> None:
    (tmp_path / "scene.obj").write_bytes(b"v 0 0 0\n")
    message = "scene.obj: unknown scene format (expected .ply, .compressed.ply, .splat or .spz; the file starts with"
    with pytest.raises(SceneFormatError, match=re.escape(message)):
        load_scene(tmp_path / "scene.obj")
    with pytest.raises(SceneFormatError, match="gone.spz: file not found"):
        load_scene(tmp_path / "gone.spz")
    (tmp_path / "fake.spz").write_bytes(b"not spz at all!!")
    with pytest.raises(SceneFormatError, match="not an SPZ file"):
        load_scene(tmp_path / "fake.spz")
    with pytest.raises(ValueError, match="nonfinite"):
        load_scene(GUITAR_2K, nonfinite="keep")


def test_save_scene_round_trips_and_converts(tmp_path: Path) -> None:
    scene = Splats.random(100, sh_degree=3, seed=4)
    save_scene(tmp_path / "s.ply", scene)
    assert_bit_exact(load_scene(tmp_path / "s.ply"), scene)
    save_scene(tmp_path / "s.splat", scene)
    assert len(load_scene(tmp_path / "s.splat")) == 100
    assert convert_scene(FIX / "guitar_8chunks.compressed.ply", tmp_path / "guitar.ply") == 2022
    assert_bit_exact(read_ply(tmp_path / "guitar.ply"), read_compressed_ply(FIX / "guitar_8chunks.compressed.ply"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guitar.ply", "s.ply", "s.splat"]  # no temporary files


def test_save_scene_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scene = Splats.random(10)
    with pytest.raises(SceneFormatError, match=re.escape("s.spz: cannot write '.spz' files (save_scene writes .ply")):
        save_scene(tmp_path / "s.spz", scene)
    with pytest.raises(SceneFormatError, match="s.compressed.ply: writing .compressed.ply is not supported"):
        save_scene(tmp_path / "s.compressed.ply", scene)
    with pytest.raises(SceneFormatError, match=r"s\.ply: cannot write: directory '.*missing' does not exist"):
        save_scene(tmp_path / "missing" / "s.ply", scene)
    with pytest.raises(SceneFormatError, match="cannot write '.obj' files"):
        convert_scene(GUITAR_2K, tmp_path / "s.obj")
    assert list(tmp_path.iterdir()) == []

    save_scene(tmp_path / "keep.ply", scene)
    before = (tmp_path / "keep.ply").read_bytes()

    def failing_writer(path: Path, splats: Splats) -> None:
        path.write_bytes(b"ply\nhalf a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(scene_io.WRITERS, ".ply", failing_writer)
    with pytest.raises(SceneFormatError, match="keep.ply: cannot write: No space left on device"):
        save_scene(tmp_path / "keep.ply", Splats.random(20))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.ply"]
    assert (tmp_path / "keep.ply").read_bytes() == before


def test_scene_info() -> None:
    info = scene_info(FIX / "guitar_1k_sh3.ply")
    assert isinstance(info, SceneInfo)
    assert (info.format, info.count, info.sh_degree) == ("ply", 1000, 3)
    assert info.bounds_min == pytest.approx((-0.5881380, -4.2500238, -0.5144865), abs=1e-6)
    assert info.bounds_max == pytest.approx((0.7695329, 0.0810143, 0.9009417), abs=1e-6)
    assert info.nbytes == 1000 * (3 + 4 + 3 + 1 + 16 * 3) * 4
    assert info.file_bytes == os.path.getsize(FIX / "guitar_1k_sh3.ply") == 249_529
    assert info.dropped == 0
    spz = scene_info(FIX / "biker_4chunks.spz")
    assert (spz.format, spz.count, spz.sh_degree) == ("spz", 938, 0)
