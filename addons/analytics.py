"""Analytics addon: exactly one event per request, locally refused ones included, committed to
the SQLite outbox in ``state_dir`` before the client's response completes, then synced to the
control server by a background worker (SPEC §8)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from iron_runtime.analytics import LlmRequestFailed, Outbox, SyncWorker
from iron_runtime.analytics.events import error_message_of, event_for
from iron_runtime.analytics.outbox import OutboxWriter
from iron_runtime.launcher import default_state_dir

logger = logging.getLogger("iron_runtime")

OUTBOX_FILE = "analytics.sqlite3"


class Analytics:
    def __init__(self) -> None:
        self.outbox: Outbox | None = None
        self.writer: OutboxWriter | None = None
        self.sync: SyncWorker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def load(self, loader) -> None:
        loader.add_option(
            "iron_state_dir",
            str,
            "",
            "Folder of the analytics outbox (default: $IRON_STATE_DIR or "
            "~/.local/state/iron-runtime).",
        )
        loader.add_option("iron_sync_interval", float, 5.0, "Seconds between analytics syncs.")
        loader.add_option(
            "iron_flush_deadline",
            float,
            3.0,
            "Seconds allowed to send pending analytics when stopping.",
        )

    def configure(self, updated: set[str]) -> None:
        if "iron_sync_interval" in updated and ctx.options.iron_sync_interval <= 0:
            raise exceptions.OptionsError("iron_sync_interval must be positive")
        if "iron_state_dir" in updated and self.outbox is None:
            folder = Path(ctx.options.iron_state_dir or default_state_dir())
            try:
                self.outbox = Outbox(folder / OUTBOX_FILE)
            except Exception as e:
                raise exceptions.OptionsError(
                    f"iron_state_dir: cannot open the analytics outbox in {folder}: {e}"
                ) from None
            self.writer = OutboxWriter(self.outbox, on_commit=self._committed)

    def _committed(self, callbacks: list) -> None:
        """From the writer thread: resolve a committed batch on the event loop, at once."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return

        def resolve() -> None:
            for done in callbacks:
                done()

        loop.call_soon_threadsafe(resolve)

    def running(self) -> None:
        self.loop = asyncio.get_running_loop()
        if ctx.options.iron_server_url and self.outbox is not None:
            self.sync = SyncWorker(
                self.outbox,
                ctx.options.iron_server_url,
                ctx.options.iron_token,
                interval=ctx.options.iron_sync_interval,
            ).start()

    def done(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.sync is not None:
            if not self.sync.stop(ctx.options.iron_flush_deadline):
                logger.warning(
                    "iron_runtime: analytics not all sent before the deadline; "
                    "the next router on this state_dir sends them"
                )
        if self.outbox is not None:
            self.outbox.close()

    # -- recording -----------------------------------------------------------------------

    def response(self, flow: http.HTTPFlow):
        event = self._event(flow)
        if event is None or self.writer is None:
            return None
        committed = asyncio.get_running_loop().create_future()
        self.writer.submit(event, lambda: committed.done() or committed.set_result(None))
        return committed  # the response completes once its event is on disk

    def error(self, flow: http.HTTPFlow) -> None:
        event = self._event(flow)
        if event is not None and self.writer is not None:
            self.writer.submit(event)

    def _event(self, flow: http.HTTPFlow):
        m = flow.metadata.get("iron")
        if m is None or m.get("local") in ("health", "admin") or m.get("recorded"):
            return None
        m["recorded"] = True
        try:
            return build_event(flow, m)
        except Exception:
            logger.exception("iron_runtime: could not build the analytics event")
            return LlmRequestFailed(
                model=str(m.get("model") or ""),
                error_code="internal_error",
                error_message="event could not be built",
            )

    def stats(self) -> dict:
        return self.outbox.stats() if self.outbox is not None else {}


def build_event(flow: http.HTTPFlow, m: dict):
    """The flow's facts, handed to the core's ``event_for``."""
    resp = flow.response
    upstream_message = ""
    if resp is not None and not resp.stream and not m.get("local_answer"):
        upstream_message = error_message_of(resp.get_content(strict=False) or b"")
    return event_for(
        m,
        status=resp.status_code if resp is not None else None,
        connection_error=flow.error.msg if flow.error is not None else None,
        upstream_message=upstream_message,
    )
