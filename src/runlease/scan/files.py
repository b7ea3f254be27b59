"""Which files a scan reads.

Default: the git work tree the command runs in, as git sees it (tracked files
plus untracked ones that .gitignore does not exclude). ``--all-files`` walks the
file system instead and ignores .gitignore. Explicit paths (what pre-commit
passes) are scanned as given; directories among them follow the same two modes.
Binary files, symlinks and files over the size limit are skipped without being
decoded.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
_BINARY_SUFFIXES = frozenset(
    """
    .png .jpg .jpeg .gif .bmp .ico .webp .tiff .pdf .zip .gz .tgz .bz2 .xz .zst .7z .tar .whl .egg
    .jar .war .class .pyc .pyo .so .dylib .dll .exe .bin .o .a .parquet .avro .orc .feather .npy .npz
    .pkl .pickle .joblib .h5 .hdf5 .pt .pth .onnx .safetensors .ckpt .tflite .db .sqlite .sqlite3
    .woff .woff2 .ttf .otf .eot .mp3 .mp4 .wav .ogg .mov .avi .lock.bin
    """.split()
)
_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_SKIP_NAMES = frozenset({".runlease-baseline.json"})


class ScanUsageError(Exception):
    """A usage problem (bad path, not a git repository): the CLI exits 2."""


@dataclass(frozen=True)
class ScanTarget:
    """One file to scan: where it is, how to show it, and whether git tracks it."""

    path: Path
    display: str
    tracked: bool | None  # asked only for .env-like files; None: not asked or no git work tree


def git_toplevel(directory: Path) -> Path | None:
    """Root of the git work tree holding ``directory``, or None."""
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return Path(out.stdout.strip())


def _git_ls_files(top: Path, args: list[str], pathspecs: list[str]) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(top), "-c", "core.quotepath=off", "ls-files", "-z", *args, "--", *pathspecs],
        capture_output=True,
        check=True,
    )
    return [p for p in out.stdout.decode("utf-8", errors="surrogateescape").split("\0") if p]


def display_path(path: Path, cwd: Path) -> str:
    """Path relative to ``cwd`` when below it, else absolute; always with '/'."""
    try:
        return path.relative_to(cwd).as_posix()
    except ValueError:
        rel = os.path.relpath(path, cwd)
        return Path(rel).as_posix() if not rel.startswith("..") else path.as_posix()


def is_skippable_name(path: Path) -> bool:
    """Known binary/artifact suffixes and the baseline file itself."""
    return path.suffix.lower() in _BINARY_SUFFIXES or path.name in _SKIP_NAMES


class _GitView:
    """Tracked-file lookups for one work tree, computed once."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self._tracked: set[str] | None = None

    def tracked(self, path: Path) -> bool:
        if self._tracked is None:
            self._tracked = set(_git_ls_files(self.top, ["--cached"], []))
        try:
            rel = path.resolve().relative_to(self.top.resolve()).as_posix()
        except ValueError:
            return False
        return rel in self._tracked

    def listed(self, directory: Path) -> list[Path]:
        rel = os.path.relpath(directory.resolve(), self.top.resolve())
        spec = [] if rel == "." else [Path(rel).as_posix()]
        return [self.top / p for p in _git_ls_files(self.top, ["--cached", "--others", "--exclude-standard"], spec)]


def _walk(directory: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, names in os.walk(directory, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        found.extend(Path(root) / name for name in sorted(names))
    return found


def collect_targets(paths: list[Path], *, all_files: bool, cwd: Path) -> list[ScanTarget]:
    """Resolve the command line into files to scan.

    Raises :class:`ScanUsageError` for a path that does not exist, and for the
    default mode (no paths, no --all-files) outside a git work tree: scanning
    "what git would commit" means nothing there, and silently scanning the whole
    directory instead would hide the mistake.
    """
    cwd = cwd.resolve()
    views: dict[Path, _GitView] = {}

    def view_for(directory: Path) -> _GitView | None:
        top = git_toplevel(directory)
        if top is None:
            return None
        return views.setdefault(top, _GitView(top))

    candidates: list[Path] = []
    if not paths:
        if all_files:
            candidates = _walk(cwd)
        else:
            view = view_for(cwd)
            if view is None:
                raise ScanUsageError(
                    f"{cwd} is not inside a git work tree; pass paths to scan, or --all-files to scan "
                    "every file below the current directory"
                )
            candidates = view.listed(cwd)
    else:
        for raw in paths:
            path = (cwd / raw) if not raw.is_absolute() else raw
            if not path.exists() and not path.is_symlink():
                raise ScanUsageError(f"path does not exist: {raw}")
            if path.is_dir():
                view = None if all_files else view_for(path)
                candidates.extend(view.listed(path) if view is not None else _walk(path))
            else:
                candidates.append(path)

    targets: list[ScanTarget] = []
    seen: set[Path] = set()
    for path in candidates:
        if path in seen or path.is_symlink() or not path.is_file() or is_skippable_name(path):
            continue
        seen.add(path)
        tracked: bool | None = None
        if path.name.lower().startswith(".env") or path.name.lower().endswith(".env"):
            view = view_for(path.parent)
            tracked = view.tracked(path) if view is not None else None
        targets.append(ScanTarget(path, display_path(path, cwd), tracked))
    return targets


def read_text(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    """File text, or None for files to skip (too large, binary, unreadable)."""
    try:
        if path.stat().st_size > max_bytes:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")
