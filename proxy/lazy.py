"""Package exports loaded on first use.

A package lists ``name -> module`` and gets a module ``__getattr__``: the sidecar
process loads only what it runs, and packages whose modules import each other
do not run into one another half-initialised.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
