"""Retrieval quality on a small labelled set of Chinese and English documents.

``data/retrieval_set.json`` holds 36 short documents and 35 questions, each
with the ids of the documents that answer it (some questions are answered in
both languages). BM25 with the mixed tokenizer is compared to the word-set
intersection it replaces, which splits on whitespace and so cannot see any
overlap between Chinese texts written without spaces.
"""

import json
import re
from pathlib import Path

import pytest

from proxy.rag import AsyncRAGGenerator

DATA = json.loads((Path(__file__).parent / "data" / "retrieval_set.json").read_text(encoding="utf-8"))
DOCUMENTS: dict[str, str] = DATA["documents"]
QUESTIONS: list[dict] = DATA["questions"]
CJK = re.compile(r"[\u4e00-\u9fff]")


def word_set_ranking(query: str) -> list[str]:
    """The baseline: documents ranked by how many whitespace-separated words they share with the query."""
    words = set(query.lower().split())
    scored = [(len(words & set(text.lower().split())), doc_id) for doc_id, text in DOCUMENTS.items()]
    return [doc_id for score, doc_id in sorted(scored, key=lambda item: -item[0]) if score > 0]


async def bm25_ranking(query: str) -> list[str]:
    ranked: list[str] = []
    async for passage in AsyncRAGGenerator(exact=True).stream_retrieval(query, DOCUMENTS):
        if passage.doc_id not in ranked:
            ranked.append(str(passage.doc_id))
    return ranked


def recall_at(k: int, ranked: list[str], relevant: list[str]) -> float:
    return len(set(ranked[:k]) & set(relevant)) / min(len(relevant), k)


def reciprocal_rank(ranked: list[str], relevant: list[str]) -> float:
    return next((1.0 / rank for rank, doc_id in enumerate(ranked, 1) if doc_id in relevant), 0.0)


def evaluate(rankings: list[list[str]], questions: list[dict]) -> tuple[float, float]:
    n = len(questions)
    recall = sum(recall_at(3, r, q["relevant"]) for r, q in zip(rankings, questions)) / n
    mrr = sum(reciprocal_rank(r, q["relevant"]) for r, q in zip(rankings, questions)) / n
    return recall, mrr


def test_the_labelled_set_is_consistent() -> None:
    assert len(DOCUMENTS) >= 30 and len(QUESTIONS) >= 30
    for question in QUESTIONS:
        assert set(question["relevant"]) <= set(DOCUMENTS), question


async def test_bm25_is_clearly_better_than_word_set_intersection(capsys: pytest.CaptureFixture[str]) -> None:
    bm25 = evaluate([await bm25_ranking(q["query"]) for q in QUESTIONS], QUESTIONS)
    baseline = evaluate([word_set_ranking(q["query"]) for q in QUESTIONS], QUESTIONS)
    with capsys.disabled():
        print(
            f"\nrecall@3 / MRR over {len(QUESTIONS)} questions: "
            f"BM25 {bm25[0]:.3f} / {bm25[1]:.3f}, word-set {baseline[0]:.3f} / {baseline[1]:.3f}"
        )
    assert bm25[0] >= baseline[0] + 0.3
    assert bm25[1] >= baseline[1] + 0.3
    assert bm25[0] >= 0.8 and bm25[1] >= 0.9


async def test_chinese_queries_without_spaces_find_their_documents() -> None:
    chinese = [q for q in QUESTIONS if CJK.search(q["query"]) and " " not in q["query"]]
    assert len(chinese) >= 15
    for question in chinese:
        ranked = await bm25_ranking(question["query"])
        assert ranked[0] in question["relevant"], (question["query"], ranked[:3])
        # The baseline sees the whole query as one "word" and finds nothing.
        assert not set(word_set_ranking(question["query"])[:3]) & set(question["relevant"])
