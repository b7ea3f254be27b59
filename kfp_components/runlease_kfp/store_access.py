"""How a component pod reaches the store: ``runlease serve`` with a workload token, or a Kubernetes Secret.

**Server mode (the default for clusters)**: ``StoreAccess.server(url)``. The
pod gets only the server's URL and a *projected service-account token*
(audience ``runlease``, short-lived, rotated by the kubelet): no key, no
home, no store credential. The server verifies the token against the
cluster's JWKS and applies the policy's ``workloads`` grants to it, so a
component cannot pretend to be another pipeline. kfp-kubernetes 2.16 has no
call for a projected token volume (its executor config has secret,
ConfigMap, PVC, empty-dir and ephemeral volumes only), so the task gets a
pod label (:data:`TOKEN_POD_LABEL`) and the volume is injected by a Kubeflow
``PodDefault`` selecting that label (:func:`pod_default_manifest`, one per
profile namespace; docs/kfp.md). A custom CA for the server's certificate
comes from a ConfigMap. The compiled YAML holds the URL, the token path and
the label: nothing secret.

**Secret mode** (one-machine setups, migration):

The store's access credential (``RUNLEASE_MASTER_KEY`` for the embedded
store, a Vault token or AWS credentials for a central manager) is exactly
the kind of value KFP must never see as a parameter: parameters land in the
pod spec, the UI and ML Metadata. A compiled pipeline references the
Secret by *name* only; the kubelet injects its data at pod start
(kfp-kubernetes ``use_secret_as_env`` / ``use_secret_as_volume``, compiled
into ``platforms.kubernetes.deploymentSpec.executors.<exec>.secretAsEnv`` /
``secretAsVolume``). Non-secret settings (``RUNLEASE_ENV``, ``RUNLEASE_STORE``)
may go in as plain env, and anything that looks secret is refused there.

The Secret is mounted only on tasks that can lease (their component declares
the identity inputs), so a third-party step in the same pipeline gets no
access to the store.

Under kfp.local none of this applies (it ignores kfp-kubernetes settings and
``set_env_variable``): the component subprocess inherits the caller's
environment, which is how local runs reach ``RUNLEASE_HOME`` /
``RUNLEASE_MASTER_KEY``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from kfp import dsl, kubernetes

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Kubernetes Secret data keys (``[-._a-zA-Z0-9]+``) and object names (DNS-1123 subdomain).
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
#: Plain-env settings whose name suggests a credential must come from the Secret instead.
_SECRET_WORDS = ("KEY", "TOKEN", "PASSWORD", "SECRET", "CREDENTIAL")


#: Where the PodDefault mounts the projected token (audience ``runlease``).
PROJECTED_TOKEN_DIR = "/var/run/secrets/runlease"
PROJECTED_TOKEN_PATH = f"{PROJECTED_TOKEN_DIR}/token"
#: The pod label that makes the PodDefault inject the projected token volume.
TOKEN_POD_LABEL = ("runlease.dev/workload-token", "projected")
#: Where a ConfigMap with the server's CA certificate (key ``ca.crt``) is mounted.
CA_MOUNT_PATH = "/etc/runlease/server-ca"


def _default_secret_env() -> dict[str, str]:
    return {"RUNLEASE_HOME": "RUNLEASE_HOME", "RUNLEASE_MASTER_KEY": "RUNLEASE_MASTER_KEY"}


@dataclass(frozen=True)
class StoreAccess:
    """The Kubernetes Secret (and plain settings) that let a component open the store.

    ``secret_env`` maps Secret data keys to environment variables, as
    kfp-kubernetes ``use_secret_as_env`` does. ``mount_path``, when set, also
    mounts the whole Secret as files there (a Vault token file, an AWS
    credentials file). ``settings`` are plain, non-secret ``RUNLEASE_*`` env.
    """

    secret_name: str = "runlease-store"
    secret_env: Mapping[str, str] = field(default_factory=_default_secret_env)
    mount_path: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    #: Server mode: the URL of ``runlease serve``; no Secret is mounted then.
    server_url: str | None = None
    token_path: str = PROJECTED_TOKEN_PATH
    #: ConfigMap holding ``ca.crt`` when the server's certificate is not publicly trusted.
    server_ca_config_map: str | None = None

    @classmethod
    def server(cls, url: str, *, token_path: str = PROJECTED_TOKEN_PATH, server_ca_config_map: str | None = None,
               settings: Mapping[str, str] | None = None) -> "StoreAccess":
        """Reach ``runlease serve`` at ``url`` with the pod's projected service-account token; mount no Secret.

        ``token_path`` may instead be the automounted token
        (``/var/run/secrets/kubernetes.io/serviceaccount/token``) where no PodDefault can be
        installed; the server's ``--oidc-audience`` must then be the API server's audience.
        """
        return cls(secret_env={}, server_url=url, token_path=token_path, server_ca_config_map=server_ca_config_map,
                   settings=dict(settings or {}))

    def __post_init__(self) -> None:
        if self.server_url is not None:
            self._check_server_mode()
        if not _SECRET_NAME.fullmatch(self.secret_name):
            raise ValueError(f"secret_name {self.secret_name!r} is not a valid Kubernetes Secret name")
        if not self.secret_env and self.mount_path is None and self.server_url is None:
            raise ValueError("StoreAccess needs secret_env or mount_path: the pod must get the store credential somehow")
        for key, env in self.secret_env.items():
            if not _SECRET_KEY.fullmatch(key):
                raise ValueError(f"secret key {key!r} of {self.secret_name} is not a valid Kubernetes Secret data key")
            if not _ENV_NAME.fullmatch(env):
                raise ValueError(f"environment variable name {env!r} (for secret key {key!r}) is not valid")
        if self.mount_path is not None and not self.mount_path.startswith("/"):
            raise ValueError(f"mount_path {self.mount_path!r} must be absolute")
        for env in self.settings:
            if not _ENV_NAME.fullmatch(env):
                raise ValueError(f"environment variable name {env!r} in settings is not valid")
            if any(word in env.upper() for word in _SECRET_WORDS):
                raise ValueError(
                    f"{env} looks like a credential: put it in the Kubernetes Secret {self.secret_name!r} "
                    "(secret_env), never in plain env, which is part of the compiled pipeline"
                )
            if env in self.secret_env.values():
                raise ValueError(f"{env} is set both from the Secret and as a plain setting")

    def _check_server_mode(self) -> None:
        url = self.server_url or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server_url {url!r} must be an http(s) URL")
        if parts.username or parts.password or parts.query:
            raise ValueError("server_url must not carry credentials or a query: it is compiled into the pipeline")
        if self.secret_env or self.mount_path is not None:
            raise ValueError("server mode mounts no Secret: the pod holds only its service-account token")
        if not self.token_path.startswith("/"):
            raise ValueError(f"token_path {self.token_path!r} must be absolute")
        if self.server_ca_config_map is not None and not _SECRET_NAME.fullmatch(self.server_ca_config_map):
            raise ValueError(f"server_ca_config_map {self.server_ca_config_map!r} is not a valid ConfigMap name")

    def apply(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """Mount the Secret, or wire the server URL and token (and set the settings) on one task; idempotent."""
        if self.server_url is not None:
            self._wire_server(task)
        else:
            self._mount_secret(task)
        for env, value in self.settings.items():
            task.set_env_variable(env, value)
        return task

    def _mount_secret(self, task: dsl.PipelineTask) -> None:
        k8s = task.platform_config.get("kubernetes", {})
        if self.secret_env and not any(_names(e) == self.secret_name for e in k8s.get("secretAsEnv", [])):
            kubernetes.use_secret_as_env(task, secret_name=self.secret_name, secret_key_to_env=dict(self.secret_env))
        if self.mount_path is not None and not any(
            _names(v) == self.secret_name and v.get("mountPath") == self.mount_path for v in k8s.get("secretAsVolume", [])
        ):
            kubernetes.use_secret_as_volume(task, secret_name=self.secret_name, mount_path=self.mount_path)

    def _wire_server(self, task: dsl.PipelineTask) -> None:
        assert self.server_url is not None
        task.set_env_variable("RUNLEASE_SERVER", self.server_url)
        task.set_env_variable("RUNLEASE_TOKEN_FILE", self.token_path)
        if self.token_path.startswith(PROJECTED_TOKEN_DIR + "/"):
            kubernetes.add_pod_label(task, *TOKEN_POD_LABEL)
        if self.server_ca_config_map is not None:
            k8s = task.platform_config.get("kubernetes", {})
            if not any(v.get("mountPath") == CA_MOUNT_PATH for v in k8s.get("configMapAsVolume", [])):
                kubernetes.use_config_map_as_volume(task, config_map_name=self.server_ca_config_map,
                                                    mount_path=CA_MOUNT_PATH)
            task.set_env_variable("RUNLEASE_SERVER_CA", f"{CA_MOUNT_PATH}/ca.crt")


def pod_default_manifest(namespace: str, *, audience: str = "runlease", expiration_seconds: int = 3600,
                         name: str = "runlease-workload-token") -> dict[str, Any]:
    """The Kubeflow ``PodDefault`` that projects an audience-``runlease`` token into labelled pods.

    Apply it once per profile namespace (``kubectl apply -f``); it adds the
    projected volume to every pod with :data:`TOKEN_POD_LABEL`, which
    ``StoreAccess.server`` sets on the tasks that lease.
    """
    if expiration_seconds < 600:
        raise ValueError("Kubernetes requires expirationSeconds >= 600 for a projected token")
    key, value = TOKEN_POD_LABEL
    return {
        "apiVersion": "kubeflow.org/v1alpha1",
        "kind": "PodDefault",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "desc": "runlease workload token (projected service-account token, audience runlease)",
            "selector": {"matchLabels": {key: value}},
            "volumes": [{"name": "runlease-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": audience, "expirationSeconds": expiration_seconds, "path": "token"}}]}}],
            "volumeMounts": [{"name": "runlease-token", "mountPath": PROJECTED_TOKEN_DIR, "readOnly": True}],
        },
    }


def _names(entry: Mapping[str, object]) -> object:
    """The Secret name of a compiled secretAsEnv/secretAsVolume entry (old and new field)."""
    if entry.get("secretName"):
        return entry["secretName"]
    param = entry.get("secretNameParameter")
    if isinstance(param, Mapping):
        runtime = param.get("runtimeValue")
        if isinstance(runtime, Mapping):
            return runtime.get("constant")
    return None
