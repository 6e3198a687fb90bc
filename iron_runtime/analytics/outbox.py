"""The analytics outbox: every event is committed to SQLite before it is sent anywhere.

States: ``pending`` (to send), ``sent`` (the server accepted it, or already had it),
``parked`` (the server refused it with a 4xx; kept with the reason, never dropped).
WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed.

Retention: events older than ``retention_s`` (7 days by default) are *folded*: added to
hourly totals (table ``folded``: UTC hour, provider, model; requests, failures, tokens, cost)
and deleted, in one transaction, so every statistic (``stats()``) reads the same figures
before and after. Folded are the ``sent`` events and, when no control server will ever take
them (``keep_pending=False``), the ``pending`` ones; with a server, a pending event is never
folded before it is delivered, and a parked one never. ``prune()`` does it; the
``OutboxWriter`` calls it on its own thread when it starts and every ``prune_every`` seconds,
a chunk at a time between commits. Opening an outbox, or reading it, never prunes.

A new outbox file has incremental auto-vacuum: once a prune leaves more than a quarter of
the file free, the free pages are given back to the file system. An outbox created before
(no auto-vacuum) reuses the pages its prunes free: it stops growing, at its largest size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .events import EVENT, Event, stand_in, storable_json

logger = logging.getLogger("iron_runtime")

DAY_S = 86_400
RETENTION_S = 7 * DAY_S  # the default retention of delivered events
HOUR_MS = 3_600_000  # the granularity of the folded totals
PRUNE_CHUNK = 5_000  # events folded in one transaction
VACUUM_MIN_BYTES = 1 << 20  # free space given back only beyond this much and a quarter
WAL_LIMIT_BYTES = 8 << 20  # the write-ahead log is truncated to this after a checkpoint

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
CREATE TABLE IF NOT EXISTS folded (
    hour_ms INTEGER NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    PRIMARY KEY (hour_ms, provider, model)
) WITHOUT ROWID;
"""

# An event's body, '{}' for one that is not JSON (never written, but a prune must not be
# stopped by it).
_BODY = "(SELECT CASE WHEN json_valid(body) THEN body ELSE '{}' END AS body, timestamp_ms "
# The figures of events, grouped by (provider, model, ...): TOTAL is a float sum, it cannot
# overflow.
_FIGURES = """COALESCE(json_extract(body, '$.provider'), ''),
    COALESCE(json_extract(body, '$.model'), ''), %s, COUNT(*),
    TOTAL(json_extract(body, '$.event_type') = 'llm_request_failed'),
    TOTAL(json_extract(body, '$.input_tokens')), TOTAL(json_extract(body, '$.output_tokens')),
    TOTAL(json_extract(body, '$.cost_micros'))"""

FOLD = f"""
INSERT INTO folded (provider, model, hour_ms, requests, failed, input_tokens, output_tokens,
                    cost_micros)
SELECT {_FIGURES % f"timestamp_ms - timestamp_ms % {HOUR_MS}"}
FROM {_BODY} FROM events WHERE state = ? AND timestamp_ms < ?)
GROUP BY 1, 2, 3
ON CONFLICT (hour_ms, provider, model) DO UPDATE SET
    requests = requests + excluded.requests, failed = failed + excluded.failed,
    input_tokens = input_tokens + excluded.input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    cost_micros = cost_micros + excluded.cost_micros
"""


class Outbox:
    """Thread-safe. Writes go through one connection and reads through another, each behind
    its own lock: in WAL mode a reader never waits for a writer, so ``stats()`` and the sync
    still answer while a commit waits for the disk or for another process's lock.

    ``retention_s``: seconds an event is kept as it is before ``prune()`` folds it into the
    hourly totals (None: kept for ever). ``keep_pending``: True when a control server will
    take the pending events (they are kept until sent); False when none will (they are
    folded like sent ones). Both are attributes, read by each ``prune()``."""

    def __init__(
        self,
        path: str | Path,
        retention_s: float | None = RETENTION_S,
        keep_pending: bool = True,
    ) -> None:
        if retention_s is not None and not (0 <= retention_s < math.inf):
            raise ValueError(f"retention_s must be >= 0 seconds or None, got {retention_s!r}")
        self.path = Path(path)
        self.retention_s = retention_s
        self.keep_pending = keep_pending
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new file only
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
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
        rows: list[tuple[str, int, str]] = []
        fixes: dict[str, int] = {}
        for e in events:
            body, how = storable_json(e)
            if how != "ok":
                fixes[how] = fixes.get(how, 0) + 1
                e = EVENT.validate_json(body)
            rows.append((e.event_id, e.timestamp_ms, body))
        return rows, fixes

    def loop_connection(self) -> sqlite3.Connection:
        """A connection for commits made on the proxy's event loop: it never waits for a
        lock (held by the writer thread, a checkpoint say, or by another process, the commit
        fails at once and its rows go to the writer thread) and never checkpoints (a
        checkpoint syncs the file: ``checkpoint()`` runs it on the writer thread)."""
        conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=0)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        return conn

    @staticmethod
    def insert_with(conn: sqlite3.Connection, rows: list[tuple[str, int, str]]) -> None:
        """``insert`` on ``conn`` (see ``loop_connection``), in one transaction."""
        try:
            conn.executemany(
                "INSERT OR IGNORE INTO events (event_id, timestamp_ms, body) VALUES (?, ?, ?)",
                rows,
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file and empty it (the commits of
        ``loop_connection`` leave this to the writer thread). Commits wait meanwhile."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def wal_size(self) -> int:
        """Bytes in the write-ahead log file (0 if there is none)."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

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
            events: list[Event] = []
            unreadable: list[tuple[str, str, str | None]] = []
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
            return self._counts()

    def _counts(self) -> dict[str, int]:
        rows = self._rdb.execute("SELECT state, COUNT(*) FROM events GROUP BY state").fetchall()
        return {"pending": 0, "sent": 0, "parked": 0, **dict(rows)}

    def parked(self) -> list[dict[str, Any]]:
        with self._rlock:
            rows = self._rdb.execute(
                "SELECT event_id, last_error FROM events WHERE state = 'parked'"
            ).fetchall()
        return [{"event_id": i, "reason": r} for i, r in rows]

    # -- retention -----------------------------------------------------------------------

    def prune(self, now_ms: int | None = None, limit: int | None = None) -> int:
        """Fold the events older than the retention (at ``now_ms``, default now) into the
        hourly totals and delete them: the sent ones, and the pending ones too unless
        ``keep_pending``. Each chunk of ``PRUNE_CHUNK`` events is folded and deleted in one
        transaction; with ``limit``, stops after about that many. Returns how many events
        were folded. Then gives free pages back (see the module's documentation) once
        everything due is folded."""
        if self.retention_s is None:
            return 0
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        cutoff = now - int(self.retention_s * 1000)
        folded = 0
        for state in ("sent",) if self.keep_pending else ("sent", "pending"):
            while limit is None or folded < limit:
                chunk = PRUNE_CHUNK if limit is None else min(PRUNE_CHUNK, limit - folded)
                n = self._fold(state, cutoff, chunk)
                folded += n
                if n < chunk:
                    break
            else:
                return folded  # the limit: more may be due
        if folded:
            self._reclaim()
        return folded

    def _fold(self, state: str, cutoff: int, chunk: int) -> int:
        """Fold and delete the oldest ``chunk`` events of ``state`` older than ``cutoff``
        (or a few more: those of the same millisecond as the last), in one transaction."""
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT timestamp_ms FROM events WHERE state = ? AND timestamp_ms < ? "
                    "ORDER BY timestamp_ms LIMIT 1 OFFSET ?",
                    (state, cutoff, chunk - 1),
                ).fetchone()
                upto = cutoff if row is None else min(cutoff, row[0] + 1)
                self._db.execute(FOLD, (state, upto))
                deleted = self._db.execute(
                    "DELETE FROM events WHERE state = ? AND timestamp_ms < ?", (state, upto)
                ).rowcount
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
        return deleted

    def _reclaim(self) -> None:
        """With incremental auto-vacuum, give the free pages back to the file system once
        they are more than a quarter of the file (and more than ``VACUUM_MIN_BYTES``)."""
        with self._lock:
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                return  # an older file: its free pages are reused
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
            if free * 4 > pages and free * size > VACUUM_MIN_BYTES:
                self._db.execute("PRAGMA incremental_vacuum").fetchall()
                self._db.commit()

    def file_size(self) -> int:
        """Bytes on disk: the database file and its write-ahead log."""
        return sum(
            f.stat().st_size
            for f in (self.path, self.path.with_name(self.path.name + "-wal"))
            if f.exists()
        )

    # -- statistics ----------------------------------------------------------------------

    def stats(self, recent: int = 10, since: int | None = None) -> dict[str, Any]:
        """Totals, by model, by provider and by day (local time, ``YYYY-MM-DD``), and the
        most recent events; with ``since`` (a ``timestamp_ms``), of the events from then on
        only. ``outbox`` (the sync state) always counts every event, ``folded`` those kept
        as hourly totals only.

        The folded events (older than the retention) count by the hour: in ``by_day``, on
        the local day their hour starts on (exact for a time zone offset by whole hours);
        with ``since``, a folded hour counts whole when ``since`` falls inside it. The
        figures are read in one transaction: a prune meanwhile changes none of them."""
        where, params = (
            ("WHERE timestamp_ms >= ?", (int(since),)) if since is not None else ("", ())
        )
        day = "date(timestamp_ms / 1000, 'unixepoch', 'localtime')"
        raw = f"SELECT {_FIGURES % day} FROM events {where} GROUP BY 1, 2, 3"
        folded = (
            "SELECT provider, model, date(hour_ms / 1000, 'unixepoch', 'localtime'), "
            "TOTAL(requests), TOTAL(failed), TOTAL(input_tokens), TOTAL(output_tokens), "
            "TOTAL(cost_micros) FROM folded "
            + ("WHERE hour_ms > ? " if since is not None else "")
            + "GROUP BY 1, 2, 3"
        )
        with self._rlock:
            self._rdb.execute("BEGIN")  # one snapshot for every figure
            try:
                rows = self._rdb.execute(raw, params).fetchall()
                rows += self._rdb.execute(
                    folded, (int(since) - HOUR_MS,) if since is not None else ()
                ).fetchall()
                last = self._rdb.execute(
                    f"SELECT body, state FROM events {where} ORDER BY timestamp_ms DESC LIMIT ?",
                    (*params, recent),
                ).fetchall()
                outbox: dict[str, int] = self._counts()
                outbox["folded"] = int(
                    self._rdb.execute("SELECT TOTAL(requests) FROM folded").fetchone()[0]
                )
            finally:
                self._rdb.commit()
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
        for provider, model, day, n, failed, tin, tout, cost in rows:
            for bucket in (
                totals,
                by_model.setdefault(model or "?", {}),
                by_provider.setdefault(provider or "unknown", {}),
                by_day.setdefault(day or "?", {}),
            ):
                bucket["requests"] = bucket.get("requests", 0) + int(n)
                bucket["failed"] = bucket.get("failed", 0) + int(failed)
                bucket["input_tokens"] = bucket.get("input_tokens", 0) + int(tin)
                bucket["output_tokens"] = bucket.get("output_tokens", 0) + int(tout)
                bucket["cost_micros"] = bucket.get("cost_micros", 0) + int(cost)
        return {
            "totals": totals,
            "by_model": by_model,
            "by_provider": by_provider,
            "by_day": by_day,
            "outbox": outbox,
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

    Retention: the writer calls ``outbox.prune()`` when it starts and every ``prune_every``
    seconds (10 minutes), on its own thread and a chunk (``PRUNE_CHUNK`` events, one
    transaction) at a time, committing the events queued meanwhile between chunks; a prune
    that fails is logged and tried again ``prune_every`` seconds later.
    """

    RETRY_FIRST = 0.5
    RETRY_MAX = 5.0
    MAX_QUEUED = 100_000  # events kept in memory while the disk fails; the oldest go beyond
    PRUNE_EVERY = 600.0  # seconds between prunes

    def __init__(self, outbox: Outbox, on_commit=None, prune_every: float = PRUNE_EVERY) -> None:
        self.outbox = outbox
        self.on_commit = on_commit
        self.prune_every = prune_every
        self.pruned = 0  # events folded into the hourly totals by this writer
        self.prune_failures = 0
        self._next_prune = 0.0  # time.monotonic() of the next prune: at once
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
        self._checkpoint = False  # a checkpoint was asked for (commits made on the loop)
        self.checkpoints = 0
        self.on_checkpoint: Callable[[], None] | None = None  # after each checkpoint, here
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
            "pruned": self.pruned,
            "prune_failures": self.prune_failures,
            "checkpoints": self.checkpoints,
        }

    def _run(self) -> None:
        busy = False
        backoff = 0.0
        while True:
            with self._cond:
                while not self._queue and not self._closed and not self._checkpoint:
                    due = self._next_prune - time.monotonic()
                    if due <= 0:
                        break  # idle, and a prune is due
                    self._cond.wait(due)
                if backoff and not self._closed:
                    self._cond.wait_for(lambda: self._closed, backoff)
            if busy and not self._closed:
                # Under load, gather for a millisecond: one commit then carries many events
                # (a commit costs far more than a row). Idle, commit at once.
                time.sleep(0.001)
            with self._cond:
                batch, self._queue = self._queue, []
                closed = self._closed
                checkpoint, self._checkpoint = self._checkpoint, False
            if checkpoint:
                self._run_checkpoint()
            if not batch:
                if closed:
                    return
                self._prune()
                continue
            busy = len(batch) > 1
            failed = self._commit(batch)
            with self._cond:
                self._failing = bool(failed)
            if not failed:
                backoff = 0.0
                self._release([done for _, done in batch if done is not None], True)
                if not closed:
                    self._prune()
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

    def note_committed(self, n: int, fixes: dict[str, int]) -> None:
        """Count ``n`` events committed elsewhere (on the event loop), with their repairs."""
        self._count(fixes)
        self.committed += n

    def request_checkpoint(self) -> None:
        """Ask for a checkpoint on the writer thread (after commits made on the loop)."""
        with self._cond:
            self._checkpoint = True
            self._cond.notify()

    def _run_checkpoint(self) -> None:
        done = False
        try:
            self.outbox.checkpoint()
            done = True
        except Exception as e:  # noqa: BLE001 - a busy or failing file: the next one will do
            self.last_error = f"checkpoint: {type(e).__name__}: {e}"
        if self.on_checkpoint is not None:
            self.on_checkpoint()
        self.checkpoints += done  # counted once the lock it held is released and said so

    def _prune(self) -> None:
        """One chunk of ``outbox.prune()`` when one is due; the next right away while the
        chunks come full (a backlog of events to fold), else ``prune_every`` seconds on."""
        now = time.monotonic()
        if now < self._next_prune or self._failing:
            return
        try:
            n = self.outbox.prune(limit=PRUNE_CHUNK)
        except Exception as e:  # noqa: BLE001 - a locked or failing file: try again later
            self.prune_failures += 1
            self._next_prune = now + self.prune_every
            if self.prune_failures in (1, 5) or self.prune_failures % 50 == 0:
                logger.warning(
                    "iron_runtime: analytics outbox prune failed (%s: %s); retrying in %g s",
                    type(e).__name__,
                    e,
                    self.prune_every,
                )
            return
        self.pruned += n
        self._next_prune = now if n >= PRUNE_CHUNK else now + self.prune_every

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
