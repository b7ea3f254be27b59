"""``import runlease`` stays light: the Vault and AWS SDKs load only when a remote store is used."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("hvac", "boto3", "botocore", "requests", "psycopg", "airflow", "kfp")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_runtime_and_store_modules_do_not_import_sdks() -> None:
    assert _loaded_after("import runlease.runtime, runlease.cli.main") == []
    assert _loaded_after(
        "import runlease.store.vault, runlease.store.vault_auth, runlease.store.aws, runlease.keys.kms, runlease.clients.awsclient"
    ) == []
    # the Airflow-layout readers and the import sources live in the core: no Airflow, no SDK at import
    assert _loaded_after(
        "import runlease.store.aws_airflow, runlease.store.vault_airflow, runlease.migrate.backends, "
        "runlease.cli.import_cmd"
    ) == []


def test_rotation_engine_and_rotators_do_not_import_sdks_or_orchestrators() -> None:
    assert _loaded_after(
        "import runlease.rotation, runlease.rotation.status, runlease.cli.rotation_cmd\n"
        "from runlease.rotation.rotators import standard_rotators\n"
        "standard_rotators()"
    ) == []


def test_building_a_store_from_settings_still_does_not_import_them() -> None:
    # Options are parsed and the store object exists; the SDK loads on the first request.
    assert _loaded_after(
        "from runlease.store.vault import VaultStore\n"
        "VaultStore.from_options({'address': 'http://127.0.0.1:1', 'auth': {'method': 'token'}})"
    ) == []
    assert "hvac" in _loaded_after(
        "from runlease.store.vault import VaultStore\n"
        "s = VaultStore.from_options({'address': 'http://127.0.0.1:1', 'timeout': 1})\n"
        "try:\n    s.list()\nexcept Exception:\n    pass"
    )
