"""Gateway addon: OpenAI ``chat.completions`` requests for Claude models are translated into
Anthropic ``messages`` requests, and the answers (JSON, SSE streams, errors) back.

The router addon has already authenticated, routed and injected the key; this addon only
rewrites the flow, with the translation done by ``iron_runtime.gateway``.
"""

from __future__ import annotations

import json
import logging

from mitmproxy import http

from iron_runtime import errors
from iron_runtime.errors import ApiShape
from iron_runtime.gateway import GatewayStream, translate_error, translate_request
from iron_runtime.gateway.response import translate_response

from ._glue import answer_error, fail_closed, scratch
from .pricing import price_table

logger = logging.getLogger("iron_runtime")

# Headers only OpenAI understands: not sent to Anthropic.
_OPENAI_ONLY = ("openai-organization", "openai-project", "openai-beta")


class Gateway:
    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        m = flow.metadata.get("iron")
        if flow.response or m is None or not m.get("gateway"):
            return
        payload = scratch(flow).get("payload") or {}
        try:
            t = translate_request(payload, price_table().max_output_tokens)
        except errors.RouterError as e:
            return answer_error(flow, e, ApiShape.OPENAI)
        req = flow.request
        req.path = m.get("upstream_base_path", "") + "/v1/messages"
        req.content = json.dumps(t.body).encode()
        scratch(flow)["payload"] = t.body  # what the budget prices: the Anthropic request
        req.headers["content-type"] = "application/json"
        req.headers["accept-encoding"] = "identity"  # the stream is read and rewritten
        for name in _OPENAI_ONLY:
            req.headers.pop(name, None)
        m.update(translated=True, include_usage=t.include_usage, upstream_model=t.model)
        if t.dropped:
            m["dropped_fields"] = t.dropped

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        m = flow.metadata.get("iron")
        resp = flow.response
        if m is None or not m.get("translated") or resp is None:
            return
        if 200 <= resp.status_code < 300 and resp.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            translator = GatewayStream(m.get("model") or "", m.get("include_usage", False))
            resp.headers.pop("content-length", None)
            resp.headers.pop("content-encoding", None)
            resp.headers["transfer-encoding"] = "chunked"
            resp.stream = _stream_callable(translator, m)
            scratch(flow)["meter"] = translator.meter
            m["stream"] = True

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        m = flow.metadata.get("iron")
        resp = flow.response
        if m is None or not m.get("translated") or resp is None or resp.stream:
            return
        if m.get("local_answer"):
            return  # the router's own answer, already in OpenAI's shape
        raw = resp.get_content(strict=False) or b""
        if 200 <= resp.status_code < 300:
            try:
                message = json.loads(raw)
                scratch(flow)["answer"] = message  # the budget reads Anthropic's usage
                body = translate_response(message, m.get("model") or "")
            except (ValueError, TypeError, AttributeError) as e:
                err = errors.upstream_error(
                    502, f"Anthropic sent an answer the gateway could not read: {e}"
                )
                return answer_error(flow, err, ApiShape.OPENAI)
        else:
            body = translate_error(resp.status_code, raw)
        resp.headers.pop("content-encoding", None)
        resp.headers["content-type"] = "application/json"
        try:
            resp.content = json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate echoed back: keep it as a JSON escape
            resp.content = json.dumps(body).encode()


def _stream_callable(translator: GatewayStream, m: dict):
    """mitmproxy's stream hook: a plain function fed raw bytes; ``b""`` marks the end. It
    must return ``[]`` for "nothing yet" (``b""`` would end the client's response), and an
    exception inside it would silently drop the chunk, hence the guard."""

    def translate(data: bytes) -> bytes | list:
        try:
            out = translator.feed(data)
        except Exception:
            logger.exception("iron_runtime: gateway stream translation failed")
            out = (
                b'data: {"error":{"message":"The router failed to translate the stream.",'
                b'"type":"iron_cage_internal_error","param":null,"code":"internal_error"}}\n\n'
            )
            translator.finished = True
        if translator.finished and "stream_complete" not in m:
            m["stream_complete"] = translator.complete
            if translator.error:
                m["error"] = {"message": translator.error}
        return out or []

    return translate
