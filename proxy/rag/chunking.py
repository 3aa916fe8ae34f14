"""Cutting documents into chunks: fixed-size windows, sentence/paragraph-aware packing, or Markdown sections.

A chunker is a callable ``(doc_id, text) -> Iterator[Chunk]`` (``Chunker``).
The built-in chunkers measure ``chunk_size`` and ``overlap`` in characters,
never return an empty or all-whitespace chunk, and keep offsets into the
original text (``text[chunk.start:chunk.end] == chunk.text``). Both are linear
in the length of the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from proxy.rag.errors import InvalidDocumentError, RetrievalInputError
from proxy.rag.passage import Chunk, DocumentId

Chunker = Callable[[DocumentId, str], Iterator[Chunk]]
#: Documents as callers give them: a sequence (ids are the indexes) or a mapping id → text.
Documents = Sequence[str] | Mapping[str, str] | Mapping[int, str] | Mapping[DocumentId, str]

# A sentence ends at CJK terminators (no space follows them in CJK text) or at
# Latin ones followed by whitespace or the end; closing quotes and brackets
# stay with their sentence. A blank line ends a paragraph.
_SENTENCE_END = re.compile(
    r"[。！？；]+[”’」』）》\"')\]]*"
    r"|[.!?]+[\"'”’)\]]*(?=\s|$)"
    r"|(?P<paragraph>\n[^\S\n]*\n\s*)"
)
# Where to cut a sentence that is longer than a whole chunk: after a space or a comma.
_SOFT_BREAK = re.compile(r"[\s,，、:：]")


def _validate_sizes(chunk_size: int, overlap: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise RetrievalInputError(f"chunk_size must be a positive integer, got {chunk_size!r}", param="chunk_size")
    if not isinstance(overlap, int) or overlap < 0:
        raise RetrievalInputError(f"overlap must be a non-negative integer, got {overlap!r}", param="overlap")
    if chunk_size <= overlap:
        raise RetrievalInputError(
            f"chunk_size ({chunk_size}) must be greater than overlap ({overlap})", param="chunk_size"
        )


def _trimmed(doc_id: DocumentId, text: str, start: int, end: int) -> Chunk | None:
    """The chunk ``text[start:end]`` without surrounding whitespace, or None if nothing is left."""
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return None
    left = len(piece) - len(piece.lstrip())
    return Chunk(doc_id, stripped, start + left, start + left + len(stripped))


@dataclass(frozen=True, slots=True)
class FixedSizeChunker:
    """Windows of ``chunk_size`` characters, each starting ``chunk_size - overlap`` after the last."""

    chunk_size: int = 1000
    overlap: int = 100

    def __post_init__(self) -> None:
        _validate_sizes(self.chunk_size, self.overlap)

    def __call__(self, doc_id: DocumentId, text: str) -> Iterator[Chunk]:
        step = self.chunk_size - self.overlap
        length = len(text)
        for start in range(0, length, step):
            end = min(start + self.chunk_size, length)
            chunk = _trimmed(doc_id, text, start, end)
            if chunk is not None:
                yield chunk
            if end == length:
                break


@dataclass(frozen=True, slots=True)
class SentenceChunker:
    """Whole sentences packed greedily into chunks of at most ``chunk_size`` characters.

    Contract: a chunk boundary falls between sentences whenever the sentence
    fits in a chunk; a sentence longer than ``chunk_size`` is cut after a space
    or comma near the limit (or at the limit if there is none). A new paragraph
    starts a new chunk once the current one is at least half full. Consecutive
    chunks share the trailing whole sentences of the earlier one, up to
    ``overlap`` characters (none if the last sentence alone is longer).
    """

    chunk_size: int = 1000
    overlap: int = 100

    def __post_init__(self) -> None:
        _validate_sizes(self.chunk_size, self.overlap)

    def __call__(self, doc_id: DocumentId, text: str) -> Iterator[Chunk]:
        size, overlap = self.chunk_size, self.overlap
        # Sentences of the chunk being packed, as (start, end) spans.
        current: list[tuple[int, int]] = []
        for start, end, new_paragraph in _sentences(text):
            if end - start > size:
                if current:
                    yield from _emit(doc_id, text, current[0][0], current[-1][1])
                    current = []
                yield from self._split_long(doc_id, text, start, end)
                continue
            if current:
                length = current[-1][1] - current[0][0]
                if end - current[0][0] > size or (new_paragraph and length * 2 >= size):
                    yield from _emit(doc_id, text, current[0][0], current[-1][1])
                    current = _tail(current, overlap, size, end)
            current.append((start, end))
        if current:
            yield from _emit(doc_id, text, current[0][0], current[-1][1])

    def _split_long(self, doc_id: DocumentId, text: str, start: int, end: int) -> Iterator[Chunk]:
        size, overlap = self.chunk_size, self.overlap
        position = start
        while position < end:
            cut = min(position + size, end)
            if cut < end:
                # Cut after the last soft break in the second half of the window, so
                # chunks stay at least half full and words stay whole where possible.
                soft = _last_soft_break(text, position + size // 2, cut)
                if soft is not None:
                    cut = soft
            yield from _emit(doc_id, text, position, cut)
            if cut >= end:
                return
            # Start the overlap at a word boundary too, when there is one.
            next_start = max(cut - overlap, position + 1)
            first = _SOFT_BREAK.search(text, next_start, cut)
            position = first.end() if first is not None and overlap else next_start


def _last_soft_break(text: str, start: int, end: int) -> int | None:
    """The offset just after the last soft break in ``text[start:end]``, if any."""
    last = None
    for match in _SOFT_BREAK.finditer(text, start, end):
        last = match
    return last.end() if last is not None else None


def _sentences(text: str) -> Iterator[tuple[int, int, bool]]:
    """(start, end, starts_a_paragraph) for each sentence, whitespace trimmed, in order."""
    start = 0
    new_paragraph = False
    for match in _SENTENCE_END.finditer(text):
        end = match.start() if match.group("paragraph") else match.end()
        span = _strip_span(text, start, end)
        if span is not None:
            yield span[0], span[1], new_paragraph
            new_paragraph = False
        if match.group("paragraph"):
            new_paragraph = True
        start = match.end()
    span = _strip_span(text, start, len(text))
    if span is not None:
        yield span[0], span[1], new_paragraph


def _strip_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return None
    left = start + len(piece) - len(piece.lstrip())
    return left, left + len(stripped)


def _tail(sentences: list[tuple[int, int]], overlap: int, size: int, next_end: int) -> list[tuple[int, int]]:
    """The trailing sentences worth repeating: within ``overlap`` and leaving room for the next one."""
    chunk_end = sentences[-1][1]
    keep = len(sentences)
    while keep > 0:
        first_start = sentences[keep - 1][0]
        if chunk_end - first_start > overlap or next_end - first_start > size:
            break
        keep -= 1
    # Never repeat the whole chunk: that would emit the same text twice.
    return sentences[max(keep, 1) :]


def _emit(doc_id: DocumentId, text: str, start: int, end: int) -> Iterator[Chunk]:
    chunk = _trimmed(doc_id, text, start, end)
    if chunk is not None:
        yield chunk


_FENCE = re.compile(r"^[^\S\n]{0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^[^\S\n]{0,3}(#{1,6})[^\S\n]+(.*?)[^\S\n#]*#*[^\S\n]*$")


@dataclass(frozen=True, slots=True)
class MarkdownChunker:
    """Markdown by structure: a chunk never spans two sections and never cuts a fenced code block.

    Contract: each chunk's ``title`` is its heading path (``"Install > With Helm"``),
    and heading lines themselves are carried there rather than in the text. Within a
    section, whole blocks (paragraphs, lists, code blocks) are packed up to
    ``chunk_size``; a code block longer than that stays whole, any other long
    block is cut like ``SentenceChunker`` would (with ``overlap``).
    """

    chunk_size: int = 1000
    overlap: int = 100

    def __post_init__(self) -> None:
        _validate_sizes(self.chunk_size, self.overlap)

    def __call__(self, doc_id: DocumentId, text: str) -> Iterator[Chunk]:
        sentences = SentenceChunker(self.chunk_size, self.overlap)
        for title, blocks in _sections(text):
            packed: list[tuple[int, int]] = []
            for start, end, code in blocks:
                if packed and end - packed[0][0] > self.chunk_size:
                    yield from _titled(_emit(doc_id, text, packed[0][0], packed[-1][1]), title)
                    packed = []
                if end - start > self.chunk_size and not code:
                    for piece in sentences(doc_id, text[start:end]):
                        shifted = Chunk(doc_id, piece.text, start + piece.start, start + piece.end)
                        yield from _titled(iter([shifted]), title)
                    continue
                packed.append((start, end))
            if packed:
                yield from _titled(_emit(doc_id, text, packed[0][0], packed[-1][1]), title)


def _titled(chunks: Iterator[Chunk], title: str) -> Iterator[Chunk]:
    for chunk in chunks:
        yield Chunk(chunk.doc_id, chunk.text, chunk.start, chunk.end, title)


def _sections(text: str) -> Iterator[tuple[str, list[tuple[int, int, bool]]]]:
    """(heading path, blocks) per section; a block is (start, end, is_code), blank lines between blocks."""
    headings: list[str] = []
    blocks: list[tuple[int, int, bool]] = []
    block_start: int | None = None
    fence: str | None = None
    position = 0
    for line in text.splitlines(keepends=True):
        start, position = position, position + len(line)
        if fence is not None:  # inside a code block: only its closing fence ends it
            if line.strip().startswith(fence):
                blocks.append((block_start or 0, start + len(line.rstrip()), True))
                fence, block_start = None, None
            continue
        opening = _FENCE.match(line)
        heading = _HEADING.match(line.rstrip("\r\n"))
        if opening or heading or not line.strip():
            if block_start is not None:
                blocks.append((block_start, start, False))
                block_start = None
        if opening:
            fence, block_start = opening.group(1)[0] * len(opening.group(1)), start
        elif heading:
            if blocks:
                yield " > ".join(headings), blocks
                blocks = []
            level = len(heading.group(1))
            headings = [*headings[: level - 1], heading.group(2).strip()]
        elif line.strip() and block_start is None:
            block_start = start
    if block_start is not None:
        blocks.append((block_start, len(text), fence is not None))
    if blocks:
        yield " > ".join(headings), blocks


def make_chunker(strategy: Literal["sentence", "fixed", "markdown"], chunk_size: int, overlap: int) -> Chunker:
    """The built-in chunker named by ``strategy``."""
    if strategy == "sentence":
        return SentenceChunker(chunk_size, overlap)
    if strategy == "fixed":
        return FixedSizeChunker(chunk_size, overlap)
    if strategy == "markdown":
        return MarkdownChunker(chunk_size, overlap)
    raise RetrievalInputError(
        f"unknown chunking strategy {strategy!r}: use 'sentence', 'fixed' or 'markdown'", param="chunking"
    )


def normalize_documents(documents: Documents) -> list[tuple[DocumentId, str]]:
    """(id, text) pairs for ``documents``; raises ``InvalidDocumentError`` naming the first bad one.

    A sequence gets its indexes as ids, a mapping keeps its keys. A bare string
    is refused: iterating it would make every character a document.
    """
    if isinstance(documents, (str, bytes)):
        raise InvalidDocumentError(
            "documents must be a sequence or mapping of strings, not a single string", param="documents"
        )
    if isinstance(documents, Mapping):
        pairs = list(documents.items())
    elif isinstance(documents, Sequence):
        pairs = list(enumerate(documents))
    else:
        raise InvalidDocumentError(
            f"documents must be a sequence or mapping of strings, got {type(documents).__name__}",
            param="documents",
        )
    for doc_id, text in pairs:
        if not isinstance(text, str):
            raise InvalidDocumentError(
                f"document {doc_id!r} must be a string, got {type(text).__name__}", param="documents"
            )
    return pairs


def chunk_documents(pairs: Sequence[tuple[DocumentId, str]], chunker: Chunker) -> Iterator[Chunk]:
    """Every chunk of every document, documents in order."""
    for doc_id, text in pairs:
        yield from chunker(doc_id, text)
