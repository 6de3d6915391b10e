"""The torch-free CUDA core compiles for sm_90 (no GPU needed; skipped where nvcc is missing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "cuda" / "check_compile.sh"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_cuda_core_compiles_for_sm90() -> None:
    result = subprocess.run(["bash", str(SCRIPT), "sm_90"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"cuda/check_compile.sh failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.count("ok ") == len(list((SCRIPT.parent / "csrc").glob("*.cu")))
