"""iron_runtime: a local LLM API router for AI agents, built as mitmproxy addons.

>>> from iron_runtime import LlmRouter
>>> router = LlmRouter(provider_key="sk-...")
>>> client = OpenAI(base_url=router.base_url, api_key=router.api_key)
"""

from .launcher import LlmRouter, RouterStartError

__all__ = ["LlmRouter", "RouterStartError", "__version__"]
__version__ = "0.1.0"
