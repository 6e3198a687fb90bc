"""Analytics addon: exactly one event per request, locally refused ones included, committed to
the SQLite outbox in ``state_dir`` before the client's response completes, then synced to the
control server by a background worker.

A response waits for its event's commit at most ``COMMIT_WAIT`` seconds, and not at all once a
commit has failed: a disk that is full, slow or locked by another process delays answers by
no more than that, never stops them. Such responses are logged and counted in
``stats()["outbox"]["writer"]["answered_before_commit"]``; their events stay queued for a
retry."""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from iron_runtime.analytics import LlmRequestFailed, Outbox, SyncWorker
from iron_runtime.analytics.events import error_message_of, event_for
from iron_runtime.analytics.outbox import OutboxWriter
from iron_runtime.launcher import default_state_dir

logger = logging.getLogger("iron_runtime")

OUTBOX_FILE = "analytics.sqlite3"
COMMIT_WAIT = 2.0  # seconds a response waits for its event's commit at most
MAX_SECONDS = 365 * 86_400  # the longest sync interval or flush deadline accepted


class Analytics:
    def __init__(self) -> None:
        self.outbox: Outbox | None = None
        self.writer: OutboxWriter | None = None
        self.sync: SyncWorker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.answered_before_commit = 0  # responses that went ahead of their event's commit
        self.sync_interval = 5.0  # seconds, from iron_sync_interval
        self.flush_deadline = 3.0  # seconds, from iron_flush_deadline

    def load(self, loader) -> None:
        loader.add_option(
            "iron_state_dir",
            str,
            "",
            "Folder of the analytics outbox (default: $IRON_STATE_DIR or "
            "~/.local/state/iron-runtime).",
        )
        # Seconds are str options: mitmdump's --set and mitmweb's options page parse only
        # str, int, bool and sequences. They are read and checked here.
        loader.add_option("iron_sync_interval", str, "5", "Seconds between analytics syncs.")
        loader.add_option(
            "iron_flush_deadline",
            str,
            "3",
            "Seconds allowed to send pending analytics when stopping.",
        )

    def configure(self, updated: set[str]) -> None:
        if "iron_sync_interval" in updated:
            self.sync_interval = _seconds("iron_sync_interval", positive=True)
            if self.sync is not None:
                self.sync.interval = self.sync_interval
        if "iron_flush_deadline" in updated:
            self.flush_deadline = _seconds("iron_flush_deadline", positive=False)
        if "iron_state_dir" in updated and self.outbox is None:
            folder = Path(ctx.options.iron_state_dir or default_state_dir())
            try:
                self.outbox = Outbox(folder / OUTBOX_FILE)
            except Exception as e:
                raise exceptions.OptionsError(
                    f"iron_state_dir: cannot open the analytics outbox in {folder}: {e}"
                ) from None
            self.writer = OutboxWriter(self.outbox, on_commit=self._committed)

    def _committed(self, callbacks: list, committed: bool) -> None:
        """From the writer thread: resolve a batch's callbacks on the event loop, at once."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return

        def resolve() -> None:
            for done in callbacks:
                done(committed)

        try:
            loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # the loop closed meanwhile: nobody waits any more
            pass

    def running(self) -> None:
        self.loop = asyncio.get_running_loop()
        if ctx.options.iron_server_url and self.outbox is not None:
            self.sync = SyncWorker(
                self.outbox,
                ctx.options.iron_server_url,
                ctx.options.iron_token,
                interval=self.sync_interval,
            ).start()

    def done(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.sync is not None:
            if not self.sync.stop(self.flush_deadline):
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
        loop = asyncio.get_running_loop()
        committed = loop.create_future()

        def settle(ok: bool, why: str = "the outbox failed to commit it") -> None:
            # On the event loop: the commit, a failed commit, or the timer, whichever is first.
            if committed.done():
                return
            committed.set_result(None)
            timer.cancel()
            if not ok:
                self._went_ahead(event.event_id, why)

        timer = loop.call_later(COMMIT_WAIT, settle, False, f"not committed in {COMMIT_WAIT:g} s")
        self.writer.submit(event, settle)
        return committed  # the response completes once its event is on disk (or given up)

    def _went_ahead(self, event_id: str, why: str) -> None:
        self.answered_before_commit += 1
        n = self.answered_before_commit
        if n in (1, 10) or n % 100 == 0:
            logger.warning(
                "iron_runtime: a response went ahead of its analytics event %s (%s; %d so far); "
                "the event is kept for a retry",
                event_id,
                why,
                n,
            )

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
        if self.outbox is None:
            return {}
        data = self.outbox.stats()
        if self.writer is not None:
            data["outbox"]["writer"] = {
                **self.writer.stats(),
                "answered_before_commit": self.answered_before_commit,
            }
        return data


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


def build_event(flow: http.HTTPFlow, m: dict):
    """The flow's facts, handed to the core's ``event_for``."""
    resp = flow.response
    upstream_message = ""
    if resp is not None and not resp.stream and not m.get("local_answer"):
        upstream_message = error_message_of(resp.get_content(strict=False) or b"")
    return event_for(
        m,
        status=resp.status_code if resp is not None else None,
        # a local answer given before the body was read ends its flow with an error too
        connection_error=(
            flow.error.msg if flow.error is not None and not m.get("local_answer") else None
        ),
        upstream_message=upstream_message,
    )
