"""Keep botocore's DEBUG logging from printing credentials while runlease talks to AWS.

At DEBUG, botocore logs every response body (an AssumeRole response holds
the new secret key and session token; a GetSecretValue response holds the
secret) and every request's headers and canonical request (which carry
``X-Amz-Security-Token``). Those lines are emitted *during* the call, before
the broker can register the new values with the redactor, so masking
cannot catch them. Airflow task logs at DEBUG would keep them forever.

:func:`quiet_botocore` drops exactly those records, only in the calling
thread and only while runlease's own AWS call runs; the rest of the
process's botocore logging is untouched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Logger -> message prefixes whose records can carry credentials.
SECRET_BEARING: dict[str, tuple[str, ...]] = {
    "botocore.parsers": ("Response body",),
    # "Making request for ... with params": the request's parameters (PutSecretValue's SecretString,
    # an UpdateAccessKey's key id) before they are even sent.
    "botocore.endpoint": ("Making request for", "Sending http request", "Response body"),
    "botocore.auth": ("CanonicalRequest",),
}

_state = threading.local()
_install_lock = threading.Lock()
_installed = False


class _DropWhileQuiet(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(_state, "depth", 0):
            return True
        return not str(record.msg).startswith(self.prefixes)


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        for name, prefixes in SECRET_BEARING.items():
            logging.getLogger(name).addFilter(_DropWhileQuiet(prefixes))
        _installed = True


@contextmanager
def quiet_botocore() -> Iterator[None]:
    """Run AWS calls whose requests or responses hold credentials (nestable, per thread)."""
    _install()
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
