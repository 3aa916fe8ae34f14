"""A value that never prints: provider keys live in ``Secret`` from the moment they are read."""

from __future__ import annotations

from typing import Any

from pydantic_core import core_schema


class Secret:
    """Holds a credential; ``str``/``repr`` and config dumps show ``***``.

    ``reveal()`` is called in exactly one place, where the upstream request's
    auth header is set (``proxy/auth.py``).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        def coerce(value: Any) -> Secret:
            if isinstance(value, Secret):
                return value
            if not isinstance(value, str):
                raise ValueError("must be a string")
            return cls(value)

        return core_schema.no_info_plain_validator_function(
            coerce, serialization=core_schema.plain_serializer_function_ser_schema(lambda _: "***")
        )
