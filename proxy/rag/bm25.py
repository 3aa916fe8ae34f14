"""Okapi BM25: the scoring formula, running corpus statistics, and an inverted index.

For a query term ``t`` and a chunk ``c`` of ``|c|`` terms, in a set of ``N``
chunks of average length ``avgdl`` where ``df(t)`` chunks contain ``t``::

    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))          (always > 0)
    score(t, c) = idf(t) · tf(t, c) · (k1 + 1) / (tf(t, c) + k1 · (1 - b + b · |c| / avgdl))

and a chunk's score is the sum over the query's distinct terms.

Cost model of ``BM25Index``: building is linear in the corpus (each chunk is
tokenised once and each of its distinct terms appended to that term's
postings); a query tokenises the query and touches only the postings of its
own terms, then keeps the top k with a heap — so a query of rare terms is fast
on any corpus, and the worst case is a query of terms present in every chunk.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from proxy.rag.passage import Chunk, Passage
from proxy.rag.tokenizer import MixedTokenizer, Tokenizer


@dataclass(frozen=True, slots=True)
class BM25Parameters:
    """``k1`` saturates term frequency; ``b`` sets how much chunk length normalises it."""

    k1: float = 1.5
    b: float = 0.75

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")


def idf(chunk_count: int, document_frequency: int) -> float:
    """The BM25 inverse document frequency (the "+1" form, never negative)."""
    return math.log(1.0 + (chunk_count - document_frequency + 0.5) / (document_frequency + 0.5))


def query_terms(query: str, tokenizer: Tokenizer) -> list[str]:
    """The distinct terms of ``query``, in first-seen order."""
    return list(dict.fromkeys(tokenizer(query)))


class CorpusStatistics:
    """Chunk count, total length and per-term chunk frequencies for a fixed set of query terms.

    Used by streaming retrieval, which sees the corpus batch by batch: scores
    computed mid-stream use the statistics of the chunks seen so far (an
    estimate that converges to the exact value), and ``score`` with the final
    statistics is exact BM25 over the whole corpus.
    """

    __slots__ = ("terms", "parameters", "chunk_count", "total_length", "frequencies")

    def __init__(self, terms: Sequence[str], parameters: BM25Parameters) -> None:
        self.terms = tuple(terms)
        self.parameters = parameters
        self.chunk_count = 0
        self.total_length = 0
        self.frequencies = [0] * len(self.terms)

    def observe(self, tokens: Sequence[str]) -> tuple[tuple[int, ...], int]:
        """Count one chunk's tokens in; return its query-term frequencies and its length."""
        if len(self.terms) <= 8:
            # Sequence.count on a list runs in C; for a handful of terms it beats building a Counter.
            tfs = tuple(tokens.count(term) for term in self.terms)
        else:
            counts = Counter(tokens)
            tfs = tuple(counts.get(term, 0) for term in self.terms)
        self.chunk_count += 1
        self.total_length += len(tokens)
        frequencies = self.frequencies
        for i, tf in enumerate(tfs):
            if tf:
                frequencies[i] += 1
        return tfs, len(tokens)

    def weights(self) -> list[float]:
        """The current idf of each query term."""
        return [idf(self.chunk_count, df) for df in self.frequencies]

    def score(self, tfs: Sequence[int], length: int, weights: Sequence[float] | None = None) -> float:
        """BM25 of a chunk with these term frequencies and length, under the current statistics."""
        if self.chunk_count == 0:
            return 0.0
        weights = self.weights() if weights is None else weights
        k1, b = self.parameters.k1, self.parameters.b
        average = self.total_length / self.chunk_count or 1.0
        norm = k1 * (1.0 - b + b * length / average)
        return sum(w * tf * (k1 + 1.0) / (tf + norm) for w, tf in zip(weights, tfs) if tf)


class BM25Index:
    """An immutable inverted index over chunks: build once, query many times.

    Postings are compact: per term one ``array('I')`` of interleaved
    (chunk number, term frequency) pairs. Thread-safe for concurrent queries.
    """

    __slots__ = ("chunks", "tokenizer", "parameters", "_postings", "_norms", "_average_length")

    def __init__(
        self,
        chunks: Sequence[Chunk],
        postings: dict[str, array],
        lengths: Sequence[int],
        tokenizer: Tokenizer,
        parameters: BM25Parameters,
    ) -> None:
        self.chunks = chunks
        self.tokenizer = tokenizer
        self.parameters = parameters
        self._postings = postings
        total = sum(lengths)
        self._average_length = (total / len(lengths) if lengths else 0.0) or 1.0
        k1, b = parameters.k1, parameters.b
        # The length part of the denominator is per chunk, not per query: compute it once.
        self._norms = array("d", (k1 * (1.0 - b + b * n / self._average_length) for n in lengths))

    @classmethod
    def build(
        cls,
        chunks: Iterable[Chunk],
        tokenizer: Tokenizer | None = None,
        parameters: BM25Parameters | None = None,
    ) -> BM25Index:
        """Tokenise every chunk once and invert; linear in the total text length. CPU-bound."""
        tokenizer = tokenizer or MixedTokenizer()
        kept: list[Chunk] = []
        lengths = array("I")
        postings: dict[str, array] = {}
        for number, chunk in enumerate(chunks):
            kept.append(chunk)
            tokens = tokenizer(chunk.indexed_text)
            lengths.append(len(tokens))
            for term, tf in Counter(tokens).items():
                entry = postings.get(term)
                if entry is None:
                    postings[term] = array("I", (number, tf))
                else:
                    entry.append(number)
                    entry.append(tf)
        return cls(kept, postings, lengths, tokenizer, parameters or BM25Parameters())

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def vocabulary_size(self) -> int:
        return len(self._postings)

    def scores(self, query: str | Mapping[str, float]) -> dict[int, float]:
        """Chunk number → BM25 score for every chunk sharing at least one term with ``query``.

        ``query`` is text, or terms with weights (an expanded query): each term's
        contribution is multiplied by its weight.
        """
        n = len(self.chunks)
        k1_plus_1 = self.parameters.k1 + 1.0
        norms = self._norms
        scores: dict[int, float] = {}
        get = scores.get
        terms = query.items() if isinstance(query, Mapping) else ((t, 1.0) for t in query_terms(query, self.tokenizer))
        for term, boost in terms:
            entry = self._postings.get(term)
            if entry is None:
                continue
            weight = idf(n, len(entry) // 2) * k1_plus_1 * boost
            it = iter(entry)
            for number, tf in zip(it, it):
                scores[number] = get(number, 0.0) + weight * tf / (tf + norms[number])
        return scores

    def document_frequency(self, term: str) -> int:
        """How many chunks contain ``term``."""
        entry = self._postings.get(term)
        return 0 if entry is None else len(entry) // 2

    def search(
        self, query: str | Mapping[str, float], top_k: int | None = 10, min_score: float | None = None
    ) -> list[Passage]:
        """The best passages for ``query``, best first (ties: earlier chunk first).

        ``min_score=None`` keeps every chunk with a positive score; a number keeps
        those scoring at least that. ``top_k=None`` keeps them all.
        """
        scores = self.scores(query)
        if min_score is not None:
            items = [(s, number) for number, s in scores.items() if s >= min_score]
        else:
            items = [(s, number) for number, s in scores.items() if s > 0.0]
        key = lambda item: (item[0], -item[1])  # noqa: E731 - best score, then earliest chunk
        best = sorted(items, key=key, reverse=True) if top_k is None else heapq.nlargest(top_k, items, key=key)
        return [Passage.of(self.chunks[number], s) for s, number in best]
