"""The sync worker: sends pending outbox events to the control server, one POST per event
on a keep-alive session, every ``interval`` seconds.

2xx (202 accepted, 200 duplicate) marks an event sent; a 4xx parks it with the reason (it is
kept, never dropped, and can be inspected); a 5xx or a network error leaves it pending and
backs off exponentially (``interval`` doubling up to ``max_backoff``).
"""

from __future__ import annotations

import logging
import threading
import time

import requests

from .outbox import Outbox

logger = logging.getLogger("iron_runtime")

EVENTS_PATH = "/api/v1/analytics/events"


class SyncWorker:
    def __init__(
        self,
        outbox: Outbox,
        server_url: str,
        ic_token: str,
        interval: float = 5.0,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
    ) -> None:
        self.outbox = outbox
        self.url = server_url.rstrip("/") + EVENTS_PATH
        self.ic_token = ic_token
        self.interval = interval
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.session = requests.Session()
        self.failures = 0
        self.sent = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one sync pass at a time
        self._thread = threading.Thread(target=self._run, name="iron-sync", daemon=True)

    def start(self) -> SyncWorker:
        self._thread.start()
        return self

    def _delay(self) -> float:
        if not self.failures:
            return self.interval
        return min(self.interval * 2**self.failures, self.max_backoff)

    def _run(self) -> None:
        self.sync_once()  # what an earlier router left unsent goes first
        while not self._stop.is_set():
            self._wake.wait(self._delay())
            self._wake.clear()
            if self._stop.is_set():
                return
            self.sync_once()

    def sync_once(self, deadline: float | None = None) -> bool:
        """Send what is pending; True when nothing is left pending."""
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            return False  # another pass is still running (a slow server): leave it pending
        try:
            while True:
                batch = self.outbox.pending(100)
                if not batch:
                    return True
                for event in batch:
                    if deadline is not None and time.monotonic() > deadline:
                        return False
                    if deadline is None and self._stop.is_set():
                        return False  # stopping: the final pass (with a deadline) takes over
                    if not self._send(event):
                        return False
        finally:
            self._lock.release()

    def _send(self, event) -> bool:
        """False when the server is unreachable or failing (stop this pass)."""
        try:
            resp = self.session.post(self.url, json=event.wire(self.ic_token), timeout=self.timeout)
        except requests.RequestException as e:
            self._failed(f"{type(e).__name__}")
            return False
        if 200 <= resp.status_code < 300:
            self.outbox.mark(event.event_id, "sent")
            self.sent += 1
            self.failures = 0
            return True
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
            reason = f"{resp.status_code}: {resp.text[:300]}"
            self.outbox.mark(event.event_id, "parked", reason)
            logger.warning(
                "iron_runtime: analytics event %s refused by the server (%s); parked",
                event.event_id,
                reason,
            )
            return True
        self._failed(f"HTTP {resp.status_code}")
        return False

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self.failures in (1, 5) or self.failures % 20 == 0:
            logger.warning(
                "iron_runtime: analytics sync failed (%s); retrying in %.1f s", why, self._delay()
            )

    def stop(self, flush_deadline: float = 5.0) -> bool:
        """Stop the worker after a last pass bounded by ``flush_deadline`` seconds; True when
        everything was sent (what is left stays in the outbox for the next router)."""
        end = time.monotonic() + flush_deadline
        self.timeout = max(0.5, min(self.timeout, flush_deadline / 2))
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, end - time.monotonic()))
        self.failures = 0
        done = self.sync_once(deadline=end) if time.monotonic() < end else False
        self.session.close()
        return done
