"""Query expansion: pseudo-relevance feedback (RM3-style) and parsing an LLM's rewrites.

RM3 assumes the first BM25 results are relevant and borrows their words: the
relevance model weighs each term of the top passages by how much of each
passage it makes up, times that passage's share of the top scores; terms are
then weighed by their idf (so words found everywhere do not crowd out the
useful ones, with no stopword list for any language), the best ``terms`` kept,
and the result mixed with the original query (``original_weight`` of it). The
expanded query is a weighted BM25 query. No model is needed.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

from proxy.rag.bm25 import BM25Index, idf, query_terms
from proxy.rag.passage import Passage


def rm3_query(
    index: BM25Index, query: str, feedback: Sequence[Passage], terms: int = 10, original_weight: float = 0.6
) -> dict[str, float]:
    """``query`` as weighted terms, expanded from the ``feedback`` passages (best first)."""
    original = query_terms(query, index.tokenizer)
    weights = {term: original_weight / len(original) for term in original} if original else {}
    total = sum(max(p.score, 0.0) for p in feedback)
    if not feedback or total <= 0:
        return weights
    relevance: dict[str, float] = defaultdict(float)
    for passage in feedback:
        tokens = index.tokenizer(passage.title + "\n" + passage.text if passage.title else passage.text)
        if not tokens:
            continue
        share = max(passage.score, 0.0) / total
        for term, count in Counter(tokens).items():
            relevance[term] += share * count / len(tokens)
    chunks = len(index)
    for term in relevance:
        relevance[term] *= idf(chunks, index.document_frequency(term))
    best = heapq.nlargest(terms, relevance.items(), key=lambda item: item[1])
    mass = sum(weight for _, weight in best)
    for term, weight in best:
        weights[term] = weights.get(term, 0.0) + (1.0 - original_weight) * weight / mass
    return weights


REWRITE_PROMPT = (
    "Write {count} different search queries that would find passages answering the question below. "
    "Use other words than the question where you can, in the question's language. "
    "Answer with the queries only, one per line.\n\nQuestion: {question}"
)
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)]|[(（]?\d+[)）])\s*")


def parse_rewrites(answer: str, question: str, count: int) -> list[str]:
    """Up to ``count`` distinct queries from an LLM's answer (list marks and quotes dropped), not the question."""
    seen = {question.strip().lower()}
    queries: list[str] = []
    for line in answer.splitlines():
        text = _LIST_MARK.sub("", line).strip().strip("\"'“”").strip()
        if text and text.lower() not in seen:
            seen.add(text.lower())
            queries.append(text)
        if len(queries) == count:
            break
    return queries
