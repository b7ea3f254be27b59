"""A client that keeps authenticating with whatever it last read, until told to stop.

    python reader_worker.py HOME PATH MODE OUT READY STOP

MODE ``token``: ``broker.verify_presented_key`` (a serving endpoint checking a
client's key); MODE ``postgres``: a real login and a query. Every
:data:`REREAD` attempts it re-reads CURRENT from the store; in between it
keeps using the value it has, as a client with a connection pool or a cached
key does. It touches READY after its first successful authentication and
writes counts (never values) to OUT when STOP appears.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from runlease.models import SecretPath
from runlease.runtime import open_runtime
from runlease.settings import Settings

REREAD = 5
#: Never run longer than this, even if nobody creates STOP.
MAX_SECONDS = 300


def pg_authenticates(conn: dict) -> bool:
    import psycopg

    try:
        with psycopg.connect(host=str(conn["host"]), port=str(conn["port"]), dbname=str(conn["schema"]),
                             user=str(conn["login"]), password=str(conn["password"]), connect_timeout=10) as c:
            return c.execute("SELECT count(*) FROM facts").fetchone()[0] == 2
    except psycopg.OperationalError:
        return False


def main() -> int:
    home, path_text, mode, out, ready, stop = sys.argv[1:7]
    path = SecretPath.parse(path_text)
    runtime = open_runtime(Settings(home=Path(home)))
    ok = failed = 0
    versions: set[int] = set()
    errors: dict[str, int] = {}
    value = None
    deadline = time.monotonic() + MAX_SECONDS
    attempt = 0
    while not Path(stop).exists() and time.monotonic() < deadline:
        if attempt % REREAD == 0:
            secret = runtime.store.get(path)
            value = secret.value
            versions.add(secret.version)
        attempt += 1
        try:
            good = (runtime.broker.verify_presented_key(path, value) if mode == "token"
                    else pg_authenticates(value))  # type: ignore[arg-type]
        except Exception as err:  # noqa: BLE001 - counted by type, never printed
            errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
            good = False
        if good:
            ok += 1
            if ok == 1:
                Path(ready).touch()
        else:
            failed += 1
    Path(out).write_text(json.dumps({"ok": ok, "failed": failed, "versions": sorted(versions), "errors": errors}))
    runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
