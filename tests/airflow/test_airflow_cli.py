"""The Airflow CLI resolving through runlease in a subprocess: providers list, connections/variables get."""

from __future__ import annotations

import json

import pytest

from runlease.ledger.base import AuditQuery
from runlease.runtime import Runtime

pytestmark = pytest.mark.slow


def reads_of(runtime: Runtime, path: str) -> list:
    return [e for e in runtime.ledger.events(AuditQuery(path=path)) if e.action == "read"]


def test_providers_list_shows_runlease(airflow_site) -> None:
    proc = airflow_site.airflow("providers", "list", "-o", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    providers = {p["package_name"]: p for p in json.loads(proc.stdout[proc.stdout.index("["):])}
    assert providers["runlease"]["version"] == "0.1.0"


def test_connections_get_resolves_through_runlease_as_an_audited_read(airflow_site, site_runtime: Runtime) -> None:
    before = len(reads_of(site_runtime, "dev/connections/warehouse"))
    proc = airflow_site.airflow("connections", "get", "warehouse", "-o", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (conn,) = json.loads(proc.stdout[proc.stdout.index("["):])
    # The runlease value, not the decoy AIRFLOW_CONN_WAREHOUSE further down the chain.
    assert (conn["host"], conn["login"], conn["schema"]) == ("warehouse.internal", "etl", "analytics")
    reads = reads_of(site_runtime, "dev/connections/warehouse")[before:]
    assert [(e.pipeline, e.run_id, e.detail["phase"], e.principal.startswith("unix:")) for e in reads] == [
        ("-", None, "outside", True)]


def test_variables_get_resolves_through_runlease(airflow_site) -> None:
    proc = airflow_site.airflow("variables", "get", "api_token")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == airflow_site.secrets.api_token  # asked for explicitly


def test_variables_get_of_an_ungranted_secret_is_denied_without_the_value(airflow_site, site_runtime: Runtime) -> None:
    proc = airflow_site.airflow("variables", "get", "feature_store_token")
    assert proc.returncode != 0
    assert airflow_site.secrets.feature_token not in proc.stdout + proc.stderr
    denied = [e for e in site_runtime.ledger.events(AuditQuery(path="dev/variables/feature_store_token"))
              if e.outcome.value == "denied"]
    assert [(e.action, e.pipeline) for e in denied] == [("read", "-")]
