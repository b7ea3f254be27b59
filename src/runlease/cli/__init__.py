"""The ``runlease`` command line (typer + rich)."""
