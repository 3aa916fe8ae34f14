"""Retrieval for LLM context: chunk documents, score chunks with BM25, stream the relevant ones.

    chunking.py    documents → chunks (fixed windows, or sentence/paragraph-aware; CJK-aware)
    tokenizer.py   text → terms (CJK bigrams, lower-cased words; pluggable)
    bm25.py        Okapi BM25: formula, running statistics, BM25Index (build once, query many)
    generator.py   AsyncRAGGenerator: batches scored off the event loop, results streamed
    service.py     the sidecar side: configured corpora, POST /v1/retrieve, context injection

Quick use::

    generator = AsyncRAGGenerator(chunk_size=500)
    async for passage in generator.stream_retrieval("Python异步", documents):
        print(passage.doc_id, passage.score, passage.text)
"""

from proxy.rag.bm25 import BM25Index, BM25Parameters
from proxy.rag.chunking import Chunker, Documents, FixedSizeChunker, SentenceChunker
from proxy.rag.errors import InvalidDocumentError, RetrievalInputError, UnknownCorpusError
from proxy.rag.generator import AsyncRAGGenerator, Scorer
from proxy.rag.passage import Chunk, DocumentId, Passage
from proxy.rag.tokenizer import MixedTokenizer, Tokenizer

__all__ = [
    "AsyncRAGGenerator",
    "BM25Index",
    "BM25Parameters",
    "Chunk",
    "Chunker",
    "DocumentId",
    "Documents",
    "FixedSizeChunker",
    "InvalidDocumentError",
    "MixedTokenizer",
    "Passage",
    "RetrievalInputError",
    "Scorer",
    "SentenceChunker",
    "Tokenizer",
    "UnknownCorpusError",
]
