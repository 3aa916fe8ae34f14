import math

import pytest

from proxy.rag import BM25Index, BM25Parameters, Chunk, MixedTokenizer
from proxy.rag.bm25 import CorpusStatistics, idf


def _chunks(*texts: str) -> list[Chunk]:
    return [Chunk(i, t, 0, len(t)) for i, t in enumerate(texts)]


def _reference_bm25(query: list[str], docs: list[list[str]], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Textbook Okapi BM25, written out term by term, to check the index against."""
    n = len(docs)
    avgdl = sum(map(len, docs)) / n
    scores = []
    for doc in docs:
        total = 0.0
        for term in dict.fromkeys(query):
            df = sum(term in d for d in docs)
            tf = doc.count(term)
            weight = math.log(1 + (n - df + 0.5) / (df + 0.5))
            total += weight * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(total)
    return scores


def test_index_scores_match_the_textbook_formula() -> None:
    texts = ["the cat sat on the mat", "the dog ate the cat food", "a bird", "猫和狗是朋友", "the the the cat"]
    index = BM25Index.build(_chunks(*texts))
    tokenizer = MixedTokenizer()
    expected = _reference_bm25(tokenizer("the cat 猫和狗"), [tokenizer(t) for t in texts])
    got = index.scores("the cat 猫和狗")
    for number, value in enumerate(expected):
        assert got.get(number, 0.0) == pytest.approx(value)


def test_rare_terms_outweigh_common_ones() -> None:
    index = BM25Index.build(_chunks("the cat", "the dog", "the zebra", "the cat and the dog"))
    assert [p.doc_id for p in index.search("the zebra", top_k=1)] == [2]


def test_search_respects_top_k_min_score_and_ranks_best_first() -> None:
    index = BM25Index.build(_chunks("apple pie", "apple apple tart", "pear", "apple"))
    results = index.search("apple", top_k=2)
    assert len(results) == 2 and results[0].score >= results[1].score
    assert index.search("apple", top_k=None, min_score=results[0].score) == results[:1]
    assert index.search("banana") == []


def test_a_query_touches_only_its_terms_postings() -> None:
    index = BM25Index.build(_chunks("alpha beta", "gamma delta", "alpha gamma"))
    assert set(index.scores("alpha")) == {0, 2}


def test_chinese_query_without_spaces_matches_through_bigrams() -> None:
    index = BM25Index.build(_chunks("Python的异步编程依靠asyncio库", "今天天气很好", "Java uses threads"))
    assert [p.doc_id for p in index.search("Python异步", top_k=1)] == [0]


def test_running_statistics_converge_to_the_exact_score() -> None:
    tokenizer = MixedTokenizer()
    texts = ["red fish blue fish", "one fish two fish", "red car", "blue sky"]
    statistics = CorpusStatistics(["red", "fish"], BM25Parameters())
    observed = [statistics.observe(tokenizer(t)) for t in texts]
    index = BM25Index.build(_chunks(*texts))
    exact = index.scores("red fish")
    for number, (tfs, length) in enumerate(observed):
        assert statistics.score(tfs, length) == pytest.approx(exact.get(number, 0.0))


def test_idf_is_positive_even_for_terms_in_every_chunk() -> None:
    assert idf(10, 10) > 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        BM25Parameters(k1=-1)
    with pytest.raises(ValueError):
        BM25Parameters(b=2)
