"""``RemoteRuntime``: what :func:`runlease.runtime.open_runtime` returns when ``RUNLEASE_SERVER`` is set.

It has the attributes adapters use (``settings``, ``broker``, ``ledger``,
``close()``) and nothing that would need a key: asking it for ``store``,
``keyring`` or ``db`` is a clear :class:`ConfigError`, not an AttributeError.
"""

from __future__ import annotations

from typing import Any

from runlease.errors import ConfigError
from runlease.remote.broker import RemoteBroker, RemoteLedger
from runlease.remote.http import ServerClient
from runlease.settings import Settings


class RemoteRuntime:
    def __init__(self, settings: Settings, client: ServerClient) -> None:
        self.settings = settings
        self.client = client
        self.broker = RemoteBroker(client)
        self.ledger = RemoteLedger(client)

    @property
    def remote(self) -> bool:
        return True

    def close(self) -> None:
        self.client.close()

    def __getattr__(self, name: str) -> Any:
        raise ConfigError(f"'{name}' needs a runlease home, but RUNLEASE_SERVER={self.settings.server} is set: "
                          "this client only talks to the server")


#: One client per (server, token file, CA): components open a runtime per lease block, and a
#: fresh pool each time would lose the keep-alive connection.
_CLIENTS: dict[tuple[str, str, str, float], ServerClient] = {}


def open_remote_runtime(settings: Settings) -> RemoteRuntime:
    assert settings.server is not None
    key = (settings.server, str(settings.token_file), str(settings.server_ca or ""), settings.server_timeout)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = ServerClient(settings.server, settings.token_file, ca_file=settings.server_ca,
                                              timeout=settings.server_timeout)
    return _SharedClientRuntime(settings, client)


class _SharedClientRuntime(RemoteRuntime):
    """Closing it keeps the shared pool (and its warm connections) for the next runtime."""

    def close(self) -> None:
        pass
