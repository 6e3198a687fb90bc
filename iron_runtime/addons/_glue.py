"""Small adapters between mitmproxy flows and the core, shared by the addons."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from iron_runtime import errors
from iron_runtime.errors import ApiShape, RouterError
from iron_runtime.headers import CLIENT_CREDENTIALS, REQUEST_ID
from iron_runtime.keys import mask_secret

logger = logging.getLogger("iron_runtime")

META = "iron"

# Per-flow objects that must not go into flow.metadata (which mitmproxy serializes into
# flow dumps): the parsed request body, the budget reservation, the stream meter.
_scratch: dict[str, dict[str, Any]] = {}


def scratch(flow: http.HTTPFlow) -> dict[str, Any]:
    s = _scratch.get(flow.id)
    if s is None:
        s = _scratch[flow.id] = {}
    return s


def drop_scratch(flow: http.HTTPFlow) -> dict[str, Any]:
    """Remove and return the flow's scratch space (done once the flow has ended)."""
    return _scratch.pop(flow.id, {})


def meta(flow: http.HTTPFlow) -> dict[str, Any]:
    """The per-flow facts of iron_runtime (``flow.metadata["iron"]``), created on first use."""
    m = flow.metadata.get(META)
    if m is None:
        m = flow.metadata[META] = {}
    return m


_LOCAL_SECRETS = CLIENT_CREDENTIALS | {b"x-iron-admin-secret"}


def forget_credentials(flow: http.HTTPFlow) -> None:
    """Mask whatever credential the client presented in a flow the router answers itself:
    the stored request (mitmweb, flow dumps) must not keep the agent's token, which fetches
    provider keys in server mode, nor a real key an agent presented by mistake."""
    headers = flow.request.headers
    fields = headers.fields
    if any(name.lower() in _LOCAL_SECRETS for name, _ in fields):
        headers.fields = tuple(
            (name, _masked(value) if name.lower() in _LOCAL_SECRETS else value)
            for name, value in fields
        )


def _masked(value: bytes) -> bytes:
    scheme, space, secret = value.partition(b" ")
    if space and scheme.lower() in (b"bearer", b"basic"):
        return scheme + b" " + mask_secret(secret.decode("latin-1")).encode()
    return mask_secret(value.decode("latin-1")).encode()


def answer_error(flow: http.HTTPFlow, err: RouterError, shape: ApiShape | None = None) -> None:
    """Answer the flow locally with ``err`` in the client's API shape."""
    m = meta(flow)
    shape = shape or ApiShape(m.get("shape", ApiShape.OPENAI))
    flow.response = http.Response.make(
        err.status,
        err.body(shape),
        {"content-type": "application/json", REQUEST_ID: m.get("request_id", "")},
    )
    if m.get("client_close"):
        flow.response.headers["connection"] = "close"
    m["error"] = {"status": err.status, "type": err.type, "code": err.code, "message": err.message}
    m["local_answer"] = True
    forget_credentials(flow)


def fail_closed(hook: Callable) -> Callable:
    """An exception in a hook answers a 500 JSON error instead of letting the request through
    unmodified (mitmproxy's default); once the response is on its way, the flow is killed.
    A hook may return a coroutine (mitmproxy awaits it): it is guarded the same way."""

    def failed(self: Any, flow: http.HTTPFlow) -> None:
        logger.exception("iron_runtime: %s.%s failed", type(self).__name__, hook.__name__)
        if hook.__name__ in ("request", "requestheaders", "http_connect"):
            if flow.response is None:
                answer_error(
                    flow,
                    errors.internal_error(
                        "The router failed while handling this request, which was not "
                        "forwarded. The router's log has the details."
                    ),
                )
        elif flow.live and not flow.error:
            flow.kill()

    async def guarded(self: Any, flow: http.HTTPFlow, pending: Any) -> None:
        try:
            await pending
        except Exception:
            failed(self, flow)

    @functools.wraps(hook)
    def wrapper(self: Any, flow: http.HTTPFlow) -> Any:
        try:
            result = hook(self, flow)
        except Exception:
            failed(self, flow)
            return None
        if result is not None and inspect.isawaitable(result):
            return guarded(self, flow, result)
        return result

    return wrapper
