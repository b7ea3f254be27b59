"""Secrets written for Airflow's own ``SecretsManagerBackend``, read (never written) by RunleaseBackend.

Why: a team moving from ``airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend``
has its connections and variables in AWS Secrets Manager under Airflow's
layout, and must not have to rewrite every secret before switching. With the
backend kwarg ``aws_secrets_manager`` set, an ID runlease itself does not hold
is looked up in that layout and then leased (or, outside a task, read) and
audited exactly like a runlease secret; writes always use runlease's own
layout (``runlease put``).

The layout and its parser live in the core (:mod:`runlease.store.aws_airflow`),
shared with ``runlease import aws:``; this module only turns the backend kwarg
into a reader. The audit event names the AWS secret and its VersionId
(``detail.source``), and the lease's version is 0 (not a runlease version).
Such a lease is always ``static``: runlease holds no issuer settings for a
secret it did not write.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from runlease.clients.awsclient import AwsService
from runlease.errors import ConfigError
from runlease.store.aws_airflow import CONN_WORDS, Found, LayoutOptions
from runlease.store.aws_airflow import AirflowLayoutSource as _CoreSource

from runlease_airflow.config import BACKEND

__all__ = ["CONN_WORDS", "Found", "LayoutOptions", "AirflowLayoutSource", "KWARG", "SOURCE"]

KWARG = "aws_secrets_manager"
SOURCE = "airflow-secrets-manager"


class AirflowLayoutSource(_CoreSource):
    """The core reader, built from the backend kwarg (errors name the kwarg)."""

    @classmethod
    def from_kwarg(cls, raw: Any, store: Any) -> "AirflowLayoutSource | None":
        """None when the kwarg is off; a ConfigError naming the kwarg when it is malformed."""
        if raw in (None, False, "", "false"):
            return None
        if raw is True or raw == "true":
            raw = {}
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raise ConfigError(f"{BACKEND} backend_kwargs {KWARG!r}: must be true or a JSON object") from None
        try:
            options = LayoutOptions.model_validate(raw)
        except ValidationError as err:
            parts = [f"{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg']}" for e in err.errors()]
            raise ConfigError(f"{BACKEND} backend_kwargs {KWARG!r}: " + "; ".join(parts)) from None
        if options.client is not None:
            service = AwsService("secretsmanager", options.client, label="AWS Secrets Manager (Airflow layout)")
        elif getattr(store, "name", None) == "aws":
            service = store.service
        else:
            raise ConfigError(f"{BACKEND} backend_kwargs {KWARG!r}: the store is not aws; give the AWS client "
                              "settings under 'client' (region, endpoint_url, role_arn, ...)")
        return cls(options, service)
