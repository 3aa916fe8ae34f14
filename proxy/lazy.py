"""Package exports loaded on first use.

A package lists ``name -> module`` and gets a module ``__getattr__``, so the
library's names (``from proxy import ConcurrentRouter``) cost nothing to a process
that does not use them. Not a way around an import cycle: the import-graph test
(``tests/test_imports.py``) counts these names as imports.
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
