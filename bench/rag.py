"""Retrieval benchmark: index build time and query latency over generated mixed CJK/Latin text.

    python -m bench.rag --sizes 1,10,100      # sizes in MB of UTF-8 text
    python bench/rag.py --sizes 1 --queries 500

For each size it generates documents (about 70% English-like, 30% Chinese-like
text, Zipf-distributed vocabulary, sentence punctuation of both kinds),
builds a ``BM25Index`` with the default sentence chunker (chunk_size 1000),
runs the queries against it, and times the first result of a one-shot
streaming retrieval over the raw documents. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import resource
import sys
import time
from itertools import accumulate
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.rag import AsyncRAGGenerator  # noqa: E402

_LATIN_VOCABULARY = 20_000
_CJK_CHARACTERS = 3_500
_DOCUMENT_BYTES = 8_000


def _words(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    return ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(_LATIN_VOCABULARY)]


def generate(megabytes: float, seed: int = 7) -> tuple[list[str], list[str], list[str]]:
    """Documents of about ``megabytes`` MB, plus the Latin vocabulary and CJK characters used."""
    rng = random.Random(seed)
    words = _words(rng)
    # Cumulative weights once: random.choices would otherwise re-sum them on every call.
    latin_weights = list(accumulate(1.0 / (rank + 1) for rank in range(len(words))))
    characters = [chr(0x4E00 + i) for i in range(_CJK_CHARACTERS)]
    cjk_weights = list(accumulate(1.0 / (rank + 1) ** 0.8 for rank in range(len(characters))))
    target = int(megabytes * 1_000_000)
    documents: list[str] = []
    produced = 0
    while produced < target:
        parts: list[str] = []
        size = 0
        chinese = rng.random() < 0.3
        while size < _DOCUMENT_BYTES:
            if chinese:
                body = "".join(rng.choices(characters, cum_weights=cjk_weights, k=rng.randint(8, 30)))
                sentence = body + rng.choice("。。。！？；")
                size += len(sentence) * 3
            else:
                body = " ".join(rng.choices(words, cum_weights=latin_weights, k=rng.randint(6, 24)))
                sentence = body.capitalize() + rng.choice("...!?") + " "
                size += len(sentence)
            parts.append(sentence)
            if rng.random() < 0.1:
                parts.append("\n\n")
        documents.append("".join(parts))
        produced += size
    return documents, words, characters


def make_queries(count: int, words: list[str], characters: list[str], seed: int = 11) -> list[str]:
    """Queries of 2-4 Latin words from the middle of the vocabulary, or 4-8 CJK characters."""
    rng = random.Random(seed)
    queries = []
    for _ in range(count):
        if rng.random() < 0.7:
            queries.append(" ".join(rng.choice(words[20:5000]) for _ in range(rng.randint(2, 4))))
        else:
            queries.append("".join(rng.choice(characters[20:2000]) for _ in range(rng.randint(4, 8))))
    return queries


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


async def measure(megabytes: float, query_count: int) -> dict[str, float]:
    documents, words, characters = generate(megabytes)
    text_mb = sum(len(d.encode()) for d in documents) / 1_000_000
    queries = make_queries(query_count, words, characters)
    generator = AsyncRAGGenerator()
    gc.collect()
    rss_before = _rss_mb()

    started = time.perf_counter()
    index = await generator.index(documents)
    build = time.perf_counter() - started
    rss_after = _rss_mb()

    latencies = []
    for query in queries:
        began = time.perf_counter()
        index.search(query, top_k=10)
        latencies.append(time.perf_counter() - began)

    # One-shot streaming over the raw documents: how soon does the first result come?
    began = time.perf_counter()
    async for _ in generator.stream_retrieval(queries[0], documents, top_k=1):
        break
    first = time.perf_counter() - began

    return {
        "mb": text_mb,
        "documents": len(documents),
        "chunks": len(index),
        "terms": index.vocabulary_size,
        "build": build,
        "p50": _percentile(latencies, 0.50) * 1000,
        "p99": _percentile(latencies, 0.99) * 1000,
        "first": first * 1000,
        # ru_maxrss is a high-water mark, so this is an upper bound on what the index holds.
        "memory": max(0.0, rss_after - rss_before),
    }


def table(rows: list[dict[str, float]], query_count: int) -> str:
    lines = [
        "| text (MB) | documents | chunks | terms | index build (s) | build MB/s | query p50 (ms) | "
        "query p99 (ms) | first streamed result (ms) | RSS growth (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mb']:.1f} | {r['documents']:,} | {r['chunks']:,} | {r['terms']:,} | {r['build']:.2f} | "
            f"{r['mb'] / r['build']:.2f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['first']:.1f} | {r['memory']:.0f} |"
        )
    lines.append("")
    lines.append(
        f"{query_count} queries per size (70% 2-4 English-like words, 30% 4-8 CJK characters), top_k=10, "
        f"one thread, Python {sys.version.split()[0]}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="comma-separated corpus sizes in MB (default 1,10,100)")
    parser.add_argument("--queries", type=int, default=200, help="queries per size (default 200)")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    rows = []
    for size in sizes:
        rows.append(asyncio.run(measure(size, args.queries)))
        print(f"measured {size:g} MB: build {rows[-1]['build']:.1f} s", file=sys.stderr, flush=True)
    print(table(rows, args.queries))


if __name__ == "__main__":
    main()
