"""Wire formats the proxy speaks: OpenAI and Anthropic. What knows their bytes lives here only.

base.py        ``Dialect`` and ``Operation``
openai.py      OpenAI's operations, errors and credentials
anthropic.py   Anthropic's
sse.py         server-sent events: frames in, frames out
stream.py      a streamed answer checked frame by frame: end markers, faults
usage.py       token counts in answers
forms.py       an answer in the other form (SSE ⇄ JSON), for cache replay
translate.py   OpenAI chat ⇄ Anthropic messages, for cross-dialect fallback
"""

from proxy.dialects.anthropic import ANTHROPIC
from proxy.dialects.base import Dialect, Operation
from proxy.dialects.openai import OPENAI

DIALECTS: dict[str, Dialect] = {"openai": OPENAI, "anthropic": ANTHROPIC}

__all__ = ["ANTHROPIC", "DIALECTS", "OPENAI", "Dialect", "Operation"]
