"""``python -m training DATA --out RUN_DIR [...]``: ``gscache train`` without the other commands' imports (the viewer
and the server), for machines that only train. Same arguments, output and exit codes."""

from __future__ import annotations

import sys

import tyro
from rich.console import Console

from .cli import Train


def main(argv: list[str] | None = None) -> int:
    command = tyro.cli(Train, args=argv, prog="python -m training")
    console = Console()
    try:
        command.run(console)
    except KeyboardInterrupt:
        Console(stderr=True).print("training: interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - the expected kinds become one line, as in gscache.cli
        from renderer import BackendUnavailableError

        if not isinstance(err, ValueError | OSError | BackendUnavailableError):
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"training: error: {err}", markup=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
