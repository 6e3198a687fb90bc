"""Budget addon: reserve a request's worst-case cost before it is forwarded, settle it at
the actual cost afterwards, on every exit path.

Exit paths: a normal answer (settled from the provider's usage), an upstream error status
(released: providers do not bill refused requests), a stream cut off by either side (charged
for input plus delivered output), a connection error before any answer (released), an
exception in a hook (the fail-closed guard, then the same paths).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

from mitmproxy import ctx, exceptions, http

from iron_runtime import errors
from iron_runtime.budget import Ledger, Reservation, micros_to_usd, usd_to_micros
from iron_runtime.cost import (
    Usage,
    choices,
    cost_micros,
    embedding_input_tokens,
    is_embeddings,
    is_free,
    is_unmetered,
    requested_max_output,
    summary_comment,
    usage_from,
    worst_case_micros,
)
from iron_runtime.metering import StreamMeter
from iron_runtime.pricing import ModelPrice
from iron_runtime.tokens import count_request, encoding, encoding_for

from ._glue import answer_error, drop_scratch, fail_closed, meta, scratch
from .control import control
from .pricing import price_table

logger = logging.getLogger("iron_runtime")

# Bodies larger than this are counted on a worker thread (tiktoken releases the GIL), so that
# a long prompt does not stall every other flow on the event loop.
INLINE_COUNT_BYTES = 64 * 1024
DEFAULT_MAX_OUTPUT = 128_000  # when neither the request nor the price table says


class Budget:
    def __init__(self) -> None:
        self.ledger = Ledger(None)
        self.warned: set[str] = set()
        self.refused = 0  # requests refused for the budget (402)

    def load(self, loader) -> None:
        loader.add_option(
            "iron_budget",
            str,
            "",
            "Budget in USD for everything this router forwards (empty: unlimited).",
        )

    def configure(self, updated: set[str]) -> None:
        if "iron_budget" in updated:
            value = ctx.options.iron_budget.strip()
            try:
                self.ledger.set_limit(usd_to_micros(float(value)) if value else None)
            except ValueError as e:
                raise exceptions.OptionsError(f"iron_budget: {e}") from None

    def running(self) -> None:
        # Load the vocabularies now (0.3 s) rather than on the first request, but off the
        # start-up path: a request arriving earlier waits for them.
        threading.Thread(target=_load_vocabularies, daemon=True).start()

    # -- before forwarding ---------------------------------------------------------------

    @fail_closed
    def request(self, flow: http.HTTPFlow):
        m = flow.metadata.get("iron")
        if flow.response or m is None or "upstream" not in m:
            return None
        path = m.get("path", "").partition("?")[0]
        if is_free(path):
            return None
        if self.ledger.limit is not None and is_unmetered(flow.request.method, path):
            return answer_error(flow, errors.unmetered(path))
        body = scratch(flow).get("payload")
        model = m.get("upstream_model") or m.get("model")
        if not model or not isinstance(body, dict):
            if flow.request.method == "POST" and self.ledger.limit is not None:
                # batches, uploads of work, multipart calls: nothing to price them by
                return answer_error(flow, errors.model_less_unpriced())
            return None  # listing models and other reads cost nothing
        ctl = control()
        if ctl is not None and ctl.lease_pending():
            return self._after_lease(flow, ctl)
        price = price_table().lookup(model)
        if price is None or not price.priced:
            if self.ledger.limit is not None:
                return answer_error(flow, errors.unpriced_model(model))
            if model not in self.warned:
                self.warned.add(model)
                logger.warning(
                    "iron_runtime: model %r has no price; its requests are "
                    "recorded with cost_known=false",
                    model,
                )
            m["cost_known"] = False
            return None
        anthropic = m.get("provider") == "anthropic"
        embeddings = is_embeddings(m.get("path", ""))
        if len(flow.request.raw_content or b"") > INLINE_COUNT_BYTES:
            return self._reserve_later(flow, body, model, price, anthropic, embeddings)
        try:
            tokens = request_input_tokens(body, model, anthropic, embeddings)
        except errors.RouterError as e:  # e.g. content nested past the JSON depth limit
            return answer_error(flow, e)
        self._reserve(flow, tokens, body, model, price, embeddings)
        return None

    async def _reserve_later(self, flow, body, model, price, anthropic, embeddings) -> None:
        try:
            tokens = await asyncio.to_thread(
                request_input_tokens, body, model, anthropic, embeddings
            )
            self._reserve(flow, tokens, body, model, price, embeddings)
        except errors.RouterError as e:
            answer_error(flow, e)
        except Exception:
            logger.exception("iron_runtime: budget reservation failed")
            answer_error(
                flow,
                errors.internal_error(
                    "The router failed to price this request, which was not forwarded."
                ),
            )

    def _reserve(
        self,
        flow: http.HTTPFlow,
        input_tokens: int,
        body: dict,
        model: str,
        price: ModelPrice,
        embeddings: bool = False,
    ) -> None:
        m = meta(flow)
        if embeddings:
            max_out = 0  # an embedding is billed for its input only
        else:
            max_out = requested_max_output(body) or price.max_output_tokens or DEFAULT_MAX_OUTPUT
            max_out *= choices(body)
        amount = worst_case_micros(price, input_tokens, max_out)
        try:
            reservation = self.ledger.reserve(
                amount, f"{input_tokens} input + {max_out} output tokens of {model}"
            )
        except errors.RouterError as e:
            self.refused += 1
            ctl = control()
            if ctl is not None:
                ctl.need_more()  # a lease may be refreshed; the next request can then pass
            return answer_error(flow, e)
        s = scratch(flow)
        s["reservation"], s["price"], s["input_estimate"] = reservation, price, input_tokens
        m.update(reservation_micros=amount, input_estimate=input_tokens, cost_known=True)
        if body.get("stream"):
            flow.request.headers["accept-encoding"] = "identity"  # the meter reads the stream
            if m.get("provider") == "openai" and not m.get("translated"):
                self._ask_for_stream_usage(flow, body)

    async def _after_lease(self, flow: http.HTTPFlow, ctl) -> None:
        """A request that needs the server's lease waits for a handshake in flight (bounded),
        then goes on; without a lease after that, 503 with the reason."""
        if not await ctl.wait_for_lease():
            return answer_error(flow, ctl.lease_unavailable())
        pending = self.request(flow)
        if pending is not None:
            await pending

    @staticmethod
    def _ask_for_stream_usage(flow: http.HTTPFlow, body: dict) -> None:
        """OpenAI reports a stream's usage only when asked; ask, and remember to remove the
        extra chunk if the client did not ask itself."""
        if not flow.request.path.partition("?")[0].endswith("/chat/completions"):
            return
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            return
        body = {
            **body,
            "stream_options": {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            },
        }
        flow.request.content = json.dumps(body).encode()
        scratch(flow)["strip_usage_chunk"] = True

    # -- the answer ----------------------------------------------------------------------

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        s = scratch(flow)
        resp = flow.response
        if "reservation" not in s or resp is None or "meter" in s:
            return
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            m = meta(flow)
            meter = StreamMeter(
                m.get("provider") == "anthropic",
                encoding_for(m.get("model") or ""),
                s.get("strip_usage_chunk", False),
            )
            s["meter"] = meter.meter
            resp.stream = _metered(meter)

    def response(self, flow: http.HTTPFlow) -> None:
        s = drop_scratch(flow)
        reservation = s.get("reservation")
        if reservation is None:
            return
        try:
            self._settle_answer(flow, s)
        except Exception:
            logger.exception("iron_runtime: settling a request failed; its reservation is released")
        finally:
            self.ledger.release(reservation)  # no-op once settled

    def error(self, flow: http.HTTPFlow) -> None:
        s = drop_scratch(flow)
        reservation = s.get("reservation")
        if reservation is None:
            return
        try:
            meter = s.get("meter")
            if meter is not None and flow.response is not None:
                # a stream cut off by the client or the provider: input plus what was delivered
                self._charge(flow, reservation, s["price"], meter.charged(s["input_estimate"]))
            elif flow.server_conn is not None and flow.server_conn.timestamp_tcp_setup:
                # the provider had the request and may well bill it in full: charge the worst
                # case rather than nothing (connection failures before that cost nothing)
                self.ledger.settle(reservation, reservation.amount)
                m = meta(flow)
                m.update(cost_micros=reservation.amount, cost_estimated=True)
                ctl = control()
                if ctl is not None:
                    ctl.settled(
                        m.get("request_id", ""),
                        0,
                        reservation.amount,
                        m.get("upstream_model") or m.get("model") or "",
                        m.get("provider", ""),
                    )
        except Exception:
            logger.exception("iron_runtime: settling a failed request failed")
        finally:
            self.ledger.release(reservation)

    def _settle_answer(self, flow: http.HTTPFlow, s: dict) -> None:
        resp = flow.response
        reservation: Reservation = s["reservation"]
        if resp is None or not 200 <= resp.status_code < 300:
            self.ledger.release(reservation)
            return
        meter = s.get("meter")
        if meter is not None:
            usage = meter.charged(s["input_estimate"])
        else:
            answer = s.get("answer")
            if answer is None:
                try:
                    answer = json.loads(resp.get_content(strict=False) or b"null")
                except ValueError:
                    answer = None
            usage = usage_from(answer) or Usage(s["input_estimate"], 0)
        cost = self._charge(flow, reservation, s["price"], usage)
        if meter is None:
            resp.headers["x-iron-cost-usd"] = f"{micros_to_usd(cost):.6f}"

    def _charge(
        self, flow: http.HTTPFlow, reservation: Reservation, price: ModelPrice, usage: Usage
    ) -> int:
        cost = cost_micros(price, usage)
        self.ledger.settle(reservation, cost)
        m = meta(flow)
        m.update(cost_micros=cost, usage=usage.as_dict())
        flow.comment = summary_comment(m.get("model"), usage, cost)
        ctl = control()
        if ctl is not None:
            ctl.settled(
                m.get("request_id", ""),
                usage.prompt + usage.output,
                cost,
                m.get("upstream_model") or m.get("model") or "",
                m.get("provider", ""),
            )
        return cost

    # -- admin ---------------------------------------------------------------------------

    def status(self) -> dict:
        spent, reserved, limit = self.ledger.status()
        return {
            "spent_micros": spent,
            "reserved_micros": reserved,
            "limit_micros": limit,
            "refused": self.refused,
        }

    def set_limit_usd(self, value: float | None) -> None:
        """A new limit; under a server lease it cannot exceed what the lease granted (the
        server, not the router, decides how much an agent may spend)."""
        limit = None if value is None else usd_to_micros(value)
        ctl = control()
        granted = ctl.granted() if ctl is not None else None
        if granted is not None:
            limit = granted if limit is None else min(limit, granted)
        self.ledger.set_limit(limit)


def request_input_tokens(body: dict, model: str, anthropic: bool, embeddings: bool) -> int:
    """The input tokens a request is reserved for: an embeddings request's inputs (strings
    counted, token ids as given), else its prompt as the provider's tokenizer sees it."""
    if embeddings:
        return embedding_input_tokens(body, model)
    return count_request(body, model, anthropic)


def _load_vocabularies() -> None:
    encoding("cl100k_base")
    encoding("o200k_base")


def _metered(meter: StreamMeter):
    """The stream function: meter the provider's bytes as they pass. ``[]`` means "nothing
    yet" to mitmproxy (``b""`` would end the client's response)."""

    def feed(data: bytes):
        try:
            out = meter.feed(data)
        except Exception:
            logger.exception("iron_runtime: stream metering failed")
            out = data
        return out or []

    return feed
