"""Analytics addon: exactly one event per request, locally refused ones included, committed to
the SQLite outbox in ``state_dir`` before the client's response completes (the pipeline's
finish stage, recorded by ``iron_runtime.analytics.recorder.Recorder``), then synced to the
control server by a background worker. It also publishes the exchange's final summary as
``flow.metadata["iron"]``."""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from iron_runtime import pipeline, settings
from iron_runtime.analytics.events import Event
from iron_runtime.exchange import Exchange
from iron_runtime.launcher import default_state_dir
from iron_runtime.pipeline import Services
from iron_runtime.settings import Loader

from ._glue import publish

logger = logging.getLogger("iron_runtime")

MAX_SECONDS = 365 * 86_400  # the longest sync interval or flush deadline accepted


class Analytics:
    def __init__(self, services: Services | None = None) -> None:
        self.s = services or Services()
        self.sync_interval = 5.0  # seconds, from iron_sync_interval
        self.flush_deadline = 3.0  # seconds, from iron_flush_deadline

    def load(self, loader: Loader) -> None:
        settings.declare(loader, "analytics")

    def configure(self, updated: set[str]) -> None:
        recorder = self.s.recorder
        if "iron_sync_interval" in updated:
            self.sync_interval = _seconds("iron_sync_interval", positive=True)
            if recorder.sync is not None:
                recorder.sync.interval = self.sync_interval
        if "iron_flush_deadline" in updated:
            self.flush_deadline = _seconds("iron_flush_deadline", positive=False)
        if "iron_retention_days" in updated and ctx.options.iron_retention_days < 0:
            raise exceptions.OptionsError("iron_retention_days must be >= 0 (0 keeps every event)")
        days: int = ctx.options.iron_retention_days
        retention_s = days * 86_400.0 if days else None
        # without a server, pending events are never sent: they age out like sent ones
        keep_pending = bool(ctx.options.iron_server_url)
        if "iron_state_dir" in updated and recorder.outbox is None:
            folder = Path(ctx.options.iron_state_dir or default_state_dir())
            try:
                recorder.open(folder, retention_s=retention_s, keep_pending=keep_pending)
            except Exception as e:
                raise exceptions.OptionsError(
                    f"iron_state_dir: cannot open the analytics outbox in {folder}: {e}"
                ) from None
        elif recorder.outbox is not None and updated & {"iron_retention_days", "iron_server_url"}:
            recorder.outbox.retention_s = retention_s
            recorder.outbox.keep_pending = keep_pending

    def running(self) -> None:
        opts = ctx.options
        self.s.recorder.start(opts.iron_server_url, opts.iron_token, self.sync_interval)

    def done(self) -> None:
        self.s.recorder.stop(self.flush_deadline)

    def response(self, flow: http.HTTPFlow) -> asyncio.Future[None] | None:
        x = self.s.exchanges.get(flow)
        if x is None:
            return None
        event = self._event(flow, x)
        publish(flow, x)
        if event is None:
            return None
        return self.s.recorder.record(event)  # the response completes once it is on disk

    def error(self, flow: http.HTTPFlow) -> None:
        x = self.s.exchanges.get(flow)
        if x is None:
            return
        event = self._event(flow, x)
        publish(flow, x)
        if event is not None:
            self.s.recorder.record_later(event)

    @staticmethod
    def _event(flow: http.HTTPFlow, x: Exchange) -> Event | None:
        resp = flow.response
        if resp is None or resp.stream:
            return pipeline.record(x)
        return pipeline.record(x, lambda: resp.get_content(strict=False) or b"")


def _seconds(name: str, positive: bool) -> float:
    """A duration option: a number of seconds, > 0 (``positive``) or >= 0, up to a year."""
    raw = getattr(ctx.options, name).strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 <= value <= MAX_SECONDS) or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise exceptions.OptionsError(
            f"{name} must be a number of seconds {bound} and <= {MAX_SECONDS}, got {raw!r}"
        )
    return value
