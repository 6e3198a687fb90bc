"""Router addon: health check, IC-token authentication, routing, real-key injection,
header policy and SSE pass-through."""

from __future__ import annotations

import ipaddress
import logging
import os
import time

from mitmproxy import ctx, exceptions, http

from iron_runtime import errors, routing
from iron_runtime.headers import (
    REQUEST_ID,
    client_response_fields,
    upstream_request_fields,
)
from iron_runtime.keys import ProviderKeys
from iron_runtime.payload import model_of, parse_json_body
from iron_runtime.providers import Provider, default_upstream
from iron_runtime.upstreams import Upstream
from iron_runtime.wire import CONNECT_REFUSED

from . import egress, intake
from ._glue import answer_error, fail_closed, forget_credentials, meta, scratch
from .control import control
from .egress import EGRESS
from .intake import DEFAULT_BODY_LIMIT, INTAKE, new_request_id

logger = logging.getLogger("iron_runtime")

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
    def __init__(self) -> None:
        self.token = "direct"
        self.keys = ProviderKeys({})
        self.upstreams = {p: Upstream.parse(default_upstream(p)) for p in Provider}
        self.body_limit = DEFAULT_BODY_LIMIT

    def load(self, loader) -> None:
        loader.add_option(
            "iron_token",
            str,
            "direct",
            "Token agents present to the router (Authorization: Bearer or x-api-key).",
        )
        loader.add_option(
            "iron_provider_key",
            str,
            "",
            "Real provider key; its provider is detected (sk-ant-... is Anthropic). "
            "'env:NAME' reads it from an environment variable.",
        )
        loader.add_option("iron_openai_key", str, "", "Real OpenAI key (or env:NAME).")
        loader.add_option("iron_anthropic_key", str, "", "Real Anthropic key (or env:NAME).")
        loader.add_option(
            "iron_openai_upstream",
            str,
            "",
            "OpenAI base URL (default: $IRON_OPENAI_BASE_URL or https://api.openai.com).",
        )
        loader.add_option(
            "iron_anthropic_upstream",
            str,
            "",
            "Anthropic base URL (default: $IRON_ANTHROPIC_BASE_URL or https://api.anthropic.com).",
        )
        loader.add_option(
            "iron_body_limit", int, DEFAULT_BODY_LIMIT, "Largest request body accepted, in bytes."
        )
        intake.install()
        egress.install()

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
        answer_error(
            flow,
            errors.method_not_allowed(CONNECT_REFUSED),
        )

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Before the body is read: a request id, and the refusals that must not wait for
        the body (a declared body over the limit; a wrong token with a large body)."""
        req = flow.request
        m = meta(flow)
        m.setdefault("request_id", new_request_id())
        m.setdefault("started", time.time())
        INTAKE.request_ids[req] = m["request_id"]
        admin = req.path.startswith(ADMIN_PREFIX)
        if not admin:
            # Checked once, here; then the agent's token leaves the flow before any other
            # addon (mitmweb's intercept, a flow dump) can see it.
            m["authenticated"] = routing.token_matches(req.headers, self.token)
            forget_credentials(flow)
        declared = _declared_size(req.headers)
        if declared is not None and declared > self.body_limit:
            err = errors.too_large(declared, self.body_limit)
        elif (
            (declared is None or declared > EARLY_REFUSAL_BYTES)
            and not admin
            and not m["authenticated"]
        ):
            err = errors.bad_token()
        else:
            return
        m["shape"] = routing.client_shape(req.path, req.headers).value
        answer_error(flow, err)
        INTAKE.early_answers[req] = intake.assemble(flow.response, req.method == "HEAD")
        flow.kill()

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        req = flow.request
        m = meta(flow)
        m.setdefault("request_id", new_request_id())
        m.setdefault("started", time.time())
        try:
            target, refused = routing.normalize_target(req.path), None
        except ValueError as e:
            target, refused = None, e
        if target == "/" and req.method in ("GET", "HEAD"):
            flow.response = http.Response.make(
                200, HEALTH_TEXT, {"content-type": "text/plain", REQUEST_ID: m["request_id"]}
            )
            m["local"] = "health"
            forget_credentials(flow)
            return

        if "close" in req.headers.get("connection", "").lower():
            # the header is hop-by-hop and leaves the flow once it is routed upstream
            m["client_close"] = True
        shape = routing.client_shape(req.path, req.headers)
        m["shape"] = shape.value
        authenticated = m.get("authenticated")
        if authenticated is None:  # a flow that did not come through requestheaders
            authenticated = routing.token_matches(req.headers, self.token)
        if not authenticated:
            return answer_error(flow, errors.bad_token())

        size = len(req.raw_content or b"")
        if size > self.body_limit:
            return answer_error(flow, errors.too_large(size, self.body_limit))
        if target is None:
            return answer_error(flow, errors.bad_request(f"Request path refused: {refused}"))
        req.path = target  # routing, pricing and the upstream all see this one path
        try:
            payload = parse_json_body(req.raw_content or b"", req.headers.get("content-type", ""))
            model = model_of(payload)
        except errors.RouterError as e:
            return answer_error(flow, e)

        r = routing.route(req.method, req.path, req.headers, model)
        if r.provider is Provider.ANTHROPIC and r.by == "model":
            api = routing.openai_only_api(r.path)
            if api is not None:
                m.update(provider=r.provider.value, model=model, route=r.by)
                return answer_error(
                    flow,
                    errors.no_such_api_at_anthropic(api, req.method, r.path, model or ""),
                    errors.ApiShape.OPENAI,
                )
        m.update(
            provider=r.provider.value, model=model, route=r.by, shape=r.shape.value, path=r.path
        )
        m["stream"] = bool(payload and payload.get("stream"))
        if payload is not None:
            scratch(flow)["payload"] = payload
        flow.comment = f"{model or req.path} → {r.provider.value}"
        if r.gateway:
            m["gateway"] = True

        key = self.keys.get(r.provider)
        if key is not None:
            return self._forward(flow, r, key, None)
        ctl = control()
        if ctl is not None and ctl.keys is not None:
            cached = ctl.keys.fresh()
            if cached is not None:
                return self._forward_server_key(flow, r, cached)
            return self._fetch_and_forward(flow, r, ctl)
        return answer_error(
            flow,
            errors.key_unavailable(
                403,
                f"The router holds no {r.provider.value} key. Start it with "
                f"provider_keys={{'{r.provider.value}': ...}} "
                f"(or --set iron_{r.provider.value}_key=...).",
            ),
        )

    async def _fetch_and_forward(self, flow: http.HTTPFlow, r: routing.Route, ctl) -> None:
        try:
            key = await ctl.keys.get()
        except errors.RouterError as e:
            return answer_error(flow, e)
        ctl.provider = key.provider.value
        self._forward_server_key(flow, r, key)

    def _forward_server_key(self, flow: http.HTTPFlow, r: routing.Route, key) -> None:
        if key.provider is not r.provider:
            return answer_error(
                flow,
                errors.key_unavailable(
                    403,
                    f"This agent's provider key is for {key.provider.value}; the request needs "
                    f"{r.provider.value} (model {meta(flow).get('model')!r}).",
                ),
            )
        base = Upstream.parse(key.base_url) if key.base_url else None
        self._forward(flow, r, key.key, base)

    def _forward(
        self, flow: http.HTTPFlow, r: routing.Route, key: str, upstream: Upstream | None
    ) -> None:
        req = flow.request
        m = meta(flow)
        upstream = upstream or self.upstreams[r.provider]
        # Set on .data: the public setters would rewrite the Host header three times. The
        # authority goes: a client's absolute-form target (``POST http://elsewhere/...``)
        # must not reach the provider, whose front end could route on it, key and all.
        req.data.scheme, req.data.host, req.data.port, req.data.authority = (
            upstream.scheme.encode(),
            upstream.host,
            upstream.port,
            b"",
        )
        req.path = upstream.base_path + r.path
        m["upstream_base_path"] = upstream.base_path
        req.headers.fields = tuple(
            upstream_request_fields(
                req.headers.fields, r.provider, EGRESS.placeholder(key), upstream.netloc
            )
        )
        m["upstream"] = upstream.url

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        m = flow.metadata.get("iron")
        if m is None or "upstream" not in m or m.get("local_answer"):
            return
        resp = flow.response
        resp.headers.fields = tuple(client_response_fields(resp.headers.fields, m["request_id"]))
        if m.get("client_close"):
            resp.headers["connection"] = "close"
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            resp.stream = True
            m["stream"] = True
            m["ttft_ms"] = round((time.time() - m["started"]) * 1000, 1)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        m = flow.metadata.get("iron")
        if m is None:
            return
        m["status"] = flow.response.status_code
        m["latency_ms"] = round((time.time() - m.get("started", time.time())) * 1000, 1)

    @fail_closed
    def error(self, flow: http.HTTPFlow) -> None:
        m = flow.metadata.get("iron")
        if m is None:
            return
        if not m.get("local_answer"):  # a local answer already says what went wrong
            m["error"] = {"message": flow.error.msg if flow.error else "unknown"}


def _declared_size(headers: http.Headers) -> int | None:
    """The body size the client announced: 0 without a body, None for a chunked body."""
    if "transfer-encoding" in headers:
        return None
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0  # mitmproxy refuses a malformed Content-Length before any hook runs
