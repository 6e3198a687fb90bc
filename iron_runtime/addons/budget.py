"""Budget addon: reserve a request's worst-case cost before it is forwarded (the pipeline's
reserve stage), settle it at the actual cost afterwards, on every exit path.

Exit paths: a normal answer (settled from the provider's usage), an upstream error status
(released: providers do not bill refused requests), a stream cut off by either side (charged
for input plus delivered output), a connection error before any answer (released, or the
worst case once the provider had the request), an exception in a hook (the fail-closed
guard, then the same paths).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable

from mitmproxy import ctx, exceptions, http

from iron_runtime import pipeline, settings, tokens
from iron_runtime.cost import summary_comment
from iron_runtime.errors import RouterError
from iron_runtime.exchange import Exchange, storable
from iron_runtime.money import micros_to_usd, usd_to_micros
from iron_runtime.pipeline import Services
from iron_runtime.settings import Loader

from ._glue import answer_error, fail_closed, publish


class Budget:
    def __init__(self, services: Services | None = None) -> None:
        self.s = services or Services()

    def load(self, loader: Loader) -> None:
        settings.declare(loader, "budget")

    def configure(self, updated: set[str]) -> None:
        if "iron_budget" in updated:
            value = ctx.options.iron_budget.strip()
            try:
                self.s.ledger.set_limit(usd_to_micros(float(value)) if value else None)
            except ValueError as e:
                raise exceptions.OptionsError(f"iron_budget: {e}") from None

    def running(self) -> None:
        if self.s.ledger.limit is not None or ctx.options.iron_lease:
            tokens.warm_up()  # what the first priced request will count with, off start-up

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        x = self.s.exchanges.get(flow)
        if flow.response or x is None or x.upstream is None:
            return None
        outcome = pipeline.reserve(x, self.s, len(flow.request.raw_content or b""))
        if outcome is None or isinstance(outcome, RouterError):
            return self._apply(flow, x, outcome)
        return self._apply_later(flow, x, outcome)

    async def _apply_later(
        self, flow: http.HTTPFlow, x: Exchange, pending: Awaitable[RouterError | None]
    ) -> None:
        self._apply(flow, x, await pending)

    @staticmethod
    def _apply(flow: http.HTTPFlow, x: Exchange, outcome: RouterError | None) -> None:
        if outcome is not None:
            return answer_error(flow, x, outcome)
        if x.reservation is not None and isinstance(x.payload, dict) and x.payload.get("stream"):
            flow.request.headers["accept-encoding"] = "identity"  # the meter reads the stream
            if x.strip_usage_chunk:  # the router asked for the usage chunk itself
                flow.request.content = json.dumps(x.payload).encode()
        if x.reservation is not None or x.cost_known is not None:
            publish(flow, x)  # what the flow shows while it waits for the provider

    def response(self, flow: http.HTTPFlow) -> None:
        x = self.s.exchanges.get(flow)
        resp = flow.response
        if x is None or x.reservation is None or resp is None:
            return
        pipeline.settle(x, self.s, resp.status_code, lambda: resp.get_content(strict=False) or b"")
        if x.cost_micros is not None:
            flow.comment = summary_comment(storable(x.model), x.usage, x.cost_micros)
            if x.meter is None:
                resp.headers["x-iron-cost-usd"] = f"{micros_to_usd(x.cost_micros):.6f}"

    def error(self, flow: http.HTTPFlow) -> None:
        x = self.s.exchanges.get(flow)
        if x is None or x.reservation is None:
            return
        reached = flow.server_conn is not None and bool(flow.server_conn.timestamp_tcp_setup)
        pipeline.settle_failure(x, self.s, flow.response is not None, reached)
        if x.cost_micros is not None and x.usage is not None:
            flow.comment = summary_comment(storable(x.model), x.usage, x.cost_micros)
