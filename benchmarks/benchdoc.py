"""What every benchmark script writes the same way: machine facts and its docs/benchmarks.md section.

docs/benchmarks.md is shared by several scripts; each owns the text between
its own ``<!-- bench:NAME:start -->`` / ``<!-- bench:NAME:end -->`` markers, so
one script's run never rewrites another's numbers.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

HEADER = "# runlease benchmarks\n\nWritten by the scripts in `benchmarks/`; each owns one delimited section.\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_average(sep: str = " / ") -> str:
    """The 1/5/15-minute load: other work on the machine shows up here and in the numbers."""
    try:
        return sep.join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def filesystem_of(path: Path) -> str:
    """The filesystem a path lives on (``ext4 (/)``): durable commits cost what its fsync costs."""
    best, fstype = "", "unknown"
    try:
        real = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind = line.split()[:3]
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, fstype = mount, kind
    except OSError:
        pass
    return f"{fstype} ({best})" if best else "unknown"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def percentile(values: list[float], q: float) -> float:
    """The sample at rank ``int(len * q)`` of the sorted values (``q`` in 0..1), capped at the largest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def publish(section: str, markdown: Path | None, start: str, end: str) -> None:
    """Print a script's section; with ``--markdown``, also write it between its markers in that file."""
    print(section)
    if markdown:
        write_section(markdown, start, end, section)


def write_section(path: Path, start: str, end: str, section: str) -> None:
    """Replace the text from ``start`` to ``end`` (markers included in ``section``), or append it."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
