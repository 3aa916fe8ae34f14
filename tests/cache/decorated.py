"""A function cached in Redis, imported by the test and by a second process."""

from __future__ import annotations

import os

from proxy.cache.decorator import DistributedCacheDecorator


@DistributedCacheDecorator(ttl=60, cache_backend="redis")
def fetch_llm_response(prompt: str, model: str = "gpt-4") -> dict:
    # The pid tells which process computed the value.
    return {"prompt": prompt, "model": model, "computed_by": os.getpid()}


if __name__ == "__main__":
    import sys

    import orjson

    # Run as __main__, this file's own function has another qualified name: use the module's.
    from tests.cache.decorated import fetch_llm_response as shared

    sys.stdout.write(orjson.dumps({"value": shared(sys.argv[1]), "stats": vars(shared.stats)}).decode())
