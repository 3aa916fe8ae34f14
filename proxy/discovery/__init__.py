"""Endpoints found at run time: a Service's ready pods, or a DNS name's addresses.

    config.py    the model group's ``discover`` section and its endpoint template
    sources.py   ``Address``: what a source reports (host, port, zone, zone hints)
    kube.py      ``EndpointSliceWatch``: list + watch of a Service's EndpointSlices over
                 the API server's HTTP interface (aiohttp, in-cluster service account)
    dns.py       ``DnsWatch``: A/AAAA look-ups re-done on the record's TTL (dnspython)
    manager.py   ``Discovery``: one watch per discovering model group, feeding the router

The router turns each address into an endpoint (``Router.discovered``); the sidecar
starts and stops the watches with the app (``proxy/server.py``) and on reloads.
"""
