"""Refuse a runlease home that someone else could have swapped things into.

Why on every open (not only in ``doctor``): the KEK, the store, the policy
and the audit anchor are trusted because *they are ours*. If another user
owns the home, or can write it or a file in it, they can replace the key
file with their own key (and later decrypt what root puts), replace the
policy, plant a symlink so our next anchor write lands on a file of their
choice, or roll the database back. So before anything is read:

* the home must be a directory owned by the current user and not writable
  by group or others (then nobody else can add, remove or rename files in it);
* every file runlease reads or writes there -- key file, store (and its WAL
  and SHM), anchors, policy -- must be a regular file, not a symlink, owned
  by the current user and not writable by group or others; the key file must
  not even be readable by them;
* a file read from *outside* the home by explicit configuration (the policy
  file of ``RUNLEASE_POLICY_FILE``, which may be a Kubernetes ConfigMap
  symlink) may be a symlink, but it must resolve to such a file, owned by
  the current user or root; a dangling or looping link is an error, never
  "no file".

Errors name the file and the command that fixes it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from runlease.errors import MasterKeyError, StoreUnavailableError


class UnsafeHomeError(StoreUnavailableError):
    """The home or a file in it is owned or writable by someone else, or is a symlink (exit 8)."""


class UnsafeKeyFileError(MasterKeyError):
    """The key file is owned, readable or writable by someone else, or is a symlink (exit 3)."""


def _owner_ok(st: os.stat_result, allow_root: bool) -> bool:
    return st.st_uid == os.geteuid() or (allow_root and st.st_uid == 0)


def _who() -> str:
    return f"uid {os.geteuid()}"


def check_home_dir(home: Path, error: type[Exception] = UnsafeHomeError) -> None:
    """The home must be our own directory, writable by nobody else (it may be reached through a symlink)."""
    try:
        st = os.stat(home)
    except FileNotFoundError:
        return
    except OSError as err:
        raise error(f"runlease home {home} cannot be inspected ({err.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"runlease home {home} is not a directory")
    if not _owner_ok(st, allow_root=False):
        raise error(
            f"runlease home {home} is owned by uid {st.st_uid}, not by you ({_who()}): its owner could swap "
            f"the key, the store or the policy; use a home of your own (RUNLEASE_HOME) or `chown` it to yourself")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise error(f"runlease home {home} is writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"run `chmod 700 {home}`")


def check_file(path: Path, what: str, *, secret: bool = False, allow_root: bool = False,
               follow_links: bool = False, error: type[Exception] = UnsafeHomeError) -> bool:
    """Check one file; False if it does not exist at all (not even as a dangling link).

    ``secret``: no group/other access at all (the key file). ``follow_links``:
    a symlink is allowed if it resolves to a file that passes; otherwise any
    symlink is refused.
    """
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise error(f"{what} {path} cannot be inspected ({err.strerror})") from None
    st = lst
    if stat.S_ISLNK(lst.st_mode):
        if not follow_links:
            raise error(f"{what} {path} is a symbolic link; runlease never follows links in its home "
                        f"(a link could send a write elsewhere): replace it with the file itself")
        try:
            st = os.stat(path)
        except OSError as err:  # dangling (ENOENT) or looping (ELOOP): fail closed
            raise error(f"{what} {path} is a symbolic link that cannot be followed ({err.strerror}); "
                        f"fix or remove the link") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file")
    if not _owner_ok(st, allow_root):
        raise error(f"{what} {path} is owned by uid {st.st_uid}, not by you ({_who()})"
                    f"{' or root' if allow_root else ''}; `chown` it or replace it with your own")
    mask = (stat.S_IRWXG | stat.S_IRWXO) if secret else (stat.S_IWGRP | stat.S_IWOTH)
    if st.st_mode & mask:
        want = "600" if secret else "644"
        kind = "accessible" if secret else "writable"
        raise error(f"{what} {path} is {kind} by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"run `chmod {want} {path}`")
    return True


def open_nofollow(path: Path, what: str, error: type[Exception]) -> bytes:
    """Read a whole file without following a symlink planted at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise error(f"{what} {path} cannot be opened ({err.strerror}; symlinks are refused)") from None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def replace_private_file(path: Path, data: bytes, *, durable: bool) -> None:
    """Write ``path`` as a new 0600 file renamed over the old one: a reader sees the old or the new, never half.

    The counterpart of :func:`open_nofollow` for the small files runlease keeps
    in the home. The temporary name is unique per writer and created with
    ``O_EXCL|O_NOFOLLOW``, so concurrent writers never rename each other's file
    away and nothing planted at that name is followed; the rename replaces a
    symlink at ``path`` rather than writing through it. ``durable`` fsyncs the
    data before the rename (for records whose loss is an integrity failure,
    not just a cache miss). On failure the temporary file is removed and the
    ``OSError`` raised.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_home(home: Path, *, key_file: Path | None, store_file: Path) -> None:
    """Everything of the home that an open reads or writes (the key file only when it is used)."""
    check_home_dir(home)
    if key_file is not None:
        check_file(key_file, "key file", secret=True, allow_root=True, error=UnsafeKeyFileError)
    for path in (store_file, Path(f"{store_file}-wal"), Path(f"{store_file}-shm"), Path(f"{store_file}.writers")):
        check_file(path, "store file")
    for anchor in sorted(home.glob("audit*.anchor")):
        check_file(anchor, "audit anchor")
    for record in (Path(f"{store_file}.format"), Path(f"{store_file}.state"), *sorted(home.glob("ledger.*.format"))):
        check_file(record, "format record")
