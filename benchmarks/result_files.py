"""Writing a diagnostic benchmark's result: ``<date>-<gpu>-<what>.json`` (BENCHMARK.md's command, revision, gpu,
date, rows, plus the script's own keys) and its plot beside it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_result_files(out_dir: Path, what: str, command: str, revision: str | None, gpu: str,
                       rows: list[dict[str, Any]], plot: Callable[[Path], None], **extra: Any) -> Path:
    """Write the JSON and, where matplotlib is installed, the plot (``plot(png_path)``); returns the JSON path."""
    date = dt.date.today().isoformat()
    result = {"command": command, "revision": revision or "unknown", "gpu": gpu, "date": date, "rows": rows, **extra}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{date}-{gpu.lower().replace(' ', '-')}-{what}"
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    try:
        plot(out_dir / f"{stem}.png")
    except ImportError as err:  # no matplotlib: the JSON stands alone
        print(f"plot skipped: {err}")
    print(f"wrote {json_path}")
    return json_path
