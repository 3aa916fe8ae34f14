"""Errors raised by the retrieval package on input it cannot use.

    RetrievalInputError (ValueError)       the call's arguments are wrong
    ├── InvalidDocumentError (TypeError)   a document is not a string, or the
    │                                      documents are not a sequence/mapping
    └── UnknownCorpusError (LookupError)   the sidecar has no corpus by that name

Each message names the offending argument, so the sidecar can hand it back to
the caller unchanged (``param`` says which field of a request it concerns).
"""

from __future__ import annotations


class RetrievalInputError(ValueError):
    """An argument to a retrieval call is unusable; ``param`` names it."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidDocumentError(RetrievalInputError, TypeError):
    """A document is not text, or the documents are not a sequence or mapping."""


class UnknownCorpusError(RetrievalInputError, LookupError):
    """No corpus is configured under the requested name."""
