"""Wire formats the proxy speaks: OpenAI and Anthropic, and SSE framing."""

from proxy.dialects.anthropic import ANTHROPIC
from proxy.dialects.base import Dialect, Operation
from proxy.dialects.openai import OPENAI

DIALECTS: dict[str, Dialect] = {"openai": OPENAI, "anthropic": ANTHROPIC}

__all__ = ["ANTHROPIC", "DIALECTS", "OPENAI", "Dialect", "Operation"]
