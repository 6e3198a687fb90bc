"""One request's exchange: everything the router knows and decides about a request, typed,
from its first header to its analytics event.

An ``Exchange`` is created once per flow and lives beside it, never inside it: mitmproxy
serialises ``flow.metadata`` into flow dumps and mitmweb, and the exchange holds live objects
(the parsed payload, the budget reservation, the stream meter). What a person debugging
traffic needs is its ``summary()``, a JSON-safe dict the addons publish as
``flow.metadata["iron"]`` (the README documents it field by field).
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .budget import Reservation
from .cost import Usage
from .errors import ApiShape, RouterError
from .gateway.request import Translation
from .pricing import ModelPrice
from .providers import Provider
from .upstreams import Upstream

Local = Literal["health", "admin"]


class Meter(Protocol):
    """What a stream meter tells the budget: the usage to charge, also for a cut stream
    (``input_estimate`` is called only if the stream did not report its input)."""

    def charged_with(self, input_estimate: Callable[[], int]) -> Usage: ...


@dataclass(slots=True, eq=False)
class Exchange:
    """One request through the router. Fields are filled in by the pipeline's stages, in
    order: admit (the client's request, its route), key, translate, reserve, stream, finish
    (the answer, the cost, the error)."""

    request_id: str
    started: float = field(default_factory=time.time)  # epoch seconds

    # -- the client's request (admit) --------------------------------------------------------
    shape: ApiShape = ApiShape.OPENAI  # the API shape the client speaks (for errors)
    authenticated: bool | None = None  # None until the token was checked
    client_close: bool = False  # the client asked for Connection: close
    local: Local | None = None  # answered by the router itself, not an API call
    method: str = ""
    provider: Provider | None = None
    model: str | None = None  # as the client named it
    route: str | None = None  # how the provider was chosen: prefix, model, client, default
    path: str = ""  # the API path as routed (normalised, provider prefix removed)
    payload: dict[str, Any] | None = None  # the JSON body as the upstream gets it
    stream: bool = False
    gateway: bool = False  # an OpenAI chat request for a Claude model: to be translated
    upstream: Upstream | None = None  # set once the request is forwarded

    # -- translation (OpenAI chat → Anthropic messages) -------------------------------------
    translation: Translation | None = None

    # -- budget (reserve) -------------------------------------------------------------------
    price: ModelPrice | None = None
    input_estimate: int | None = None  # None: not counted (no budget to keep within)
    reservation: Reservation | None = None
    cost_known: bool | None = None  # False: the model has no price, recorded without cost
    strip_usage_chunk: bool = False  # the router asked OpenAI for the usage chunk itself

    # -- the answer (stream, finish) --------------------------------------------------------
    meter: Meter | None = None
    status: int | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    answer: Any = None  # the provider's parsed JSON answer, when it was read
    usage: Usage | None = None
    cost_micros: int | None = None
    cost_estimated: bool = False  # charged the worst case: the provider had the request
    stream_complete: bool | None = None  # a translated stream: ended with [DONE]
    error: RouterError | None = None  # why the request failed, if it did
    answered_locally: bool = False  # the router wrote the answer (an error or a local page)
    recorded: bool = False  # its analytics event was built

    @property
    def translated(self) -> bool:
        return self.translation is not None

    @property
    def upstream_model(self) -> str | None:
        """The model the provider is asked for (a translation may rename it)."""
        return self.translation.model if self.translation is not None else self.model

    @property
    def provider_name(self) -> str:
        return self.provider.value if self.provider is not None else "unknown"

    def elapsed_ms(self) -> float:
        return round((time.time() - self.started) * 1000, 1)

    def summary(self) -> dict[str, Any]:
        """The JSON-safe facts of this exchange, for ``flow.metadata["iron"]``: only what is
        known so far, never a credential, a payload or a live object."""
        s: dict[str, Any] = {"request_id": self.request_id, "started": self.started}
        if self.local is not None:
            s["local"] = self.local
        if self.provider is not None:
            s["provider"] = self.provider.value
            s["model"] = storable(self.model)
            s["route"] = self.route
            s["path"] = storable(self.path)
            s["stream"] = self.stream
        if self.upstream is not None:
            s["upstream"] = self.upstream.url
        t = self.translation
        if t is not None:
            s["translated"] = True
            s["upstream_model"] = storable(t.model)
            if t.dropped:
                s["dropped_fields"] = [storable(f) for f in t.dropped]
        if self.reservation is not None:
            s["reservation_micros"] = self.reservation.amount
        if self.input_estimate is not None:
            s["input_estimate"] = self.input_estimate
        if self.cost_known is not None:
            s["cost_known"] = self.cost_known
        if self.status is not None:
            s["status"] = self.status
        if self.ttft_ms is not None:
            s["ttft_ms"] = self.ttft_ms
        if self.latency_ms is not None:
            s["latency_ms"] = self.latency_ms
        if self.usage is not None:
            s["usage"] = self.usage.as_dict()
        if self.cost_micros is not None:
            s["cost_micros"] = self.cost_micros
            if self.cost_estimated:
                s["cost_estimated"] = True
        if self.stream_complete is not None:
            s["stream_complete"] = self.stream_complete
        if self.error is not None:
            e = self.error
            s["error"] = {
                "status": e.status,
                "type": e.type,
                "code": e.code,
                "message": storable(e.message),
            }
        return s


_SURROGATES = re.compile("[\ud800-\udfff]")


def storable(value: str | None) -> str | None:
    """``value`` storable in a flow dump: a lone UTF-16 surrogate (from a JSON ``\\ud800``
    escape) becomes U+FFFD, since mitmproxy writes dumps as UTF-8."""
    return _SURROGATES.sub("\ufffd", value) if value else value


class Exchanges[F]:
    """The exchange of each live flow, held weakly: an exchange goes when its flow goes, so
    no path of a request (answered, cut off, killed, dropped by mitmproxy) can leak one."""

    __slots__ = ("_by_flow",)

    def __init__(self) -> None:
        self._by_flow: weakref.WeakKeyDictionary[F, Exchange] = weakref.WeakKeyDictionary()

    def get(self, flow: F) -> Exchange | None:
        return self._by_flow.get(flow)

    def start(self, flow: F, new_id: Callable[[], str]) -> Exchange:
        """The flow's exchange, created with the id ``new_id()`` gives if it has none yet."""
        x = self._by_flow.get(flow)
        if x is None:
            x = self._by_flow[flow] = Exchange(new_id())
        return x

    def live(self) -> list[Exchange]:
        """The exchanges of the flows still alive."""
        return list(self._by_flow.values())

    def __len__(self) -> int:
        return len(self._by_flow)
