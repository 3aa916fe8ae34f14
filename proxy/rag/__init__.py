"""Retrieval for LLM context: chunk documents, score chunks with BM25, stream the relevant ones.

    chunking.py    documents → chunks (fixed windows, sentence/paragraph-aware, Markdown sections; CJK-aware)
    tokenizer.py   text → terms (CJK bigrams, lower-cased words; pluggable)
    bm25.py        Okapi BM25: formula, running statistics, BM25Index (build once, query many)
    generator.py   AsyncRAGGenerator: batches scored off the event loop, results streamed
    store.py       the vector store seam (milvus.py: Milvus through pymilvus, an optional extra)
    client.py      embeddings and rewrites through the sidecar's own routes
    indexer.py     llm-sidecar index: embed changed chunks into the store
    fusion.py      reciprocal rank fusion of BM25 and dense rankings
    hybrid.py      HybridSearch: a corpus's rankings (BM25, dense, expanded) fused; used by both faces
    expansion.py   RM3 pseudo-relevance feedback, LLM rewrite parsing
    service.py     the sidecar side: configured corpora (bm25 | dense | hybrid), POST /v1/retrieve,
                   context injection

Quick use::

    generator = AsyncRAGGenerator(chunk_size=500)
    async for passage in generator.stream_retrieval("Python异步", documents):
        print(passage.doc_id, passage.score, passage.text)
"""

from __future__ import annotations

from proxy.lazy import lazy_exports

# Loaded on first use, so a sidecar that only reads ``proxy.rag.config`` loads nothing else.
_EXPORTS = {
    "BM25Index": "proxy.rag.bm25",
    "BM25Parameters": "proxy.rag.bm25",
    "Chunk": "proxy.rag.passage",
    "Chunker": "proxy.rag.chunking",
    "DenseRetriever": "proxy.rag.hybrid",
    "DocumentId": "proxy.rag.passage",
    "ExpansionSettings": "proxy.rag.config",
    "FusionSettings": "proxy.rag.config",
    "HybridSearch": "proxy.rag.hybrid",
    "Documents": "proxy.rag.chunking",
    "FixedSizeChunker": "proxy.rag.chunking",
    "InvalidDocumentError": "proxy.rag.errors",
    "MarkdownChunker": "proxy.rag.chunking",
    "MixedTokenizer": "proxy.rag.tokenizer",
    "Passage": "proxy.rag.passage",
    "RetrievalInputError": "proxy.rag.errors",
    "Scorer": "proxy.rag.generator",
    "SentenceChunker": "proxy.rag.chunking",
    "Tokenizer": "proxy.rag.tokenizer",
    "UnknownCorpusError": "proxy.rag.errors",
    "AsyncRAGGenerator": "proxy.rag.generator",
}

__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "AsyncRAGGenerator",
    "BM25Index",
    "BM25Parameters",
    "Chunk",
    "Chunker",
    "DenseRetriever",
    "DocumentId",
    "Documents",
    "ExpansionSettings",
    "FixedSizeChunker",
    "FusionSettings",
    "HybridSearch",
    "InvalidDocumentError",
    "MarkdownChunker",
    "MixedTokenizer",
    "Passage",
    "RetrievalInputError",
    "Scorer",
    "SentenceChunker",
    "Tokenizer",
    "UnknownCorpusError",
]
