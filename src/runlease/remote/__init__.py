"""The client side of ``runlease serve``: a broker-like object that holds no key, store or ledger.

With ``RUNLEASE_SERVER`` set, :func:`runlease.runtime.open_runtime` returns a
:class:`~runlease.remote.runtime.RemoteRuntime` instead of opening a home, so
the CLI, runlease_kfp and Python callers use the server unchanged. Only
urllib3 is needed (no FastAPI).
"""
