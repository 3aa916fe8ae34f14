"""Several config errors raised at once, each at its own field path.

A validator that raises ``ValueError`` reports one error at its own field; raising the
``ValidationError`` made here reports one error per problem, at the validator's path
followed by each problem's ``loc``, together with every other error of the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]


def problem(loc: Loc, message: str, value: Any = None) -> InitErrorDetails:
    # The message goes in as context, so braces in it (a path, a URL) are not a template.
    return InitErrorDetails(
        type=PydanticCustomError("value_error", "{message}", {"message": message}), loc=loc, input=value
    )


def carried(error: ValidationError) -> list[InitErrorDetails]:
    """``error``'s own errors, as they were (type, message, path), to be raised again with others."""
    return [problem(tuple(e["loc"]), e["msg"].removeprefix("Value error, "), e["input"]) for e in error.errors()]


def invalid(title: str, problems: Iterable[InitErrorDetails]) -> ValidationError:
    return ValidationError.from_exception_data(title, list(problems))
