"""The recorder: every request's event committed to the SQLite outbox before the client's
response completes, then synced to the control server by a background worker.

Events are committed on the event loop, all those of one turn of the loop in one
transaction, on a connection that never waits for a lock (SQLite in WAL mode with
``synchronous=NORMAL``: a commit is a write to the log, about 30 µs); a response waits for
its event's commit without a thread hand-over. Once the log passes ``CHECKPOINT_WAL_BYTES``
the writer thread copies it into the database and empties it (syncing the file); the first
commit after that restarts the log, which syncs its header: one file sync on the loop per
4 MB of events. When a commit on the loop fails (the writer thread or another process holds
the lock, the disk is full, a row is refused), its events go to the writer thread, which
commits, retries and repairs them as below, and the loop tries again after
``LOOP_RETRY_AFTER`` seconds, or as soon as the writer's checkpoint that held the lock ends.

A response waits for its event's commit at most ``COMMIT_WAIT`` seconds, and not at all once a
commit has failed: a disk that is full, slow or locked by another process delays answers by
no more than that, never stops them. Such responses are logged and counted in
``stats()["outbox"]["writer"]["answered_before_commit"]``; their events stay queued for a
retry.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .events import Event
from .outbox import RETENTION_S, Outbox, OutboxWriter
from .sync import SyncWorker

logger = logging.getLogger("iron_runtime")

OUTBOX_FILE = "analytics.sqlite3"
COMMIT_WAIT = 2.0  # seconds a response waits for its event's commit at most
CHECKPOINT_CHECK_EVERY = 64  # commits on the loop between looks at the log's size
CHECKPOINT_WAL_BYTES = 4 << 20  # a log this large is checkpointed (on the writer thread)
LOOP_RETRY_AFTER = 0.1  # seconds the loop leaves commits to the writer after a failure


class Recorder:
    def __init__(self) -> None:
        self.outbox: Outbox | None = None
        self.writer: OutboxWriter | None = None
        self.sync: SyncWorker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.answered_before_commit = 0  # responses that went ahead of their event's commit
        self._conn: sqlite3.Connection | None = None  # commits on the loop
        self._batch: list[tuple[Event, asyncio.Future[None]]] = []  # this turn's events
        self._loop_after = 0.0  # time.monotonic() from which commits on the loop resume
        self.loop_commits = 0
        self.loop_failures = 0
        self._stopped = False

    def open(
        self, folder: Path, retention_s: float | None = RETENTION_S, keep_pending: bool = True
    ) -> None:
        """Open the outbox in ``folder`` (once; raises what opening it raised): events older
        than ``retention_s`` are kept as hourly totals, pending ones too unless
        ``keep_pending`` (a control server will take them)."""
        if self.outbox is not None:
            return
        self.outbox = Outbox(folder / OUTBOX_FILE, retention_s, keep_pending)
        self.writer = OutboxWriter(self.outbox, on_commit=self._committed)
        self.writer.on_checkpoint = self._checkpoint_ended
        self._conn = self.outbox.loop_connection()

    def _checkpoint_ended(self) -> None:
        """On the writer thread: the lock the checkpoint held is free, and commits on the
        loop resume at once rather than ``LOOP_RETRY_AFTER`` after the one it refused (a
        float store, atomic across threads)."""
        self._loop_after = 0.0

    def start(self, server_url: str, ic_token: str, interval: float) -> None:
        """On the event loop, once running: the sync worker, when there is a server."""
        self.loop = asyncio.get_running_loop()
        if server_url and self.outbox is not None:
            self.sync = SyncWorker(self.outbox, server_url, ic_token, interval=interval).start()

    def stop(self, flush_deadline: float) -> None:
        if self._stopped:
            return
        if self._batch:
            self._commit_batch()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.writer is not None:
            self.writer.close()
        if self.sync is not None and not self.sync.stop(flush_deadline):
            logger.warning(
                "iron_runtime: analytics not all sent before the deadline; "
                "the next router on this state_dir sends them"
            )
        if self.outbox is not None:
            self.outbox.close()
        self._stopped = True

    # -- recording -------------------------------------------------------------------------

    def record(self, event: Event) -> asyncio.Future[None] | None:
        """Queue ``event`` for the outbox; the future resolves once it is committed, or after
        ``COMMIT_WAIT`` seconds, or at once when the commit failed (on the event loop)."""
        if self.writer is None or self._too_late(event):
            return None
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()
        if self._conn is not None and time.monotonic() >= self._loop_after:
            if not self._batch:
                loop.call_soon(self._commit_batch)  # once this turn's callbacks have run
            self._batch.append((event, committed))
            return committed
        self._via_writer(event, committed)
        return committed

    def _commit_batch(self) -> None:
        """Commit this turn's events on the loop; on failure, hand them to the writer."""
        batch, self._batch = self._batch, []
        if not batch or self.outbox is None or self.writer is None:
            return
        rows, fixes = self.outbox.rows([e for e, _ in batch])
        try:
            if self._conn is None:
                raise sqlite3.OperationalError("the outbox is closed")
            Outbox.insert_with(self._conn, rows)
        except Exception as e:  # noqa: BLE001 - locked, full, a refused row: the writer's job
            self.loop_failures += 1
            self._loop_after = time.monotonic() + LOOP_RETRY_AFTER
            if self.loop_failures in (1, 10) or self.loop_failures % 100 == 0:
                logger.info(
                    "iron_runtime: an outbox commit on the event loop failed (%s; %d so far); "
                    "the writer thread commits for the next %g s",
                    e,
                    self.loop_failures,
                    LOOP_RETRY_AFTER,
                )
            for event, committed in batch:
                self._via_writer(event, committed)
            return
        self.writer.note_committed(len(rows), fixes)
        for _, committed in batch:
            if not committed.done():
                committed.set_result(None)
        self.loop_commits += 1
        if (
            self.loop_commits % CHECKPOINT_CHECK_EVERY == 0
            and self.outbox.wal_size() >= CHECKPOINT_WAL_BYTES
        ):
            self.writer.request_checkpoint()

    def _via_writer(self, event: Event, committed: asyncio.Future[None]) -> None:
        """The writer thread commits ``event``; ``committed`` resolves then, or after
        ``COMMIT_WAIT`` seconds, or at once when its commit failed."""
        assert self.writer is not None
        loop = committed.get_loop()

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

    def record_later(self, event: Event) -> None:
        """Queue ``event`` for the outbox without waiting (a flow that ended in an error)."""
        if self.writer is not None and not self._too_late(event):
            self.writer.submit(event)

    def _too_late(self, event: Event) -> bool:
        """True (and logged) for an event that comes after the outbox closed."""
        if self._stopped:
            logger.warning("iron_runtime: event %s came after the outbox closed", event.event_id)
        return self._stopped

    def _committed(self, callbacks: list[Callable[[bool], None]], committed: bool) -> None:
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

    def stats(self) -> dict[str, Any]:
        if self.outbox is None:
            return {}
        data = self.outbox.stats()
        if self.writer is not None:
            data["outbox"]["writer"] = {
                **self.writer.stats(),
                "answered_before_commit": self.answered_before_commit,
                "loop_commits": self.loop_commits,
                "loop_failures": self.loop_failures,
            }
        return data
