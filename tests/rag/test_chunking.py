import pytest

from proxy.rag import FixedSizeChunker, InvalidDocumentError, RetrievalInputError, SentenceChunker
from proxy.rag.chunking import normalize_documents


def _offsets_hold(text: str, chunks: list) -> bool:
    return all(text[c.start : c.end] == c.text for c in chunks)


def test_fixed_size_windows_overlap_and_cover_the_text() -> None:
    text = "abcdefghij" * 5
    chunks = list(FixedSizeChunker(20, 5)("d", text))
    assert [(c.start, c.end) for c in chunks] == [(0, 20), (15, 35), (30, 50)]
    assert _offsets_hold(text, chunks)
    assert all(c.doc_id == "d" for c in chunks)


def test_fixed_size_skips_whitespace_only_windows() -> None:
    text = "abc" + " " * 40 + "xyz"
    assert [c.text for c in FixedSizeChunker(10, 0)(0, text)] == ["abc", "xyz"]


def test_sentence_chunker_cuts_only_between_latin_sentences() -> None:
    text = "One two three. Four five six! Seven eight nine? Ten eleven twelve."
    chunks = list(SentenceChunker(35, 0)(0, text))
    assert [c.text for c in chunks] == ["One two three. Four five six!", "Seven eight nine?", "Ten eleven twelve."]
    assert _offsets_hold(text, chunks)


def test_sentence_chunker_understands_cjk_punctuation() -> None:
    text = "第一句话很短。第二句话也不长！第三句是问题吗？第四句用分号；最后一句。"
    chunks = list(SentenceChunker(16, 0)(0, text))
    assert [c.text for c in chunks] == [
        "第一句话很短。第二句话也不长！",
        "第三句是问题吗？第四句用分号；",
        "最后一句。",
    ]
    assert _offsets_hold(text, chunks)


def test_sentence_chunker_overlaps_with_whole_trailing_sentences() -> None:
    text = "Aaa aaa. Bbb bbb. Ccc ccc. Ddd ddd."
    chunks = list(SentenceChunker(20, 9)(0, text))
    assert [c.text for c in chunks] == ["Aaa aaa. Bbb bbb.", "Bbb bbb. Ccc ccc.", "Ccc ccc. Ddd ddd."]


def test_a_new_paragraph_starts_a_chunk_once_half_full() -> None:
    text = "First paragraph has one long sentence.\n\nSecond paragraph."
    chunks = list(SentenceChunker(70, 0)(0, text))
    assert [c.text for c in chunks] == ["First paragraph has one long sentence.", "Second paragraph."]


def test_a_sentence_longer_than_a_chunk_is_cut_between_words() -> None:
    text = "word " * 30
    chunks = list(SentenceChunker(32, 6)(0, text))
    assert all(len(c.text) <= 32 for c in chunks)
    assert all(c.text.startswith("word") and c.text.endswith("word") for c in chunks)
    assert _offsets_hold(text, chunks)
    assert chunks[-1].end == len(text.rstrip())


@pytest.mark.parametrize("chunker", [SentenceChunker, FixedSizeChunker])
def test_chunk_size_must_exceed_overlap(chunker: type) -> None:
    with pytest.raises(RetrievalInputError, match="greater than overlap"):
        chunker(100, 100)
    with pytest.raises(RetrievalInputError):
        chunker(0, 0)


def test_documents_get_index_ids_or_mapping_keys() -> None:
    assert normalize_documents(["a", "b"]) == [(0, "a"), (1, "b")]
    assert normalize_documents({"x": "a"}) == [("x", "a")]


@pytest.mark.parametrize("documents", [["ok", 3], {"id": b"bytes"}, "a single string", 42])
def test_non_string_documents_are_refused(documents: object) -> None:
    with pytest.raises(InvalidDocumentError):
        normalize_documents(documents)


def test_markdown_chunks_keep_sections_apart_code_whole_and_carry_titles() -> None:
    from proxy.rag.chunking import MarkdownChunker

    text = (
        "# Guide\n\nIntro paragraph.\n\n## Install\n\nRun this:\n\n"
        "```bash\npip install one\n\n# not a heading\npip install two\n```\n\nThen restart.\n\n"
        "## Use\n### Deep\nFirst sentence here. Second sentence here. Third sentence here.\n"
    )
    chunks = list(MarkdownChunker(chunk_size=40, overlap=0)("guide.md", text))
    assert all(text[c.start : c.end] == c.text for c in chunks)
    code = next(c for c in chunks if c.text.startswith("```"))
    assert code.text.endswith("```") and "# not a heading" in code.text and len(code.text) > 40
    assert code.title == "Guide > Install"
    deep = [c for c in chunks if "sentence" in c.text]  # a paragraph too long for one chunk, cut by sentence
    assert len(deep) >= 2 and {c.title for c in deep} == {"Guide > Use > Deep"}
    assert chunks[0].title == "Guide" and chunks[0].text == "Intro paragraph."
    assert not any(c.text.startswith("#") for c in chunks)


def test_titles_are_searched_with_the_text() -> None:
    from proxy.rag import AsyncRAGGenerator

    index = AsyncRAGGenerator(chunk_size=200, overlap=0, chunking="markdown").build_index(
        {"a.md": "# Kubernetes\n\nIt runs pods.", "b.md": "# Bread\n\nIt needs flour."}
    )
    found = index.search("kubernetes", 1)
    assert found[0].doc_id == "a.md" and found[0].text == "It runs pods." and found[0].title == "Kubernetes"
