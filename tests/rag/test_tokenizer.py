from proxy.rag import MixedTokenizer


def test_cjk_runs_become_bigrams_and_latin_words_lower_case() -> None:
    assert MixedTokenizer()("Python异步编程 uses AsyncIO!") == ["python", "异步", "步编", "编程", "uses", "asyncio"]


def test_cjk_and_latin_split_without_a_space_between_them() -> None:
    assert MixedTokenizer()("用await交还") == ["用", "await", "交还"]


def test_a_lone_cjk_character_stays_a_unigram() -> None:
    assert MixedTokenizer()("猫 and 狗") == ["猫", "and", "狗"]


def test_punctuation_and_underscores_separate_tokens() -> None:
    assert MixedTokenizer()("snake_case, foo-bar。你好；世界") == ["snake", "case", "foo", "bar", "你好", "世界"]


def test_options_add_unigrams_and_drop_stopwords() -> None:
    tokenizer = MixedTokenizer(cjk_unigrams=True, stopwords=frozenset({"the"}))
    assert tokenizer("The 中文") == ["中文", "中", "文"]


def test_japanese_and_korean_are_cjk_runs() -> None:
    assert MixedTokenizer()("ひらがな 한국어") == ["ひら", "らが", "がな", "한국", "국어"]
