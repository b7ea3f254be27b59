"""``python -m runlease.scan [PATH ...]``: the scan command without the rest of the CLI."""

from __future__ import annotations

import sys

from .cli import build_app


def main() -> None:
    """Run ``scan`` standalone; argv is the scan command's own arguments."""
    app = build_app()
    # A Typer app with a single command runs that command directly, so argv
    # needs no "scan" word here, while the main CLI exposes it as `runlease scan`.
    app(args=sys.argv[1:], prog_name="python -m runlease.scan")


if __name__ == "__main__":
    main()
