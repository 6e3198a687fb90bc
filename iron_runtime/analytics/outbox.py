"""The analytics outbox: every event is committed to SQLite before it is sent anywhere.

States: ``pending`` (to send), ``sent`` (the server accepted it, or already had it),
``parked`` (the server refused it with a 4xx; kept with the reason, never dropped).
WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .events import EVENT, Event, stand_in, storable_json

logger = logging.getLogger("iron_runtime")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    timestamp_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS events_state ON events (state, timestamp_ms);
"""


class Outbox:
    """Thread-safe. Writes go through one connection and reads through another, each behind
    its own lock: in WAL mode a reader never waits for a writer, so ``stats()`` and the sync
    still answer while a commit waits for the disk or for another process's lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._db.commit()
        self._rdb = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._rlock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._rlock:
            self._rdb.close()

    @staticmethod
    def rows(events: list[Event]) -> tuple[list[tuple[str, int, str]], dict[str, int]]:
        """The rows to insert for these events, and how many had to be ``repaired`` or
        ``replaced`` to be storable (see ``storable_json``). Never raises."""
        try:
            return [(e.event_id, e.timestamp_ms, e.model_dump_json()) for e in events], {}
        except Exception:  # noqa: BLE001 - one event cannot be serialised: the slow path
            pass
        rows, fixes = [], {}
        for e in events:
            body, how = storable_json(e)
            if how != "ok":
                fixes[how] = fixes.get(how, 0) + 1
                e = EVENT.validate_json(body)
            rows.append((e.event_id, e.timestamp_ms, body))
        return rows, fixes

    def insert(self, rows: list[tuple[str, int, str]]) -> None:
        """Commit rows made by ``rows()``, in one transaction (all or none)."""
        with self._lock:
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO events (event_id, timestamp_ms, body) VALUES (?, ?, ?)",
                    rows,
                )
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise

    def add(self, events: list[Event]) -> dict[str, int]:
        """Commit events in one transaction; returns the repairs made (see ``rows()``)."""
        rows, fixes = self.rows(events)
        self.insert(rows)
        return fixes

    def pending(self, limit: int = 100, after: tuple[int, str] | None = None) -> list[Event]:
        """Up to ``limit`` pending events, oldest first; with ``after`` (the
        ``(timestamp_ms, event_id)`` of the last event of the previous page), the next page.
        A row that cannot be read back is parked with the reason instead of stopping the
        sync."""
        ts, eid = after if after is not None else (-(2**63), "")
        while True:
            with self._rlock:
                rows = self._rdb.execute(
                    "SELECT event_id, timestamp_ms, body FROM events WHERE state = 'pending' "
                    "AND timestamp_ms >= ? AND (timestamp_ms > ? OR event_id > ?) "
                    "ORDER BY timestamp_ms, event_id LIMIT ?",
                    (ts, ts, eid, limit),
                ).fetchall()
            events, unreadable = [], []
            for event_id, _ts, body in rows:
                try:
                    events.append(EVENT.validate_json(body))
                except ValueError as e:
                    unreadable.append((event_id, "parked", f"unreadable: {str(e)[:200]}"))
            if unreadable:
                self.mark_many(unreadable)
            if events or len(rows) < limit:
                return events
            ts, eid = rows[-1][1], rows[-1][0]

    def mark(self, event_id: str, state: str, error: str | None = None) -> None:
        self.mark_many([(event_id, state, error)])

    def mark_many(self, updates: list[tuple[str, str, str | None]]) -> None:
        """Set ``(event_id, state, error)`` for many events in one transaction."""
        if not updates:
            return
        with self._lock:
            try:
                self._db.executemany(
                    "UPDATE events SET state = ?, attempts = attempts + 1, last_error = ? "
                    "WHERE event_id = ?",
                    [(state, error, event_id) for event_id, state, error in updates],
                )
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise

    def counts(self) -> dict[str, int]:
        with self._rlock:
            rows = self._rdb.execute("SELECT state, COUNT(*) FROM events GROUP BY state").fetchall()
        return {"pending": 0, "sent": 0, "parked": 0, **dict(rows)}

    def parked(self) -> list[dict[str, Any]]:
        with self._rlock:
            rows = self._rdb.execute(
                "SELECT event_id, last_error FROM events WHERE state = 'parked'"
            ).fetchall()
        return [{"event_id": i, "reason": r} for i, r in rows]

    def stats(self, recent: int = 10, since: int | None = None) -> dict[str, Any]:
        """Totals, by model, by provider and by day (local time, ``YYYY-MM-DD``), and the
        most recent events; with ``since`` (a ``timestamp_ms``), of the events from then on
        only. ``outbox`` (the sync state) always counts every event."""
        where, params = (
            ("WHERE timestamp_ms >= ?", (int(since),)) if since is not None else ("", ())
        )
        query = f"""
            SELECT json_extract(body, '$.provider'), json_extract(body, '$.model'),
                   json_extract(body, '$.event_type'),
                   date(timestamp_ms / 1000, 'unixepoch', 'localtime'), COUNT(*),
                   TOTAL(json_extract(body, '$.input_tokens')),
                   TOTAL(json_extract(body, '$.output_tokens')),
                   TOTAL(json_extract(body, '$.cost_micros'))
            FROM events {where} GROUP BY 1, 2, 3, 4"""  # TOTAL: a float sum, cannot overflow
        with self._rlock:
            rows = self._rdb.execute(query, params).fetchall()
            last = self._rdb.execute(
                f"SELECT body, state FROM events {where} ORDER BY timestamp_ms DESC LIMIT ?",
                (*params, recent),
            ).fetchall()
        totals = {
            "requests": 0,
            "failed": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost_micros": 0,
        }
        by_model: dict[str, dict[str, int]] = {}
        by_provider: dict[str, dict[str, int]] = {}
        by_day: dict[str, dict[str, int]] = {}
        for provider, model, kind, day, n, tin, tout, cost in rows:
            for bucket in (
                totals,
                by_model.setdefault(model or "?", {}),
                by_provider.setdefault(provider or "unknown", {}),
                by_day.setdefault(day or "?", {}),
            ):
                bucket["requests"] = bucket.get("requests", 0) + n
                bucket["failed"] = bucket.get("failed", 0) + (
                    n if kind == "llm_request_failed" else 0
                )
                bucket["input_tokens"] = bucket.get("input_tokens", 0) + int(tin)
                bucket["output_tokens"] = bucket.get("output_tokens", 0) + int(tout)
                bucket["cost_micros"] = bucket.get("cost_micros", 0) + int(cost)
        return {
            "totals": totals,
            "by_model": by_model,
            "by_provider": by_provider,
            "by_day": by_day,
            "outbox": self.counts(),
            "recent": [{**json.loads(b), "sync_state": s} for b, s in last],
        }


class OutboxWriter:
    """Commits events on its own thread, in batches, so that the proxy's event loop never
    waits for the disk.

    ``submit(event, done)`` calls ``done(True)`` once the event is committed, or
    ``done(False)`` as soon as a commit fails (a full disk, a database locked by another
    process), and at once for events submitted while commits fail: the events stay queued
    and are retried with a backoff (0.5 s doubling to 5 s), but whoever waits for them is
    not kept waiting on the disk. With ``on_commit(callbacks,
    committed)`` given, a batch's callbacks are handed to it instead (to run them all with
    one wake-up of an event loop).

    No event stops the writer: one that cannot be serialised is stored repaired (text no
    UTF-8 store accepts becomes U+FFFD) or, as a last resort, as a minimal failed event; a
    batch the database refuses for one of its rows is committed row by row, and a row that
    still fails is stored as a minimal failed event. ``stats()`` counts all of this.
    """

    RETRY_FIRST = 0.5
    RETRY_MAX = 5.0
    MAX_QUEUED = 100_000  # events kept in memory while the disk fails; the oldest go beyond

    def __init__(self, outbox: Outbox, on_commit=None) -> None:
        self.outbox = outbox
        self.on_commit = on_commit
        self.committed = 0
        self.repaired = 0  # stored with unstorable text replaced
        self.replaced = 0  # stored as a minimal failed event
        self.write_failures = 0  # commits the database refused (each retried)
        self.dropped = 0  # lost: the disk failed for longer than MAX_QUEUED events, or at close
        self.last_error: str | None = None
        self._queue: list[tuple[Event, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._failing = False  # the last commit failed: nobody waits for the next one
        self._thread = threading.Thread(target=self._run, name="iron-outbox", daemon=True)
        self._thread.start()

    def submit(self, event: Event, done=None) -> None:
        """Queue an event; ``done(committed)`` is called on the writer thread, or at once
        with False while commits are failing (the event is queued all the same)."""
        with self._cond:
            failing = self._failing
            self._queue.append((event, None if failing else done))
            self._cond.notify()
        if failing and done is not None:
            self._release([done], False)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            queued = len(self._queue)
        return {
            "queued": queued,
            "committed": self.committed,
            "repaired": self.repaired,
            "replaced": self.replaced,
            "write_failures": self.write_failures,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        busy = False
        backoff = 0.0
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if backoff and not self._closed:
                    self._cond.wait_for(lambda: self._closed, backoff)
            if busy and not self._closed:
                # Under load, gather for a millisecond: one commit then carries many events
                # (a commit costs far more than a row). Idle, commit at once.
                time.sleep(0.001)
            with self._cond:
                batch, self._queue = self._queue, []
                closed = self._closed
            if not batch:
                if closed:
                    return
                continue
            busy = len(batch) > 1
            failed = self._commit(batch)
            with self._cond:
                self._failing = bool(failed)
            if not failed:
                backoff = 0.0
                self._release([done for _, done in batch if done is not None], True)
                continue
            kept = {id(entry) for entry in failed}
            self._release([d for entry in batch if (d := entry[1]) and id(entry) not in kept], True)
            self._release([done for _, done in failed if done is not None], False)
            if closed:
                self.dropped += len(failed)
                logger.error(
                    "iron_runtime: %d analytics events could not be stored before stopping (%s)",
                    len(failed),
                    self.last_error,
                )
                return
            backoff = min(max(backoff * 2, self.RETRY_FIRST), self.RETRY_MAX)
            with self._cond:  # retried first, without their callbacks (already released)
                self._queue[:0] = [(event, None) for event, _ in failed]
                excess = len(self._queue) - self.MAX_QUEUED
                if excess > 0:
                    del self._queue[:excess]
                    self.dropped += excess
            if excess > 0:
                logger.error(
                    "iron_runtime: analytics outbox failing (%s); %d oldest events dropped "
                    "(%d in all) to keep %d in memory",
                    self.last_error,
                    excess,
                    self.dropped,
                    self.MAX_QUEUED,
                )

    def _commit(self, batch: list[tuple[Event, Any]]) -> list[tuple[Event, Any]]:
        """Commit a batch; returns the entries that could not be committed (the database
        failed: to retry)."""
        rows, fixes = self.outbox.rows([e for e, _ in batch])
        self._count(fixes)
        try:
            self.outbox.insert(rows)
        except sqlite3.OperationalError as e:  # disk full, I/O error, locked: the whole file
            return self._failed(batch, e)
        except Exception:  # noqa: BLE001 - a row the database refuses: isolate it
            if len(rows) == 1:
                return self._store_stand_in(batch[0], rows[0])
            failed = []
            for entry, row in zip(batch, rows, strict=True):
                try:
                    self.outbox.insert([row])
                except sqlite3.OperationalError as e:
                    failed += self._failed([entry], e)
                except Exception:  # noqa: BLE001
                    failed += self._store_stand_in(entry, row)
                else:
                    self.committed += 1
            return failed
        self.committed += len(rows)
        return []

    def _store_stand_in(self, entry: tuple[Event, Any], row: tuple) -> list[tuple[Event, Any]]:
        event = stand_in(entry[0], "the event could not be stored")
        try:
            self.outbox.insert([(event.event_id, event.timestamp_ms, event.model_dump_json())])
        except Exception as e:  # noqa: BLE001 - the database itself is failing: retry
            return self._failed([entry], e)
        self.replaced += 1
        self.committed += 1
        logger.warning("iron_runtime: analytics event %s stored as a minimal failed event", row[0])
        return []

    def _count(self, fixes: dict[str, int]) -> None:
        if fixes:
            self.repaired += fixes.get("repaired", 0)
            self.replaced += fixes.get("replaced", 0)
            logger.warning("iron_runtime: analytics events stored with repairs: %s", fixes)

    def _failed(self, entries: list, error: Exception) -> list:
        self.write_failures += 1
        self.last_error = f"{type(error).__name__}: {error}"
        if self.write_failures in (1, 5) or self.write_failures % 50 == 0:
            logger.warning(
                "iron_runtime: analytics outbox write failed (%s); %d events kept for a retry",
                self.last_error,
                len(entries),
            )
        return entries

    def _release(self, callbacks: list, committed: bool) -> None:
        if not callbacks:
            return
        if self.on_commit is not None:
            self.on_commit(callbacks, committed)  # one hand-over for the whole batch
            return
        for done in callbacks:
            done(committed)

    def close(self, timeout: float = 5.0) -> None:
        """Commit what is queued (one attempt), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
