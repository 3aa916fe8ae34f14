"""``python -m bench [NAME ...]``: the core benchmark, then every other scenario module present.

Each scenario module exposes ``main()``; one that is not there yet is skipped, one
that fails is reported and the others still run.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
import traceback

SCENARIOS = ("core", "hotpath", "streams", "memory", "cache", "chaos", "telemetry", "rag", "fleet", "discovery")


def run(name: str) -> bool:
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            print(f"bench: no bench/{name}.py, skipped", flush=True)
            return True
        raise
    print(f"\n==== bench.{name} ====", flush=True)
    argv, sys.argv = sys.argv, [f"bench.{name}"]  # each main parses its own (empty) command line
    try:
        result = module.main()
        if inspect.isawaitable(result):
            result = asyncio.run(result)
        return result in (None, 0)
    except SystemExit as exc:
        return exc.code in (None, 0)
    except Exception:
        traceback.print_exc()
        return False
    finally:
        sys.argv = argv


def main() -> int:
    names = sys.argv[1:] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"bench: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    failed = [name for name in names if not run(name)]
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
