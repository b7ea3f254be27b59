"""moto's server mode on 127.0.0.1, once per session: AWS over real HTTP, no AWS account.

Why server mode and not ``mock_aws``: the code under test builds its own
boto3 client from a stored connection (``extra.endpoint_url``), exactly as
in production; in-process patching would bypass the endpoint, the timeouts
and the HTTP error handling we want to exercise.

The recorder (moto's ``/moto-api/recorder/*`` endpoints) captures raw
requests, so a test can check what actually went over the wire (session
tags, RoleSessionName). Its file lives in a temp dir, never the checkout.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from support.postgres import free_port

_RECORDING = Path(tempfile.gettempdir()) / f"runlease-moto-recording-{os.getpid()}.jsonl"
# Read by moto when it creates its recorder (at import), so set it before anything imports moto.
os.environ.setdefault("MOTO_RECORDER_FILEPATH", str(_RECORDING))

ACCOUNT = "123456789012"  # moto's default account


@dataclass
class MotoServer:
    endpoint: str

    def _call(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/recorder/{path}", data=b"", timeout=10) as resp:
            return resp.read().decode()

    def start_recording(self) -> None:
        self._call("reset-recording")
        self._call("start-recording")

    def recorded(self) -> list[dict[str, object]]:
        """Requests received since ``start_recording``: method, url, headers and (form) params."""
        self._call("stop-recording")
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/recorder/download-recording", timeout=10) as resp:
            text = resp.read().decode()
        out = []
        for line in text.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode(errors="replace")
            entry["params"] = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
            out.append(entry)
        return out

    def reset(self) -> None:
        """Drop every resource moto holds (between tests that must not see each other's roles)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    moto_server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed (extra: dev)")
    import moto.moto_api

    # If moto was imported before this module set the variable, point its recorder here anyway.
    if getattr(moto.moto_api.recorder, "_location", None) != str(_RECORDING):
        moto.moto_api.recorder._location = str(_RECORDING)
    port = free_port()
    server = moto_server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoServer(endpoint=f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        _RECORDING.unlink(missing_ok=True)
