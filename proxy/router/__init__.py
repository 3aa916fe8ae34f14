"""The router: a model group's endpoints, each limited by a semaphore, with fallback and health.

    config.py      the ``router`` section and the model groups (an endpoint's own
                   fields are in ``proxy/endpoint_config.py``)
    endpoint.py    ``ModelEndpoint`` (the library's endpoint) and ``Endpoint`` (live state)
    selection.py   the order in which a call tries endpoints (pure): tier, zone, balance
    circuit.py     passive health: the circuit breaker per endpoint
    cooldown.py    ``Retry-After`` and rate-limit reset headers → a rest time
    health.py      active health: background probes of a cheap URL
    translated.py  an answer read through a cross-dialect translation
    router.py      ``Router.route(call)``: slots, fallback, retries (the pipeline's seam)
    library.py     ``ConcurrentRouter``: the same router as a library, from a prompt

Discovered endpoints (``proxy/discovery/``) join and leave a group through
``Router.discovered``.

Import from the modules: the package itself loads nothing, so reading the config
(``router/config.py``) does not load the router, its upstream client and aiohttp.
"""
