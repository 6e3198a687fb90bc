"""The gateway: OpenAI ``chat.completions`` calls served by Anthropic ``messages``.

``translate_request`` and ``translate_response`` are functions from dict to dict;
``GatewayStream`` translates an SSE stream incrementally. The mappings are in ``tables``.
"""

from .request import Translation, translate_request
from .response import openai_usage, translate_error, translate_response
from .stream import GatewayStream

__all__ = [
    "GatewayStream",
    "Translation",
    "openai_usage",
    "translate_error",
    "translate_request",
    "translate_response",
]
