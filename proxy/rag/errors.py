"""Errors raised by the retrieval package.

    RetrievalInputError (ValueError)       the call's arguments are wrong
    ├── InvalidDocumentError (TypeError)   a document is not a string, or the
    │                                      documents are not a sequence/mapping
    └── UnknownCorpusError (LookupError)   the sidecar has no corpus by that name

    RetrievalUnavailable (proxy.errors.ProxyError, 503 api_error)
    ├── VectorStoreError                   the vector store failed or cannot be reached
    └── EmbeddingsError                    the embeddings model group gave no vectors

Each input error's message names the offending argument, so the sidecar can hand
it back to the caller unchanged (``param`` says which field of a request it
concerns). The unavailable ones are ``ProxyError``s, so a call that needs them
gets them in its own dialect; Milvus's exceptions become ``VectorStoreError`` in
``proxy/rag/milvus.py`` only.
"""

from __future__ import annotations

from proxy.errors import ProxyError


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


class RetrievalUnavailable(ProxyError):
    """A part that dense retrieval needs failed; BM25 (in ``hybrid`` mode) does not need it."""

    status = 503


class VectorStoreError(RetrievalUnavailable):
    """The vector store refused, failed or did not answer in time."""


class EmbeddingsError(RetrievalUnavailable):
    """The embeddings model group answered with an error or not at all."""
