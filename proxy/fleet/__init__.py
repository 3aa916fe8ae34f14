"""Fleet-wide limits: one provider budget for every sidecar that shares the cache's Redis.

    config.py   ``fleet:`` on an endpoint (max_concurrent, rpm, tpm, key) and ``router.fleet``
    scripts.py  the Lua scripts: acquire, release and settle, renew, heartbeat, cool
    grants.py   ``Grant`` / ``Denial``: what a budget answers (the router imports only this)
    budget.py   ``Fleet`` and its ``Budget``s: leases, waiting, local share when Redis is away

The router asks an endpoint's ``Budget`` once it has a local slot (``proxy/router/router.py``).
Import from the modules: reading the config loads only ``config.py``.
"""
