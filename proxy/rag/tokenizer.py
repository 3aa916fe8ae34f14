"""Tokenisation for mixed CJK and Latin text.

Chinese and Japanese are written without spaces, so splitting on whitespace
sees a whole sentence as one "word" and two texts about the same thing share
nothing. ``MixedTokenizer`` therefore cuts CJK runs into overlapping character
bigrams (``"异步编程"`` → ``异步 步编 编程``), the standard trick of CJK search
engines that needs no dictionary, and lower-cases Latin (and other alphabetic)
words. Any callable ``str -> Sequence[str]`` can replace it (``Tokenizer``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: The tokenizer contract: text in, terms out; the same text must always give the same terms.
Tokenizer = Callable[[str], Sequence[str]]

# Han (with extension A and compatibility ideographs), kana, and Hangul syllables.
_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# A CJK run, or a run of word characters that are neither CJK nor "_" (so
# "Python异步" splits into "python" and "异步" rather than one token).
_TOKEN = re.compile(f"([{_CJK_RANGES}]+)|([^\\W_{_CJK_RANGES}]+)")


@dataclass(frozen=True, slots=True)
class MixedTokenizer:
    """CJK runs → character bigrams (a lone character stays a unigram); other words → lower case.

    ``cjk_unigrams`` also emits every CJK character, which lets one-character
    queries match at the price of a larger index; ``stopwords`` (lower case)
    are dropped from Latin words.
    """

    cjk_unigrams: bool = False
    stopwords: frozenset[str] = field(default_factory=frozenset)

    def __call__(self, text: str) -> list[str]:
        tokens: list[str] = []
        extend = tokens.extend
        append = tokens.append
        stopwords = self.stopwords
        for cjk, word in _TOKEN.findall(text.lower()):
            if word:
                if word not in stopwords:
                    append(word)
            elif len(cjk) == 1:
                append(cjk)
            else:
                extend(map(operator.add, cjk[:-1], cjk[1:]))
                if self.cjk_unigrams:
                    extend(cjk)
        return tokens
