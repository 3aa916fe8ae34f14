"""The two values retrieval passes around: a ``Chunk`` of a document and a scored ``Passage``.

Both are small frozen dataclasses so they hash, compare and serialise (orjson
encodes dataclasses natively) without ceremony. Offsets are character offsets
into the original document text, so ``document[chunk.start:chunk.end] == chunk.text``
always holds.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A document's identity: its index in a list of documents, or its key in a mapping.
DocumentId = int | str


@dataclass(frozen=True, slots=True)
class Chunk:
    """A contiguous piece of one document: ``text == document[start:end]``."""

    doc_id: DocumentId
    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk judged relevant to a query, with its score (higher is more relevant)."""

    doc_id: DocumentId
    text: str
    start: int
    end: int
    score: float

    @classmethod
    def of(cls, chunk: Chunk, score: float) -> Passage:
        return cls(chunk.doc_id, chunk.text, chunk.start, chunk.end, score)
