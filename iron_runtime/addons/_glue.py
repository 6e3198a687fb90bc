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
from iron_runtime.exchange import Exchange
from iron_runtime.headers import CLIENT_CREDENTIALS, REQUEST_ID
from iron_runtime.keys import mask_secret
from iron_runtime.wire import new_request_id

logger = logging.getLogger("iron_runtime")

META = "iron"


def publish(flow: http.HTTPFlow, x: Exchange) -> None:
    """Show the exchange's facts so far as ``flow.metadata["iron"]`` (mitmweb, flow dumps)."""
    flow.metadata[META] = x.summary()


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


def answer_error(
    flow: http.HTTPFlow, x: Exchange, err: RouterError, shape: ApiShape | None = None
) -> None:
    """Answer the flow locally with ``err`` in the client's API shape."""
    flow.response = http.Response.make(
        err.status,
        err.body(shape or x.shape),
        {"content-type": "application/json", REQUEST_ID: x.request_id},
    )
    if x.client_close:
        flow.response.headers["connection"] = "close"
    x.error, x.status, x.answered_locally = err, err.status, True
    forget_credentials(flow)
    publish(flow, x)


def answer_outcome(flow: http.HTTPFlow, x: Exchange, outcome: RouterError | None) -> None:
    """Apply a stage's outcome: an error is answered, None lets the request go on."""
    if outcome is not None:
        answer_error(flow, x, outcome)


def fail_closed(hook: Callable) -> Callable:
    """An exception in a hook answers a 500 JSON error instead of letting the request through
    unmodified (mitmproxy's default); once the response is on its way, the flow is killed.
    A hook may return a coroutine (mitmproxy awaits it): it is guarded the same way. The
    addon holds the services as ``self.s``."""

    def failed(self: Any, flow: http.HTTPFlow) -> None:
        logger.exception("iron_runtime: %s.%s failed", type(self).__name__, hook.__name__)
        if hook.__name__ in ("request", "requestheaders", "http_connect"):
            if flow.response is None:
                x = self.s.exchanges.start(flow, new_request_id)
                answer_error(
                    flow,
                    x,
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
