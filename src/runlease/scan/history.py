"""``--git-history``: find credentials in any commit's added lines.

A secret removed in the next commit is still in the repository. This walks
``git log -p`` (one streamed process) to learn, per commit and file, which lines
were added; for files whose added lines hit the prefilter, it reads that file's
full content at that commit (one ``git cat-file --batch`` process, so no process
per file) and runs the normal scanner on it, keeping only findings on added lines.
Scanning the whole file version rather than the bare diff lines keeps the AST
rules working (a ``password=`` added inside an existing ``Connection(`` call).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .dotenv import dotenv_kind
from .engine import ScanResult, scan_text
from .files import is_skippable_name
from .prefilter import default_prefilter

_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")
_COMMIT_MARK = "\x00commit "


@dataclass
class FileChange:
    """Lines one commit added to one file."""

    commit: str
    path: str
    added: dict[int, str] = field(default_factory=dict)


def _unquote_git_path(raw: str) -> str:
    """Undo git's C-style quoting of unusual paths ("a\\tb" -> a<TAB>b)."""
    if not (raw.startswith('"') and raw.endswith('"')):
        return raw
    body = raw[1:-1].encode("latin-1", errors="backslashreplace").decode("unicode_escape")
    return body.encode("latin-1", errors="replace").decode("utf-8", errors="replace")


def iter_added_lines(repo: Path, pathspecs: list[str] | None = None, rev: str = "HEAD") -> Iterator[FileChange]:
    """Yield every (commit, file) with the lines it added, newest commit first."""
    cmd = [
        "git", "-C", str(repo), "-c", "core.quotepath=off", "log", rev, "-p", "-U0",
        "--no-color", "--no-ext-diff", "--no-renames", "--diff-filter=d", "--format=%x00commit %H",
        "--", *(pathspecs or []),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    commit = ""
    current: FileChange | None = None
    in_hunk = False
    new_line = 0
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if line.startswith(_COMMIT_MARK):
                if current and current.added:
                    yield current
                commit, current, in_hunk = line[len(_COMMIT_MARK):].strip(), None, False
            elif line.startswith("diff --git "):
                if current and current.added:
                    yield current
                current, in_hunk = None, False
            elif not in_hunk and line.startswith("+++ "):
                target = line[4:]
                current = None if target == "/dev/null" else FileChange(commit, _unquote_git_path(target)[2:])
            elif line.startswith("@@"):
                match = _HUNK.match(line)
                in_hunk = match is not None
                new_line = int(match.group(1)) if match else 0
            elif in_hunk and current is not None:
                if line.startswith("+"):
                    current.added[new_line] = line[1:]
                    new_line += 1
                elif line.startswith(" "):
                    new_line += 1
        if current and current.added:
            yield current
    finally:
        proc.stdout.close()
        proc.wait()


class _BlobReader:
    """One ``git cat-file --batch`` process serving ``<commit>:<path>`` lookups."""

    def __init__(self, repo: Path) -> None:
        self._proc = subprocess.Popen(
            ["git", "-C", str(repo), "cat-file", "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def read(self, commit: str, path: str) -> bytes | None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(f"{commit}:{path}\n".encode("utf-8", errors="surrogateescape"))
        self._proc.stdin.flush()
        header = self._proc.stdout.readline().decode("utf-8", errors="replace").split()
        if len(header) != 3 or header[1] != "blob":
            return None
        data = self._proc.stdout.read(int(header[2]))
        self._proc.stdout.read(1)  # trailing newline
        return data

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait()


def scan_history(repo: Path, pathspecs: list[str] | None = None, *, max_bytes: int = 5 * 1024 * 1024) -> ScanResult:
    """Findings introduced by any commit reachable from HEAD (on their added lines)."""
    result = ScanResult()
    prefilter = default_prefilter()
    reader = _BlobReader(repo)
    try:
        for change in iter_added_lines(repo, pathspecs):
            name = PurePosixPath(change.path).name
            if is_skippable_name(Path(change.path)):
                continue
            added_text = "\n".join(change.added.values()).lower()
            if prefilter.run(added_text).empty and dotenv_kind(name) is None:
                continue
            data = reader.read(change.commit, change.path)
            if data is None or len(data) > max_bytes or b"\0" in data[:8192]:
                result.stats.files_skipped += 1
                continue
            result.stats.files_scanned += 1
            result.stats.bytes_scanned += len(data)
            text = data.decode("utf-8", errors="replace")
            findings = scan_text(text, change.path, tracked=True, commit=change.commit)
            result.extend(f for f in findings if f.line in change.added)
    finally:
        reader.close()
    return result
