"""The analytics outbox: every event is committed to SQLite before it is sent anywhere.

States: ``pending`` (to send), ``sent`` (the server accepted it, or already had it),
``parked`` (the server refused it with a 4xx; kept with the reason, never dropped).
WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .events import EVENT, Event

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
    """Thread-safe: one connection, one lock (SQLite calls are short)."""

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

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, events: list[Event]) -> None:
        rows = [(e.event_id, e.timestamp_ms, e.model_dump_json()) for e in events]
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO events (event_id, timestamp_ms, body) VALUES (?, ?, ?)", rows
            )
            self._db.commit()

    def pending(self, limit: int = 100) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM events WHERE state = 'pending' ORDER BY timestamp_ms LIMIT ?",
                (limit,),
            ).fetchall()
        return [EVENT.validate_json(body) for (body,) in rows]

    def mark(self, event_id: str, state: str, error: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE events SET state = ?, attempts = attempts + 1, last_error = ? "
                "WHERE event_id = ?",
                (state, error, event_id),
            )
            self._db.commit()

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM events GROUP BY state").fetchall()
        return {"pending": 0, "sent": 0, "parked": 0, **dict(rows)}

    def parked(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, last_error FROM events WHERE state = 'parked'"
            ).fetchall()
        return [{"event_id": i, "reason": r} for i, r in rows]

    def stats(self, recent: int = 10) -> dict[str, Any]:
        """Totals, by model and by provider, and the most recent events."""
        query = """
            SELECT json_extract(body, '$.provider'), json_extract(body, '$.model'),
                   json_extract(body, '$.event_type'), COUNT(*),
                   SUM(COALESCE(json_extract(body, '$.input_tokens'), 0)),
                   SUM(COALESCE(json_extract(body, '$.output_tokens'), 0)),
                   SUM(COALESCE(json_extract(body, '$.cost_micros'), 0))
            FROM events GROUP BY 1, 2, 3"""
        with self._lock:
            rows = self._db.execute(query).fetchall()
            last = self._db.execute(
                "SELECT body, state FROM events ORDER BY timestamp_ms DESC LIMIT ?", (recent,)
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
        for provider, model, kind, n, tin, tout, cost in rows:
            for bucket in (
                totals,
                by_model.setdefault(model or "?", {}),
                by_provider.setdefault(provider or "unknown", {}),
            ):
                bucket["requests"] = bucket.get("requests", 0) + n
                bucket["failed"] = bucket.get("failed", 0) + (
                    n if kind == "llm_request_failed" else 0
                )
                bucket["input_tokens"] = bucket.get("input_tokens", 0) + (tin or 0)
                bucket["output_tokens"] = bucket.get("output_tokens", 0) + (tout or 0)
                bucket["cost_micros"] = bucket.get("cost_micros", 0) + (cost or 0)
        return {
            "totals": totals,
            "by_model": by_model,
            "by_provider": by_provider,
            "outbox": self.counts(),
            "recent": [{**json.loads(b), "sync_state": s} for b, s in last],
        }


class OutboxWriter:
    """Commits events on its own thread, in batches, so that the proxy's event loop never
    waits for the disk. ``submit(event, done)`` calls ``done()`` once the event is committed;
    with ``on_commit(callbacks)`` given, the batch's callbacks are handed to it instead (to
    run them all with one wake-up of an event loop)."""

    def __init__(self, outbox: Outbox, on_commit=None) -> None:
        self.outbox = outbox
        self.on_commit = on_commit
        self._queue: list[tuple[Event, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="iron-outbox", daemon=True)
        self._thread.start()

    def submit(self, event: Event, done=None) -> None:
        """Queue an event; ``done()`` is called (on the writer thread) once committed."""
        with self._cond:
            self._queue.append((event, done))
            self._cond.notify()

    def _run(self) -> None:
        busy = False
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
            if busy and not self._closed:
                # Under load, gather for a millisecond: one commit then carries many events
                # (a commit costs far more than a row). Idle, commit at once.
                time.sleep(0.001)
            with self._cond:
                batch, self._queue = self._queue, []
                if not batch and self._closed:
                    return
            busy = len(batch) > 1
            try:
                self.outbox.add([e for e, _ in batch])
            except Exception:  # pragma: no cover - disk full, say: keep them for a retry
                time.sleep(0.5)
                with self._cond:
                    self._queue[:0] = batch
                continue
            callbacks = [done for _, done in batch if done is not None]
            if callbacks and self.on_commit is not None:
                self.on_commit(callbacks)  # one hand-over for the whole batch
            else:
                for done in callbacks:
                    done()

    def close(self, timeout: float = 5.0) -> None:
        """Commit what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
