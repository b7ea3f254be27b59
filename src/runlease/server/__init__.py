"""``runlease serve``: the broker as a network service (extra ``server``: FastAPI, uvicorn, PyJWT).

Only the server imports FastAPI; ``import runlease`` and the clients do not
(see :mod:`runlease.remote` for the client side).
"""
