"""``token``: random API keys that runlease itself verifies.

The target system *is* runlease: a service checking a client's key calls
:meth:`runlease.broker.Broker.verify_presented_key`, which accepts CURRENT or
PREVIOUS. So ``set`` has nothing to apply (PENDING is never accepted), and
``finish``/``retire`` are the engine's stage moves: CURRENT -> the new key,
PREVIOUS -> the old one (still accepted), and at retire the PREVIOUS label
goes away (no longer accepted). Clients that read the key during the grace
period keep working; no client ever sees a window where neither key works.
"""

from __future__ import annotations

import hmac
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runlease.errors import ConfigError
from runlease.models import SecretPath, SecretValue
from runlease.rotation.errors import RotationTestFailed
from runlease.rotation.state import Step
from runlease.rotation.rotators.base import RotationContext, new_secret_string, rotator_settings
from runlease.store.base import StoredSecret


class TokenSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Bytes of randomness (the key is URL-safe base64 of them: 32 -> 43 characters).
    length: int = Field(default=32, ge=16, le=256)
    #: A fixed, non-secret prefix (``rk_live_``) so scanners and people can tell keys apart.
    prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_\-]{0,32}$")


class TokenRotator:
    #: Steps whose work here never leaves runlease (see RotationEngine.rotate).
    offline_steps = frozenset({Step.CREATE, Step.SET, Step.TEST, Step.FINISH, Step.RETIRE})
    name = "token"

    def _settings(self, ctx: RotationContext) -> TokenSettings:
        return rotator_settings(TokenSettings, ctx.policy.settings, ctx.path, self.name)

    def check_settings(self, settings: dict[str, Any], path: SecretPath) -> None:
        rotator_settings(TokenSettings, settings, path, self.name)

    def create(self, ctx: RotationContext, current: StoredSecret) -> SecretValue:
        if not isinstance(current.value, str):
            raise ConfigError(f"rotator 'token' rotates string keys; {ctx.path} holds a connection")
        opts = self._settings(ctx)
        return new_secret_string(opts.length, opts.prefix)

    def set(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """Nothing to apply: verification reads the stages, and PENDING is never accepted."""

    def test(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """The key decrypts from the store as a string of the policy's shape, unlike the key in use."""
        opts = self._settings(ctx)
        value = pending.value
        if not isinstance(value, str) or not value.startswith(opts.prefix) or len(value) < len(opts.prefix) + opts.length:
            raise RotationTestFailed(f"PENDING v{pending.version} of {ctx.path} is not a {opts.length}-byte key")
        if isinstance(current.value, str) and hmac.compare_digest(current.value.encode(), value.encode()):
            raise RotationTestFailed(f"PENDING v{pending.version} of {ctx.path} equals CURRENT v{current.version}")

    def finish(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """Nothing outside runlease: the engine's stage moves make the new key CURRENT."""

    def retire(self, ctx: RotationContext, previous: StoredSecret, current: StoredSecret) -> None:
        """Nothing outside runlease: removing the PREVIOUS label is what stops verification accepting it."""

    def discard(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """Nothing outside runlease: PENDING was never accepted anywhere."""
