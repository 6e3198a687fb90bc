"""The request pipeline: the stages every request goes through, free of mitmproxy.

::

    admit      auth → size → path → parse → route        the client's request, checked
    key        configured key, or the control server's    which key, which upstream
    translate  OpenAI chat → Anthropic messages           for a Claude model, when needed
    reserve    price → count → worst case → ledger        before a byte goes upstream
    stream     chunk transformer: translation ∘ metering  per chunk of an SSE answer
    finish     translate back → settle → lease report → event

Each stage reads and fills the request's ``Exchange`` and returns what the adapter (a
mitmproxy addon of a few lines per hook) must do: go on, or answer a ``RouterError``. A stage
that must wait (a key fetch, a lease handshake, counting a long prompt off the event loop)
returns an awaitable of the same result. The shared state a stage needs comes in a
``Services`` object, never from another addon.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import errors, routing
from .analytics.events import Event, LlmRequestFailed, error_message_of, event_for
from .analytics.recorder import Recorder
from .budget import Ledger
from .control import ProviderKey, ServerLink
from .cost import (
    Usage,
    choices,
    cost_micros,
    embedding_input_tokens,
    is_embeddings,
    is_free,
    is_unmetered,
    requested_max_output,
    usage_from,
    worst_case_micros,
)
from .errors import ApiShape, RouterError
from .exchange import Exchange, Exchanges
from .gateway import GatewayStream, translate_error, translate_request
from .gateway.response import translate_response
from .keys import ProviderKeys
from .metering import StreamMeter
from .money import usd_to_micros
from .payload import model_of, parse_json_body
from .pricing import ModelPrice, PriceTable
from .providers import Provider
from .tokens import (
    count_request,
    count_request_estimate,
    count_text,
    count_text_estimate,
    encoding_for,
)
from .upstreams import Upstream

logger = logging.getLogger("iron_runtime")

# Bodies larger than this are counted on a worker thread (tiktoken releases the GIL), so that
# a long prompt does not stall every other flow on the event loop.
INLINE_COUNT_BYTES = 64 * 1024
DEFAULT_MAX_OUTPUT = 128_000  # when neither the request nor the price table says

Outcome = RouterError | None  # None: go on


@dataclass(eq=False)
class Services:
    """The state the stages share, handed to every addon at construction: the exchanges of
    live flows, the price table, the budget ledger, the control-server link (server key and
    lease), the analytics recorder. Addons receive these objects; they never look each
    other up."""

    exchanges: Exchanges[Any] = field(default_factory=Exchanges)
    prices: PriceTable = field(default_factory=PriceTable.builtin)
    ledger: Ledger = field(default_factory=Ledger)
    link: ServerLink = field(init=False)
    recorder: Recorder = field(default_factory=Recorder)
    unpriced_warned: set[str] = field(default_factory=set)  # models logged as unpriced

    def __post_init__(self) -> None:
        self.link = ServerLink(self.ledger)

    def set_budget_usd(self, value: float | None) -> None:
        """A new limit; under a server lease it cannot exceed what the lease granted (the
        server, not the router, decides how much an agent may spend)."""
        limit = None if value is None else usd_to_micros(value)
        granted = self.link.granted()
        if granted is not None:
            limit = granted if limit is None else min(limit, granted)
        self.ledger.set_limit(limit)


# -- admit -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Incoming:
    """The client's request as the router received it."""

    method: str
    target: str  # the request target (path and query)
    headers: Mapping[str, str]
    body: bytes


def admit(x: Exchange, req: Incoming, token: str, body_limit: int) -> Outcome:
    """Check and route the client's request: its token, its size, its path, its JSON body,
    then the provider (prefix, header or model). A health check (``GET /``) is marked
    ``x.local = "health"``. On success ``x`` holds the route and the parsed payload."""
    x.method = req.method
    try:
        target, refused = routing.normalize_target(req.target), None
    except ValueError as e:
        target, refused = None, e
    if target == "/" and req.method in ("GET", "HEAD"):
        x.local = "health"
        return None
    headers = req.headers
    if "close" in headers.get("connection", "").lower():
        x.client_close = True  # hop-by-hop: the header leaves the flow once it is routed
    x.shape = routing.client_shape(req.target, headers)
    if x.authenticated is None:  # not checked on the headers already
        x.authenticated = routing.token_matches(headers, token)
    if not x.authenticated:
        return errors.bad_token()
    if len(req.body) > body_limit:
        return errors.too_large(len(req.body), body_limit)
    if target is None:
        return errors.bad_request(f"Request path refused: {refused}")
    try:
        payload = parse_json_body(req.body, headers.get("content-type", ""))
        model = model_of(payload)
    except RouterError as e:
        return e
    r = routing.route(req.method, target, headers, model)
    x.provider, x.model, x.route = r.provider, model, r.by
    if r.provider is Provider.ANTHROPIC and r.by == "model":
        api = routing.openai_only_api(r.path)
        if api is not None:
            x.shape = ApiShape.OPENAI
            return errors.no_such_api_at_anthropic(api, req.method, r.path, model or "")
    x.shape, x.path, x.gateway = r.shape, r.path, r.gateway
    x.payload = payload
    x.stream = bool(payload and payload.get("stream"))
    return None


# -- key -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardKey:
    """The real key a request goes upstream with, and the upstream the server named (if)."""

    secret: str
    upstream: Upstream | None = None

    def __repr__(self) -> str:  # never print the key
        return f"ForwardKey(upstream={self.upstream!r})"


def key(
    x: Exchange, keys: ProviderKeys, link: ServerLink
) -> ForwardKey | RouterError | Awaitable[ForwardKey | RouterError]:
    """The configured key for the route's provider; else the control server's (server mode),
    from its cache or a fetch the request awaits; else a 403 saying how to configure one."""
    assert x.provider is not None
    secret = keys.get(x.provider)
    if secret is not None:
        return ForwardKey(secret)
    cache = link.keys
    if cache is not None:
        cached = cache.fresh()
        if cached is not None:
            return _server_key(x, cached)
        return _fetch_key(x, link)
    p = x.provider.value
    return errors.key_unavailable(
        403,
        f"The router holds no {p} key. Start it with provider_keys={{'{p}': ...}} "
        f"(or --set iron_{p}_key=...).",
    )


async def _fetch_key(x: Exchange, link: ServerLink) -> ForwardKey | RouterError:
    try:
        fetched = await link.fetch_key()
    except RouterError as e:
        return e
    return _server_key(x, fetched)


def _server_key(x: Exchange, k: ProviderKey) -> ForwardKey | RouterError:
    assert x.provider is not None
    if k.provider is not x.provider:
        return errors.key_unavailable(
            403,
            f"This agent's provider key is for {k.provider.value}; the request needs "
            f"{x.provider.value} (model {x.model!r}).",
        )
    return ForwardKey(k.key, Upstream.parse(k.base_url) if k.base_url else None)


# -- translate -------------------------------------------------------------------------------


def translate(x: Exchange, prices: PriceTable) -> Outcome:
    """An OpenAI chat request for a Claude model becomes an Anthropic messages request:
    ``x.translation`` holds it and ``x.payload`` is now its body (what the budget prices)."""
    if not x.gateway:
        return None
    try:
        t = translate_request(x.payload or {}, prices.max_output_tokens)
    except RouterError as e:
        x.shape = ApiShape.OPENAI
        return e
    x.translation, x.payload = t, t.body
    return None


# -- reserve ---------------------------------------------------------------------------------


def reserve(x: Exchange, s: Services, body_size: int) -> Outcome | Awaitable[Outcome]:
    """Reserve the request's worst-case cost in the ledger before it is forwarded; refuse
    what cannot be priced while a budget is set. A request that will be streamed with a
    reservation gets ``x.strip_usage_chunk`` when the router asks OpenAI for the usage chunk
    (``x.payload`` then carries ``stream_options.include_usage``)."""
    path = x.path.partition("?")[0]
    if is_free(path):
        return None
    ledger = s.ledger
    if ledger.limit is not None and is_unmetered(x.method, path):
        return errors.unmetered(path)
    body = x.payload
    model = x.upstream_model
    if not model or not isinstance(body, dict):
        if x.method == "POST" and ledger.limit is not None:
            return errors.model_less_unpriced()  # batches, uploads, multipart calls
        return None  # listing models and other reads cost nothing
    if s.link.lease_pending():
        return _after_lease(x, s, body_size)
    price = s.prices.lookup(model)
    if price is None or not price.priced:
        if ledger.limit is not None:
            return errors.unpriced_model(model)
        if model not in s.unpriced_warned:
            s.unpriced_warned.add(model)
            logger.warning(
                "iron_runtime: model %r has no price; its requests are recorded with "
                "cost_known=false",
                model,
            )
        # no cost, but the usage is still read and recorded
        x.reservation, x.cost_known = ledger.reserve(0), False
        _prepare_stream(x, body)
        return None
    if ledger.limit is None:
        # Nothing to keep within: no count now. The answer's usage is what is charged; the
        # input is counted only if the answer lacks it (see ``input_estimate``).
        x.reservation, x.price, x.cost_known = ledger.reserve(0), price, True
        _prepare_stream(x, body)
        return None
    if body_size > INLINE_COUNT_BYTES:
        return _reserve_later(x, s, body, model, price)
    try:
        tokens = input_tokens(x, body, model)
    except RouterError as e:  # e.g. content nested past the JSON depth limit
        return e
    return _reserve(x, s, tokens, body, model, price)


def input_tokens(x: Exchange, body: dict[str, Any], model: str, estimate: bool = False) -> int:
    """The input tokens a request is reserved for: an embeddings request's inputs (strings
    counted, token ids as given), else its prompt as the provider's tokenizer sees it.
    ``estimate``: a figure only recorded, counted without building a vocabulary."""
    if is_embeddings(x.path):
        return embedding_input_tokens(body, model, count_text_estimate if estimate else count_text)
    counter = count_request_estimate if estimate else count_request
    return counter(body, model, x.provider is Provider.ANTHROPIC)


async def _reserve_later(
    x: Exchange, s: Services, body: dict[str, Any], model: str, price: ModelPrice
) -> Outcome:
    try:
        tokens = await asyncio.to_thread(input_tokens, x, body, model)
    except RouterError as e:
        return e
    return _reserve(x, s, tokens, body, model, price)


async def _after_lease(x: Exchange, s: Services, body_size: int) -> Outcome:
    """A request that needs the server's lease waits for a handshake in flight (bounded),
    then goes on; without a lease after that, 503 with the reason."""
    if not await s.link.wait_for_lease():
        return s.link.lease_unavailable()
    outcome = reserve(x, s, body_size)
    if outcome is None or isinstance(outcome, RouterError):
        return outcome
    return await outcome


def _reserve(
    x: Exchange, s: Services, tokens: int, body: dict[str, Any], model: str, price: ModelPrice
) -> Outcome:
    amount, max_out = worst_case(x, tokens, body, price)
    try:
        detail = f"{tokens} input + {max_out} output tokens of {model}"
        reservation = s.ledger.reserve(amount, detail)
    except RouterError as e:
        s.link.need_more()  # a lease may be refreshed; the next request can then pass
        return e
    x.reservation, x.price, x.input_estimate, x.cost_known = reservation, price, tokens, True
    _prepare_stream(x, body)
    return None


def worst_case(
    x: Exchange, tokens: int, body: dict[str, Any], price: ModelPrice
) -> tuple[int, int]:
    """The most the request can cost (µ$) with ``tokens`` of input, and the output tokens
    that assumes: ``max_tokens`` (or the model's maximum) for each of its choices."""
    if is_embeddings(x.path):
        max_out = 0  # an embedding is billed for its input only
    else:
        max_out = requested_max_output(body) or price.max_output_tokens or DEFAULT_MAX_OUTPUT
        max_out *= choices(body)
    return worst_case_micros(price, tokens, max_out), max_out


def _prepare_stream(x: Exchange, body: dict[str, Any]) -> None:
    if body.get("stream") and x.provider is Provider.OPENAI and not x.translated:
        _ask_for_stream_usage(x, body)


def input_estimate(x: Exchange) -> int:
    """The input tokens the request was reserved for; for a request reserved without a
    limit, estimated now without building a vocabulary (exact if it is built; 0 if the
    body cannot be counted): a figure for the record, not for a budget."""
    if x.input_estimate is None:
        x.input_estimate = 0
        model, body = x.upstream_model, x.payload
        if model and isinstance(body, dict):
            try:
                x.input_estimate = input_tokens(x, body, model, estimate=True)
                x.cost_estimated = True  # counted as a figure for the record, maybe estimated
            except Exception:  # noqa: BLE001 - a recorded estimate, never a failure
                logger.exception("iron_runtime: counting a request's input tokens failed")
    return x.input_estimate


def _ask_for_stream_usage(x: Exchange, body: dict[str, Any]) -> None:
    """OpenAI reports a stream's usage only when asked; ask, and remember to remove the extra
    chunk if the client did not ask itself."""
    if not x.path.partition("?")[0].endswith("/chat/completions"):
        return
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return
    extra = options if isinstance(options, dict) else {}
    x.payload = {**body, "stream_options": {**extra, "include_usage": True}}
    x.strip_usage_chunk = True


# -- stream ----------------------------------------------------------------------------------

StreamFn = Callable[[bytes], bytes | list[bytes]]


def stream(x: Exchange, status: int) -> StreamFn | None:
    """The chunk transformer of an SSE answer: translation (Anthropic → OpenAI chunks) for a
    translated request, metering for a reserved one, both at once for a translated reserved
    one; None when the bytes pass through untouched. The function follows mitmproxy's stream
    contract: fed raw bytes, ``b""`` at the end, returning ``[]`` for "nothing yet"."""
    ok = 200 <= status < 300
    # reserved without a limit: delivered text is only recorded, never built a vocabulary for
    count = count_text_estimate if x.input_estimate is None else count_text
    if x.translation is not None and ok:
        translator = GatewayStream(x.model or "", x.translation.include_usage)
        translator.meter.count = count
        x.meter = translator.meter
        return _translating(x, translator)
    if x.reservation is not None:
        meter = StreamMeter(
            x.provider is Provider.ANTHROPIC,
            encoding_for(x.model or ""),
            x.strip_usage_chunk,
        )
        meter.meter.count = count
        x.meter = meter.meter
        return _metering(meter)
    return None


_TRANSLATION_FAILED = (
    b'data: {"error":{"message":"The router failed to translate the stream.",'
    b'"type":"iron_cage_internal_error","param":null,"code":"internal_error"}}\n\n'
)


def _translating(x: Exchange, translator: GatewayStream) -> StreamFn:
    def translate_chunk(data: bytes) -> bytes | list[bytes]:
        try:
            out = translator.feed(data)
        except Exception:
            logger.exception("iron_runtime: gateway stream translation failed")
            out = _TRANSLATION_FAILED
            translator.finished = True
        if translator.finished and x.stream_complete is None:
            x.stream_complete = translator.complete
            if translator.error:
                x.error = errors.stream_broken(translator.error)
        return out or []

    return translate_chunk


def _metering(meter: StreamMeter) -> StreamFn:
    def meter_chunk(data: bytes) -> bytes | list[bytes]:
        try:
            out = meter.feed(data)
        except Exception:
            logger.exception("iron_runtime: stream metering failed")
            out = data
        return out or []

    return meter_chunk


# -- finish ----------------------------------------------------------------------------------


def translate_answer(x: Exchange, status: int, raw: bytes) -> bytes | RouterError:
    """A translated request's whole (not streamed) answer, back in OpenAI's shape; the
    provider's parsed answer stays in ``x.answer`` for the budget."""
    if 200 <= status < 300:
        try:
            message = json.loads(raw)
            x.answer = message
            body = translate_response(message, x.model or "")
        except (ValueError, TypeError, AttributeError) as e:
            return errors.upstream_error(
                502, f"Anthropic sent an answer the gateway could not read: {e}"
            )
    else:
        body = translate_error(status, raw)
    try:
        return json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate echoed back: keep it as a JSON escape
        return json.dumps(body).encode()


def settle(x: Exchange, s: Services, status: int | None, body: Callable[[], bytes]) -> None:
    """Settle the reservation of an answered request: at the metered usage of a stream, at
    the answer's usage otherwise (``body`` reads it), released for an error status
    (providers do not bill refused requests). The reservation always ends here."""
    reservation = x.reservation
    if reservation is None or reservation.done:
        return
    try:
        if status is None or not 200 <= status < 300:
            return
        if x.meter is not None:
            usage = x.meter.charged_with(lambda: input_estimate(x))
        else:
            answer = x.answer
            if answer is None:
                try:
                    answer = json.loads(body() or b"null")
                except ValueError:
                    answer = None
            usage = usage_from(answer) or Usage(input_estimate(x), 0)
        _charge(x, s, usage)
    except Exception:
        logger.exception("iron_runtime: settling a request failed; its reservation is released")
    finally:
        s.ledger.release(reservation)  # no-op once settled


def settle_failure(x: Exchange, s: Services, answered: bool, reached_provider: bool) -> None:
    """Settle the reservation of a request that ended with a broken connection: a stream cut
    off by either side is charged for its input plus what was delivered; a request the
    provider had, with no answer, at the worst case (it may well be billed in full); a
    connection that failed before that costs nothing. The reservation always ends here."""
    reservation = x.reservation
    if reservation is None or reservation.done:
        return
    try:
        if x.meter is not None and answered:
            _charge(x, s, x.meter.charged_with(lambda: input_estimate(x)))
        elif reached_provider and x.price is not None:
            amount = reservation.amount
            if x.input_estimate is None and x.price is not None and isinstance(x.payload, dict):
                # reserved without a limit: the worst case is worked out now
                amount = worst_case(x, input_estimate(x), x.payload, x.price)[0]
            s.ledger.settle(reservation, amount)
            x.cost_micros, x.cost_estimated = amount, True
            s.link.settled(x.request_id, 0, amount, x.upstream_model or "", x.provider_name)
    except Exception:
        logger.exception("iron_runtime: settling a failed request failed")
    finally:
        s.ledger.release(reservation)


def _charge(x: Exchange, s: Services, usage: Usage) -> None:
    assert x.reservation is not None
    if x.price is None:  # a model without a price: its usage is recorded, at no known cost
        x.usage = usage
        return
    cost = cost_micros(x.price, usage)
    s.ledger.settle(x.reservation, cost)
    x.cost_micros, x.usage = cost, usage
    s.link.settled(
        x.request_id, usage.prompt + usage.output, cost, x.upstream_model or "", x.provider_name
    )


def unfinished(x: Exchange, s: Services) -> Event:
    """The event of a request still in flight when the router stops: settled as a broken
    connection (what was delivered of a stream; the worst case once forwarded)."""
    if x.error is None:
        x.error = errors.connection_failed("the router stopped before the request was complete")
    settle_failure(x, s, x.meter is not None, x.upstream is not None and not x.answered_locally)
    x.recorded = True
    return event(x)


def event(x: Exchange, body: Callable[[], bytes] | None = None) -> Event:
    """The request's analytics event; ``body`` reads the provider's whole answer, whose error
    message a failed one records (read only for an error status the provider sent)."""
    message = ""
    if body is not None and x.status is not None and not 200 <= x.status < 300:
        if not x.answered_locally:
            message = error_message_of(body())
    return event_for(x, message)


def record(x: Exchange, body: Callable[[], bytes] | None = None) -> Event | None:
    """The event to record for ``x``, once: None for the router's own pages (health, admin)
    and for an exchange already recorded. Never raises: an event that cannot be built is
    replaced by a minimal failed one."""
    if x.local is not None or x.recorded:
        return None
    x.recorded = True
    try:
        return event(x, body)
    except Exception:
        logger.exception("iron_runtime: could not build the analytics event")
        return LlmRequestFailed(
            model=str(x.model or ""),
            request_id=x.request_id,
            error_code="internal_error",
            error_message="event could not be built",
        )
