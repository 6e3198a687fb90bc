"""The iron_runtime addons, in the order their hooks must run, behind the one addon mitmproxy
sees; ``addons/iron.py`` at the top of a checkout loads this module for ``mitmdump -s`` and
``mitmweb -s``.

The order is the pipeline's (``iron_runtime.pipeline``): pricing and control set up the
services, admin answers its own paths, the router admits, chooses the key and forwards, the
gateway translates, the budget reserves, and at the end the budget settles and analytics
records. Every part receives the same ``Services``; none looks another up.

mitmproxy offers every event to every addon it holds (a lookup per addon per event, a dozen
events per request); ``Iron`` is one addon that hands each event to the parts that handle
it, in order, with mitmproxy's own rules: a part that returns an awaitable is awaited
before the next part runs, and an exception in one part is logged without keeping the
others from running (the fail-closed guard of each part has already answered the flow).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mitmproxy import http

from iron_runtime import pipeline
from iron_runtime.addons import egress, intake, lean, listen
from iron_runtime.addons.admin import Admin
from iron_runtime.addons.analytics import Analytics
from iron_runtime.addons.budget import Budget
from iron_runtime.addons.control import Control
from iron_runtime.addons.gateway import Gateway
from iron_runtime.addons.pricing import Pricing
from iron_runtime.addons.router import Router
from iron_runtime.pipeline import Services
from iron_runtime.settings import Loader

logger = logging.getLogger("iron_runtime")

FLOW_HOOKS = ("http_connect", "requestheaders", "request", "responseheaders", "response", "error")

FlowHook = Callable[[http.HTTPFlow], Any]


def make_parts(services: Services) -> list[Any]:
    """The parts of the router, one per concern, in the order their hooks must run."""
    return [
        listen.Backlog(),
        Pricing(services),
        Control(services),
        Admin(services),
        Router(services),
        Gateway(services),
        Budget(services),
        Analytics(services),
    ]


class Iron:
    """The router as one mitmproxy addon over its parts (``make_parts``)."""

    name = "iron"

    def __init__(self, services: Services | None = None) -> None:
        self.s = services or Services()
        self.parts = make_parts(self.s)
        self._chains: dict[str, list[FlowHook]] = {
            hook: [getattr(p, hook) for p in self.parts if hasattr(p, hook)] for hook in FLOW_HOOKS
        }

    # -- lifecycle: every part, in order; errors propagate as mitmproxy expects -------------

    def load(self, loader: Loader) -> None:
        for p in self.parts:
            if hasattr(p, "load"):
                p.load(loader)

    def configure(self, updated: set[str]) -> None:
        for p in self.parts:
            if hasattr(p, "configure"):
                p.configure(updated)

    def running(self) -> None:
        for p in self.parts:
            if hasattr(p, "running"):
                p.running()

    def done(self) -> None:
        self._record_unfinished()
        for p in reversed(self.parts):  # analytics first: the outbox, then the lease return
            if hasattr(p, "done"):
                try:
                    p.done()
                except Exception:
                    logger.exception("iron_runtime: %s.done failed", type(p).__name__)

    def _record_unfinished(self) -> None:
        """Requests still in flight at stop (mitmdump or mitmweb stopped with Ctrl-C): each
        is settled and recorded as failed, so that none is lost."""
        for x in self.s.exchanges.live():
            if x.recorded or x.local is not None:
                continue
            try:
                self.s.recorder.record_later(pipeline.unfinished(x, self.s))
            except Exception:
                logger.exception("iron_runtime: recording an unfinished request failed")

    # -- per flow ----------------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return _run(self._chains["http_connect"], flow)

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return _run(self._chains["requestheaders"], flow)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return _run(self._chains["request"], flow)

    def responseheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return _run(self._chains["responseheaders"], flow)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return _run(self._chains["response"], flow)

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return _run(self._chains["error"], flow)


def _run(chain: Sequence[FlowHook], flow: http.HTTPFlow, start: int = 0) -> Awaitable[None] | None:
    """Call ``chain[start:]`` on ``flow`` in order; once a part returns an awaitable, the
    rest runs after it, in the coroutine returned."""
    for i in range(start, len(chain)):
        try:
            result = chain[i](flow)
        except Exception:
            logger.exception("iron_runtime: %s failed", _name(chain[i]))
            continue
        if result is not None and inspect.isawaitable(result):
            return _resume(chain, flow, i, result)
    return None


async def _resume(
    chain: Sequence[FlowHook], flow: http.HTTPFlow, i: int, pending: Awaitable[Any]
) -> None:
    try:
        await pending
    except Exception:
        logger.exception("iron_runtime: %s failed", _name(chain[i]))
    rest = _run(chain, flow, i + 1)
    if rest is not None:
        await rest


def _name(fn: FlowHook) -> str:
    owner = getattr(fn, "__self__", None)
    return f"{type(owner).__name__}.{getattr(fn, '__name__', '?')}"


def make_addons(services: Services | None = None) -> list[Any]:
    """The addons to give mitmproxy: ``Iron`` over ``services``. Installs the HTTP/1 intake
    and egress, the listen backlog and the lean message checks (once per process)."""
    intake.install()
    egress.install()
    listen.install()
    lean.install()
    return [Iron(services)]


addons = make_addons()
