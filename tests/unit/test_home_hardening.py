"""The home is checked on every open: another user's home, loose modes and planted symlinks are refused.

These run as any user; the "owned by another user" cases need root to chown
(the sandbox and CI run as root) and are skipped otherwise.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.errors import ConfigError, MasterKeyError, StoreUnavailableError
from runlease.integrity.home_guard import UnsafeHomeError
from runlease.models import RunIdentity
from runlease.policy.grants import Policy
from runlease.runtime import Runtime, init_home, open_runtime
from runlease.settings import Settings

OTHER_UID = 4242
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def closed_home(runtime: Runtime, admin: RunIdentity) -> Settings:
    runtime.broker.put("dev/tokens/api", "home-token-value", admin)
    runtime.close()
    return runtime.settings


def cli(settings: Settings, *args: str) -> tuple[int, str]:
    os.environ["RUNLEASE_HOME"] = str(settings.home)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        del os.environ["RUNLEASE_HOME"]
    return result.exit_code, result.output


@needs_root
def test_init_refuses_a_home_owned_by_another_user(tmp_path: Path) -> None:
    home = tmp_path / "theirs"
    home.mkdir(mode=0o700)
    os.chown(home, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeHomeError, match="owned by uid 4242"):
        init_home(Settings(home=home))
    assert list(home.iterdir()) == []  # nothing created: no key of ours in their directory
    assert os.stat(home).st_mode & 0o777 == 0o700  # and not chmod'ed either


@needs_root
def test_open_refuses_a_home_owned_by_another_user(closed_home: Settings) -> None:
    os.chown(closed_home.home, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeHomeError, match="owned by uid 4242"):
        open_runtime(closed_home)
    code, out = cli(closed_home, "get", "dev/tokens/api", "--reveal")
    assert code == 8 and "owned by uid 4242" in out and "home-token-value" not in out


@needs_root
@pytest.mark.parametrize(("name", "code"), [("master.key", 3), ("store.db", 8), ("audit.anchor", 8)])
def test_open_refuses_a_file_owned_by_another_user(closed_home: Settings, name: str, code: int) -> None:
    os.chown(closed_home.home / name, OTHER_UID, OTHER_UID)
    got, out = cli(closed_home, "ls")
    assert got == code and str(closed_home.home / name) in out and "chown" in out


def test_open_refuses_a_home_writable_by_others(closed_home: Settings) -> None:
    os.chmod(closed_home.home, 0o777)
    with pytest.raises(UnsafeHomeError, match="chmod 700"):
        open_runtime(closed_home)
    assert cli(closed_home, "ls")[0] == 8


@pytest.mark.parametrize(("name", "mode", "error"), [
    ("master.key", 0o640, MasterKeyError), ("store.db", 0o664, StoreUnavailableError),
    ("audit.anchor", 0o620, StoreUnavailableError),
])
def test_open_refuses_loose_file_modes(closed_home: Settings, name: str, mode: int, error: type) -> None:
    os.chmod(closed_home.home / name, mode)
    with pytest.raises(error, match=f"{mode:04o}"):
        open_runtime(closed_home)


@pytest.mark.parametrize("name", ["master.key", "store.db", "audit.anchor"])
def test_open_refuses_symlinks_in_the_home(closed_home: Settings, tmp_path: Path, name: str) -> None:
    real = tmp_path / f"real-{name}"
    (closed_home.home / name).rename(real)
    (closed_home.home / name).symlink_to(real)
    with pytest.raises((UnsafeHomeError, MasterKeyError), match="symbolic link"):
        open_runtime(closed_home)


def test_a_symlinked_anchor_never_redirects_a_write(runtime: Runtime, admin: RunIdentity, tmp_path: Path) -> None:
    """Issue #12: a symlinked audit.anchor made root's next put overwrite the link target."""
    victim = tmp_path / "victim.conf"
    victim.write_text("important = true\n")
    runtime.broker.put("dev/tokens/api", "token-one-value", admin)
    anchor = runtime.settings.anchor_file
    anchor.unlink()
    anchor.symlink_to(victim)
    runtime.broker.put("dev/tokens/api", "token-two-value", admin)  # the already-open runtime writes on
    assert victim.read_text() == "important = true\n"
    assert not runtime.ledger.verify().ok
    with pytest.raises(UnsafeHomeError, match="symbolic link"):
        open_runtime(runtime.settings)
    assert victim.read_text() == "important = true\n"


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_policy_link_that_cannot_be_read_fails_closed(closed_home: Settings, tmp_path: Path, kind: str) -> None:
    policy = closed_home.home / "policy.toml"
    if kind == "dangling":
        policy.symlink_to(tmp_path / "does-not-exist.toml")
    else:
        policy.symlink_to(policy)
    with pytest.raises(UnsafeHomeError, match="cannot be followed"):
        Policy.load(policy)
    code, out = cli(closed_home, "get", "dev/tokens/api", "--reveal")
    assert code == 8 and "home-token-value" not in out


def test_a_policy_link_to_a_good_file_is_read(closed_home: Settings, tmp_path: Path) -> None:
    """A configured policy may be a link (a Kubernetes ConfigMap mount is one) to a file that passes."""
    target = tmp_path / "configmap-policy.toml"
    target.write_text('[[grant]]\nprincipals=["cli"]\nenvironments=["*"]\npaths=["*"]\ncapabilities=["admin"]\n')
    (closed_home.home / "policy.toml").symlink_to(target)
    policy = Policy.load(closed_home.home / "policy.toml")
    assert policy.enforced and len(policy.grants) == 1


def test_a_policy_writable_by_others_is_refused(closed_home: Settings) -> None:
    policy = closed_home.home / "policy.toml"
    policy.write_text("")
    os.chmod(policy, 0o666)
    with pytest.raises(UnsafeHomeError, match="writable by group/others"):
        Policy.load(policy)


@needs_root
def test_a_policy_owned_by_another_user_is_refused_but_root_owned_is_fine(closed_home: Settings) -> None:
    policy = closed_home.home / "policy.toml"
    policy.write_text("")
    os.chown(policy, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeHomeError, match="owned by uid 4242"):
        Policy.load(policy)
    os.chown(policy, 0, 0)
    assert Policy.load(policy).enforced


def test_a_missing_policy_still_means_allow_all(closed_home: Settings) -> None:
    assert not Policy.load(closed_home.home / "policy.toml").enforced


def test_a_broken_policy_is_still_a_config_error(closed_home: Settings) -> None:
    (closed_home.home / "policy.toml").write_text("[[grant\n")
    with pytest.raises(ConfigError):
        Policy.load(closed_home.home / "policy.toml")


def test_a_home_made_under_a_loose_umask_still_opens(tmp_path: Path, admin: RunIdentity) -> None:
    """umask 002 (user private groups) must not produce a home the next open refuses."""
    old = os.umask(0o002)
    try:
        rt, _ = init_home(Settings(home=tmp_path / "home"))
        rt.broker.put("dev/tokens/api", "umask-token-value", admin)
        rt.close()
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "home").iterdir()}
    assert not any(mode & 0o022 for mode in modes.values()), modes
    rt = open_runtime(Settings(home=tmp_path / "home"))
    try:
        assert rt.broker.lease("dev/tokens/api", RunIdentity(orchestrator="a", pipeline="b")).value == "umask-token-value"
    finally:
        rt.close()


def test_replace_private_file_replaces_a_planted_symlink_and_never_writes_through_it(tmp_path: Path) -> None:
    """The one writer of small home files (token cache, format records, admin tokens): an attacker's
    symlink at the file's name is replaced, its target untouched; the result is a 0600 regular file."""
    from runlease.integrity.home_guard import replace_private_file

    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    target = tmp_path / "record"
    target.symlink_to(victim)
    replace_private_file(target, b"new contents", durable=True)
    assert victim.read_text() == "do not touch"
    assert not target.is_symlink() and target.read_bytes() == b"new contents"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_replace_private_file_leaves_no_temporary_file_when_it_fails(tmp_path: Path) -> None:
    from runlease.integrity.home_guard import replace_private_file

    target = tmp_path / "record"
    target.mkdir()  # a directory in the way: the rename fails
    with pytest.raises(OSError):
        replace_private_file(target, b"x", durable=False)
    assert [p.name for p in tmp_path.iterdir()] == ["record"]
