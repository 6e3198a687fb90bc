"""Gateway addon: OpenAI ``chat.completions`` requests for Claude models are translated into
Anthropic ``messages`` requests, and their whole answers (JSON, errors) back; a streamed
answer is translated chunk by chunk by the pipeline's stream stage (see the router addon).

The router addon has already authenticated, routed and chosen the key; this addon only
rewrites the flow, with the translation done by ``iron_runtime.gateway``.
"""

from __future__ import annotations

import json

from mitmproxy import http

from iron_runtime import pipeline
from iron_runtime.errors import ApiShape, RouterError
from iron_runtime.pipeline import Services

from ._glue import answer_error, fail_closed, publish

# Headers only OpenAI understands: not sent to Anthropic.
_OPENAI_ONLY = ("openai-organization", "openai-project", "openai-beta")


class Gateway:
    def __init__(self, services: Services | None = None) -> None:
        self.s = services or Services()

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        x = self.s.exchanges.get(flow)
        if flow.response or x is None or not x.gateway or x.upstream is None:
            return
        outcome = pipeline.translate(x, self.s.prices)
        if outcome is not None:
            return answer_error(flow, x, outcome, ApiShape.OPENAI)
        req = flow.request
        req.path = x.upstream.base_path + "/v1/messages"
        req.content = json.dumps(x.payload).encode()
        req.headers["content-type"] = "application/json"
        req.headers["accept-encoding"] = "identity"  # the stream is read and rewritten
        for name in _OPENAI_ONLY:
            req.headers.pop(name, None)
        publish(flow, x)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        x = self.s.exchanges.get(flow)
        resp = flow.response
        if x is None or not x.translated or resp is None or resp.stream:
            return
        if x.answered_locally:
            return  # the router's own answer, already in OpenAI's shape
        body = pipeline.translate_answer(x, resp.status_code, resp.get_content(strict=False) or b"")
        if isinstance(body, RouterError):
            return answer_error(flow, x, body, ApiShape.OPENAI)
        resp.headers.pop("content-encoding", None)
        resp.headers["content-type"] = "application/json"
        resp.content = body
