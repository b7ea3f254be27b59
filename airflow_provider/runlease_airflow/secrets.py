"""``RunleaseBackend``: Airflow connections, variables and config values as run-bound leases.

Configure it the normal way::

    [secrets]
    backend = runlease_airflow.secrets.RunleaseBackend
    backend_kwargs = {"env": "prod", "connections_lookup_pattern": "^(warehouse|registry)$"}

(workers read ``[workers] secrets_backend`` first; per-key overrides come from
``AIRFLOW__SECRETS__BACKEND_KWARG__<KEY>``; see :mod:`runlease_airflow.config`
for every kwarg.)

What a lookup does:

1. Map the Airflow ID to a runlease path (prefix, optional lookup pattern). An
   ID that is not ours returns None at once, so Airflow asks the next backend.
2. Find out who is asking. Inside the API server (API-server mode,
   :mod:`runlease_airflow.api_server`) it is the task instance named by the
   Execution API token Airflow validated, verified against the metadata DB
   (:mod:`runlease_airflow.ti_identity`). Elsewhere (in-process mode,
   :mod:`runlease_airflow.identity`) it is what the process says: inside a task
   try -- template rendering, execute, callbacks -- the value is *leased* to
   that try (reusing a still-valid lease from :mod:`runlease_airflow.lease_cache`);
   at DAG-parse time and outside any task it is an audited *read*.
3. A secret runlease does not hold returns None (fall through) *before* policy
   is consulted: runlease has no authority over a secret it does not hold, and
   the same ID may legitimately live in the next backend (the metadata
   database, or an API server's chain resolving it for a task). The cost is
   that a caller can learn whether runlease holds an ID, never its value. For a
   secret runlease holds, a policy denial raises
   :class:`~runlease_airflow.errors.RunleaseAccessDenied` (no fall through; a 403
   from the Execution API in API-server mode),
   and so does a row that fails authentication
   (:class:`~runlease_airflow.errors.RunleaseTampered`): whoever edited it must
   not be able to hand the task the next backend's credential instead;
   other failures propagate, and Airflow logs them and tries the next backend.
4. Every value handed out is registered with Airflow's masker and runlease's
   redactor before Airflow sees it (:mod:`runlease_airflow.masking`).
5. The value is read once (one request on a remote store) and, for a
   connection, validated -- URI/JSON parsed, ``port`` an integer -- *before*
   it is leased or read on the record: a malformed connection never leaves an
   active lease, and the error names the path and conn id, never the value.
6. With the kwarg ``aws_secrets_manager``, an ID runlease does not hold is
   looked up in Airflow's own SecretsManagerBackend layout, read only, and
   then leased and audited the same way (:mod:`runlease_airflow.aws_layout`).

Lookups are methods of Airflow's ``BaseSecretsBackend``
(``airflow/_shared/secrets_backend/base.py``): ``get_conn_value``,
``get_connection``, ``get_variable``, ``get_config``. ``get_connection`` is
overridden to build the Connection from the stored dict directly instead of a
URI round trip; the class Airflow set with ``_set_connection_class`` (the Task
SDK's in workers, ``airflow.models.Connection`` on the server) is honoured.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any

from runlease.audit import correlation
from runlease.connection import connection_from_dict, parse_connection
from runlease.errors import (AccessDeniedError, ConfigError, IntegrityError, InvalidValueError, RunleaseError,
                             SecretNotFoundError)
from runlease.models import SecretPath, SecretValue
from runlease.integrity.rowauth import RowKeyNotLoadedError

from runlease_airflow import api_server
from runlease_airflow.config import BACKEND, BackendConfig
from runlease_airflow.identity import Caller, current_caller
from runlease_airflow.masker_bridge import install_sdk_masker_bridge
from runlease_airflow.masking import connection_extra_text, protect
from runlease_airflow.process_state import ProcessState, state_for

#: How many values' connection forms a backend keeps (see RunleaseBackend._connections).
CONNECTION_MEMO_MAX = 64

try:
    from airflow.sdk.bases.secrets_backend import BaseSecretsBackend
except ImportError:  # pragma: no cover - core-only installs
    from airflow.secrets import BaseSecretsBackend  # type: ignore[no-redef]


class RunleaseBackend(BaseSecretsBackend):
    """Resolve Airflow secrets from runlease, leasing each one to the task try that asked."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.config = BackendConfig.from_kwargs(kwargs)
        # Cover core-configured log handlers with the SDK masker (see masker_bridge: without
        # it the LocalExecutor echoes task output unmasked to the scheduler's console).
        install_sdk_masker_bridge()
        try:
            self._state = state_for(self.config.settings)
        except RunleaseError as err:
            settings = self.config.settings
            key_source = "RUNLEASE_MASTER_KEY" if settings.master_key is not None else str(settings.key_file)
            raise ConfigError(
                f"{BACKEND} backend_kwargs 'home': cannot open the runlease home {settings.home} "
                f"(kwarg 'home' or RUNLEASE_HOME; key from {key_source}): {err}"
            ) from None
        self._airflow_layout: Any = None
        #: The canonical form of values already turned into connections, by the value object: a
        #: cached lease hands out the same object on every hit, so its (validated) connection is
        #: reused instead of parsed again. Holds the value itself, so an id is never reused while
        #: it is here; bounded. (Plaintext in this process's memory, as in the lease cache and the
        #: broker's version cache it comes from: no new exposure.)
        self._connections: OrderedDict[int, tuple[Any, dict[str, Any]]] = OrderedDict()
        self._connections_lock = threading.Lock()
        if self.config.aws_secrets_manager not in (None, False):
            from runlease_airflow.aws_layout import AirflowLayoutSource

            self._airflow_layout = AirflowLayoutSource.from_kwarg(self.config.aws_secrets_manager,
                                                                  self._state.runtime.store)
        # A central manager's SDK (Vault: hvac) loads now, not in the first lookup: Airflow's own
        # backends import theirs with their module, before the first lookup too.
        prepare = getattr(self._state.runtime.broker.store, "prepare", None)
        if prepare is not None:
            prepare()

    # -- what other modules use -------------------------------------------------

    @property
    def state(self) -> ProcessState:
        return self._state

    @property
    def broker(self) -> Any:
        return self._state.runtime.broker

    # -- Airflow's interface ------------------------------------------------------

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        """The connection as Airflow's JSON connection format (for callers that want a string)."""
        conn = self._connection_dict(conn_id)
        return json.dumps(conn) if conn is not None else None

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        conn = self._connection_dict(conn_id)
        if conn is None:
            return None
        conn_class = self._get_connection_class()
        return conn_class(
            conn_id=conn_id,
            conn_type=conn.get("conn_type"),
            host=conn.get("host"),
            login=conn.get("login"),
            password=conn.get("password"),
            schema=conn.get("schema"),
            port=conn.get("port"),
            extra=connection_extra_text(conn),
        )

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        value = self._resolve("variables", key)
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value)

    def get_config(self, key: str) -> str | None:
        value = self._resolve("config", key)
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value)

    # -- the lookup ----------------------------------------------------------------

    def _connection_dict(self, conn_id: str) -> dict[str, Any] | None:
        value = self._resolve("connections", conn_id)
        if value is None:
            return None
        with self._connections_lock:
            known = self._connections.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        conn = _as_connection(value, conn_id, self.config.path_for("connections", conn_id))
        with self._connections_lock:
            self._connections[id(value)] = (value, conn)
            while len(self._connections) > CONNECTION_MEMO_MAX:
                self._connections.popitem(last=False)
        return conn

    def _resolve(self, secret_type: str, secret_id: str) -> SecretValue | None:
        path = self.config.path_for(secret_type, secret_id)
        if path is None:
            return None
        # Inside the API server (API-server mode) the caller is the task instance named by the
        # Execution API token Airflow validated; elsewhere, the process's own task context.
        caller = api_server.current_api_caller() or current_caller()
        # Every store request of this lookup -- the cache's revalidation reads included, which
        # run outside the broker -- carries the caller's X-Correlation-ID (Vault's audit log).
        # A store that offers a read scope (Vault) fetches each state record once per lookup:
        # "is it held?" and the broker's own resolve share one request.
        scope = getattr(self.broker.store, "read_scope", None)
        try:
            with correlation.bound(caller.identity), (scope() if scope is not None else nullcontext()):
                if caller.leases:
                    return self._lease(path, caller, secret_id)
                return self._hand_out(path, caller, {"phase": caller.phase}, self._fetch(path, secret_id))
        except SecretNotFoundError:
            return self._from_airflow_layout(secret_type, secret_id, path, caller)
        except AccessDeniedError as err:
            raise api_server.access_denied(str(err)) from None
        except (IntegrityError, RowKeyNotLoadedError) as err:
            self.broker.report_tampering(err, "lease" if caller.leases else "read", caller.identity, path=str(path))
            raise api_server.tampered(str(err)) from None

    def _from_airflow_layout(self, secret_type: str, secret_id: str, path: SecretPath,
                             caller: Caller) -> SecretValue | None:
        """An ID runlease does not hold, from Airflow's SecretsManagerBackend layout (opt-in, read only).

        Validated, then leased or read through the broker like any secret --
        policy on the runlease path, audit (naming the AWS secret and
        VersionId), masking -- always as ``static`` (see runlease_airflow.aws_layout).
        """
        if self._airflow_layout is None:
            return None
        from runlease.store.base import StoredSecret
        from runlease_airflow.aws_layout import SOURCE

        found = self._airflow_layout.lookup(secret_type, secret_id)
        if found is None:
            return None
        if secret_type == "connections":
            _as_connection(found.value, secret_id, path)
        stored = StoredSecret(path=path, version=0, value=found.value, metadata={})
        detail = {"phase": caller.phase, "source": SOURCE, "aws_name": found.name,
                  "aws_version_id": found.version_id}
        try:
            return self._hand_out(path, caller, detail, stored)
        except AccessDeniedError as err:
            raise api_server.access_denied(str(err)) from None

    def _hand_out(self, path: SecretPath, caller: Caller, detail: dict[str, Any], stored: Any) -> SecretValue:
        """Lease ``stored`` to the caller's task try (cached when enabled) or read it on the record; mask it.

        The one place a fetched value leaves the broker, for runlease's own
        records and Airflow's layout alike, so both are audited, masked and
        cached the same way.
        """
        broker = self.broker
        if caller.leases:
            lease = broker.lease(path, caller.identity, self.config.ttl, kind=path.kind, detail=detail,
                                 fetched=stored)
            protect(lease.value)
            if self.config.cache:
                self._state.leases.put(lease)
            return lease.value
        value = broker.read(path, caller.identity, kind=path.kind, detail=detail, fetched=stored).value
        protect(value)
        return value

    def _current_version(self, path: SecretPath) -> int:
        """CURRENT of ``path`` for the lease cache; 0 for an ID only Airflow's layout holds."""
        store = self.broker.store
        # A store may answer "which version is CURRENT?" more cheaply than a full resolve (AWS: the
        # GetSecretValue Airflow's own backend makes, instead of a DescribeSecret).
        current = getattr(store, "current_version", None)
        try:
            return int(current(path) if current is not None else store.resolve(path).version)
        except SecretNotFoundError:
            if self._airflow_layout is None:
                raise
            return 0

    def _fetch(self, path: SecretPath, secret_id: str) -> Any:
        """Read CURRENT through the broker's cache: not held -> SecretNotFoundError (fall through, see 3.).

        A connection is validated here, *before* anything is leased or read
        on the record: a malformed one must not leave an active lease behind.
        One round trip on AWS (the broker reuses what was read).
        """
        stored = self.state.runtime.broker.cache.get(path)
        if path.kind == "connections":
            _as_connection(stored.value, secret_id, path)
        return stored

    def _lease(self, path: SecretPath, caller: Caller, secret_id: str) -> SecretValue:
        state = self._state
        broker = state.runtime.broker
        if self.config.cache:
            cached = state.leases.get(
                caller.identity, path,
                revalidate_seconds=self.config.cache_revalidate_seconds,
                current_version=self._current_version,
                lease_state=broker.ledger.lease_state,
            )
            if cached is not None:
                # Protected when it was leased: the cache lives in this process only.
                return cached.value
        stored = self._fetch(path, secret_id)  # not held -> fall through (module docstring, 3.); validated
        return self._hand_out(path, caller, {"phase": caller.phase}, stored)


def _as_connection(value: Any, conn_id: str, path: SecretPath | None) -> dict[str, Any]:
    """A stored or leased connection in canonical form; errors name the path and conn id, never the value.

    A URI or JSON string is parsed, a dict validated (``port`` must be an
    integer, ``extra`` an object), exactly as ``runlease put`` does.
    """
    try:
        if isinstance(value, str):
            return parse_connection(value)
        return connection_from_dict(value)
    except InvalidValueError as err:
        raise InvalidValueError(f"{BACKEND}: connection {conn_id!r} ({path}): {err}") from None
