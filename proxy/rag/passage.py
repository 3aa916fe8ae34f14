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
    """A contiguous piece of one document: ``text == document[start:end]``.

    ``title`` is the heading path above the chunk (Markdown chunking), indexed with
    the text so that a section's title finds every chunk of it.
    """

    doc_id: DocumentId
    text: str
    start: int
    end: int
    title: str = ""

    @property
    def indexed_text(self) -> str:
        """What is searched: the title, then the text."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk judged relevant to a query, with its score (higher is more relevant)."""

    doc_id: DocumentId
    text: str
    start: int
    end: int
    score: float
    title: str = ""

    @classmethod
    def of(cls, chunk: Chunk, score: float) -> Passage:
        return cls(chunk.doc_id, chunk.text, chunk.start, chunk.end, score, chunk.title)

    @property
    def key(self) -> tuple[str, int, int]:
        """The chunk's identity across rankings (BM25 and dense lists of the same corpus)."""
        return (str(self.doc_id), self.start, self.end)
