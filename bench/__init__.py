"""Benchmarks: ``python -m bench`` (``make bench``) runs every scenario module present.

``core`` measures what the sidecar adds to a direct call, next to a bare pass-through
(``passthrough.py``); ``load.py`` (the load generator) and ``procs.py`` (servers as
pinned subprocesses, RSS and CPU time from /proc) are shared by the other scenario
modules. Markdown results go to stdout and ``bench/results/`` (not committed).
"""
