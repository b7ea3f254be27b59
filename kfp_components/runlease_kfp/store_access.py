"""How a component pod reaches the store: a Kubernetes Secret, never a pipeline parameter.

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

from kfp import dsl, kubernetes

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Kubernetes Secret data keys (``[-._a-zA-Z0-9]+``) and object names (DNS-1123 subdomain).
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
#: Plain-env settings whose name suggests a credential must come from the Secret instead.
_SECRET_WORDS = ("KEY", "TOKEN", "PASSWORD", "SECRET", "CREDENTIAL")


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

    def __post_init__(self) -> None:
        if not _SECRET_NAME.fullmatch(self.secret_name):
            raise ValueError(f"secret_name {self.secret_name!r} is not a valid Kubernetes Secret name")
        if not self.secret_env and self.mount_path is None:
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

    def apply(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """Mount the Secret (and set the settings) on one task; idempotent."""
        k8s = task.platform_config.get("kubernetes", {})
        if self.secret_env and not any(_names(e) == self.secret_name for e in k8s.get("secretAsEnv", [])):
            kubernetes.use_secret_as_env(task, secret_name=self.secret_name, secret_key_to_env=dict(self.secret_env))
        if self.mount_path is not None and not any(
            _names(v) == self.secret_name and v.get("mountPath") == self.mount_path for v in k8s.get("secretAsVolume", [])
        ):
            kubernetes.use_secret_as_volume(task, secret_name=self.secret_name, mount_path=self.mount_path)
        for env, value in self.settings.items():
            task.set_env_variable(env, value)
        return task


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
