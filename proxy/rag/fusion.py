"""Reciprocal rank fusion: several rankings of one corpus's chunks made into one.

A passage at rank ``r`` (from 1) of a ranking with weight ``w`` earns
``w / (rank_constant + r)``; its fused score is the sum over the rankings it is
in. Only ranks count, so BM25 scores (unbounded) and cosine similarities (a
narrow band) need no calibration against each other. Passages are the same
chunk when their ``key`` (document, start, end) is.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.rag.passage import Passage


def fuse(rankings: Sequence[tuple[float, Sequence[Passage]]], rank_constant: int = 60) -> list[Passage]:
    """The fused ranking, best first (ties: the passage seen first); each passage carries its fused score."""
    scores: dict[tuple[str, int, int], float] = {}
    first: dict[tuple[str, int, int], Passage] = {}
    for weight, ranking in rankings:
        for rank, passage in enumerate(ranking, 1):
            key = passage.key
            first.setdefault(key, passage)
            scores[key] = scores.get(key, 0.0) + weight / (rank_constant + rank)
    order = sorted(scores, key=lambda key: scores[key], reverse=True)  # stable: first seen wins ties
    return [_scored(first[key], scores[key]) for key in order]


def _scored(passage: Passage, score: float) -> Passage:
    return Passage(passage.doc_id, passage.text, passage.start, passage.end, score, passage.title)
