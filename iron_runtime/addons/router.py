"""Router addon: health check, IC-token authentication, routing, the key and the upstream,
header policy, and the stream of an SSE answer (translated, metered or passed through)."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Awaitable

from mitmproxy import ctx, exceptions, http

from iron_runtime import errors, pipeline, routing, settings
from iron_runtime.exchange import Exchange, storable
from iron_runtime.headers import (
    REQUEST_ID,
    client_response_fields,
    upstream_request_fields,
)
from iron_runtime.keys import ProviderKeys
from iron_runtime.pipeline import Services
from iron_runtime.providers import Provider, default_upstream
from iron_runtime.settings import DEFAULT_BODY_LIMIT, Loader
from iron_runtime.upstreams import Upstream
from iron_runtime.wire import CONNECT_REFUSED, new_request_id

from . import intake
from ._glue import answer_error, fail_closed, forget_credentials, publish
from .egress import EGRESS
from .intake import INTAKE

logger = logging.getLogger("iron_runtime")

KeyChoice = pipeline.ForwardKey | errors.RouterError

HEALTH_TEXT = b"LlmRouter OK"
ADMIN_PREFIX = "/_iron/"
# A request with a wrong token and a body larger than this is refused as soon as its headers
# arrive, without reading the body. Smaller bodies are read first: closing a connection with
# unread bytes resets it, and the client might then see the reset instead of the 401.
EARLY_REFUSAL_BYTES = 64 * 1024


def _secret_option(value: str, option: str) -> str:
    """Option values of the form ``env:NAME`` are read from the environment (so that the key
    itself never sits in mitmproxy's option list, which mitmweb displays)."""
    if value.startswith("env:"):
        name = value[4:]
        resolved = os.environ.get(name)
        if not resolved:
            raise exceptions.OptionsError(f"{option}: environment variable {name} is not set")
        return resolved
    return value


class Router:
    """Adapter of the admit and key stages, the forward, the answer's headers and its stream
    (the pipeline's chunk transformer)."""

    def __init__(self, services: Services | None = None) -> None:
        self.s = services or Services()
        self.token = "direct"
        self.keys = ProviderKeys({})
        self.upstreams = {p: Upstream.parse(default_upstream(p)) for p in Provider}
        self.body_limit = DEFAULT_BODY_LIMIT

    def load(self, loader: Loader) -> None:
        settings.declare(loader, "router")

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "iron_token" in updated:
            if not opts.iron_token:
                raise exceptions.OptionsError("iron_token must not be empty")
            self.token = _secret_option(opts.iron_token, "iron_token")
        if updated & {"iron_provider_key", "iron_openai_key", "iron_anthropic_key"}:
            self.keys = ProviderKeys.from_arguments(
                _secret_option(opts.iron_provider_key, "iron_provider_key"),
                {
                    "openai": _secret_option(opts.iron_openai_key, "iron_openai_key"),
                    "anthropic": _secret_option(opts.iron_anthropic_key, "iron_anthropic_key"),
                },
            )
        if updated & {"iron_openai_upstream", "iron_anthropic_upstream"}:
            try:
                self.upstreams = {
                    Provider.OPENAI: Upstream.parse(
                        opts.iron_openai_upstream or default_upstream(Provider.OPENAI)
                    ),
                    Provider.ANTHROPIC: Upstream.parse(
                        opts.iron_anthropic_upstream or default_upstream(Provider.ANTHROPIC)
                    ),
                }
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
        if "iron_body_limit" in updated:
            if opts.iron_body_limit <= 0:
                raise exceptions.OptionsError("iron_body_limit must be a positive byte count")
            self.body_limit = INTAKE.body_limit = opts.iron_body_limit
        if updated & {"listen_host", "iron_token"}:
            self._check_exposure(opts.listen_host)
        if "connection_strategy" in updated and opts.connection_strategy != "lazy":
            # "eager" would connect to the reverse target before any hook runs.
            opts.update(connection_strategy="lazy")

    def _check_exposure(self, host: str) -> None:
        if not host or host == "localhost":
            local = host == "localhost"
        else:
            try:
                local = ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = False
        if not local and self.token == "direct":
            raise exceptions.OptionsError(
                f"Refusing to listen on {host or 'all interfaces'} with the default token "
                "'direct': set iron_token to a secret, or listen on 127.0.0.1."
            )

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        # Agents call the router as an API server; as a forward proxy it would open tunnels.
        x = self.s.exchanges.start(flow, new_request_id)
        answer_error(flow, x, errors.method_not_allowed(CONNECT_REFUSED))

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Before the body is read: the exchange and its request id, and the refusals that
        must not wait for the body (a declared body over the limit; a wrong token with a
        large body)."""
        req = flow.request
        x = self.s.exchanges.start(flow, new_request_id)
        INTAKE.request_ids[req] = x.request_id
        admin = req.path.startswith(ADMIN_PREFIX)
        if not admin:
            # Checked once, here; then the agent's token leaves the flow before any other
            # addon (mitmweb's intercept, a flow dump) can see it.
            x.authenticated = routing.token_matches(req.headers, self.token)
            forget_credentials(flow)
        declared = _declared_size(req.headers)
        large = declared is None or declared > EARLY_REFUSAL_BYTES
        if declared is not None and declared > self.body_limit:
            err = errors.too_large(declared, self.body_limit)
        elif large and not (admin or x.authenticated):
            err = errors.bad_token()
        else:
            return
        x.shape = routing.client_shape(req.path, req.headers)
        answer_error(flow, x, err)
        assert flow.response is not None
        INTAKE.early_answers[req] = intake.assemble(flow.response, req.method == "HEAD")
        flow.kill()

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response or flow.error:
            return None
        req = flow.request
        x = self.s.exchanges.start(flow, new_request_id)
        incoming = pipeline.Incoming(req.method, req.path, req.headers, req.raw_content or b"")
        outcome = pipeline.admit(x, incoming, self.token, self.body_limit)
        if x.local == "health":
            flow.response = http.Response.make(
                200, HEALTH_TEXT, {"content-type": "text/plain", REQUEST_ID: x.request_id}
            )
            forget_credentials(flow)
            return None
        if outcome is not None:
            answer_error(flow, x, outcome)
            return None
        flow.comment = f"{storable(x.model or x.path)} → {x.provider_name}"
        choice = pipeline.key(x, self.keys, self.s.link)
        if isinstance(choice, pipeline.ForwardKey | errors.RouterError):
            self._forward(flow, x, choice)
            return None
        return self._forward_when_fetched(flow, x, choice)

    async def _forward_when_fetched(
        self, flow: http.HTTPFlow, x: Exchange, pending: Awaitable[KeyChoice]
    ) -> None:
        self._forward(flow, x, await pending)

    def _forward(self, flow: http.HTTPFlow, x: Exchange, choice: KeyChoice) -> None:
        if isinstance(choice, errors.RouterError):
            return answer_error(flow, x, choice)
        assert x.provider is not None
        req = flow.request
        upstream = x.upstream = choice.upstream or self.upstreams[x.provider]
        # Set on .data: the public setters would rewrite the Host header three times. The
        # authority goes: a client's absolute-form target (``POST http://elsewhere/...``)
        # must not reach the provider, whose front end could route on it, key and all.
        req.data.scheme, req.data.host, req.data.port, req.data.authority = (
            upstream.scheme.encode(),
            upstream.host,
            upstream.port,
            b"",
        )
        req.path = upstream.base_path + x.path
        req.headers.fields = tuple(
            upstream_request_fields(
                req.headers.fields, x.provider, EGRESS.placeholder(choice.secret), upstream.netloc
            )
        )
        publish(flow, x)

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        x = self.s.exchanges.get(flow)
        resp = flow.response
        if x is None or x.upstream is None or x.answered_locally or resp is None:
            return
        x.status = resp.status_code
        resp.headers.fields = tuple(client_response_fields(resp.headers.fields, x.request_id))
        if x.client_close:
            resp.headers["connection"] = "close"
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            x.stream = True
            x.ttft_ms = x.elapsed_ms()
            transform = pipeline.stream(x, resp.status_code)
            resp.stream = transform or True
            if x.translated and transform is not None:
                # the body is rewritten as it passes: its length and encoding change
                resp.headers.pop("content-length", None)
                resp.headers.pop("content-encoding", None)
                resp.headers["transfer-encoding"] = "chunked"

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        x = self.s.exchanges.get(flow)
        if x is None or flow.response is None:
            return
        x.status = flow.response.status_code
        x.latency_ms = x.elapsed_ms()

    @fail_closed
    def error(self, flow: http.HTTPFlow) -> None:
        x = self.s.exchanges.get(flow)
        if x is None:
            return
        if not x.answered_locally:  # a local answer already says what went wrong
            x.error = errors.connection_failed(flow.error.msg if flow.error else "unknown")


def _declared_size(headers: http.Headers) -> int | None:
    """The body size the client announced: 0 without a body, None for a chunked body."""
    if "transfer-encoding" in headers:
        return None
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0  # mitmproxy refuses a malformed Content-Length before any hook runs
