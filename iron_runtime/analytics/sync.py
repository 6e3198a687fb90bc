"""The sync worker: sends pending outbox events to the control server, one POST per event,
up to ``concurrency`` of them in flight at once, every ``interval`` seconds.

Each sender thread keeps its own kept-alive connection (stdlib ``http.client``: about a
quarter of the CPU of a ``requests`` session per POST, which matters in the router's own
process); senders are started as the backlog needs them, up to ``concurrency``. A
coordinating thread pages through the pending events, hands them to the senders and marks
the answers in the outbox in batches: one SQLite transaction for up to 256 answers, or for
what came in half a second.

2xx (202 accepted, 200 duplicate) marks an event sent; a 4xx other than 408/429 parks it
with the reason (it is kept, never dropped, and can be inspected); a 5xx, a 408/429 or a
network error leaves it pending and ends the pass, which backs off exponentially
(``interval`` doubling up to ``max_backoff``). An event is marked sent only on the server's
2xx; one sent twice (a pass ended by a deadline before its answer came, a kept-alive
connection closed under it) is answered "duplicate" by the server, which de-duplicates by
``event_id``.

Proxies from the environment (``HTTP(S)_PROXY``, ``NO_PROXY``) and a CA bundle from
``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (else certifi's) are honoured, as by the rest of
the router's calls to the control server.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import queue
import ssl
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit

from .outbox import Outbox

logger = logging.getLogger("iron_runtime")

EVENTS_PATH = "/api/v1/analytics/events"
PAGE = 500  # events read from the outbox at a time
MARK_BATCH = 256  # answers marked in one transaction
MARK_EVERY = 0.5  # seconds an answer waits at most to be marked, during a long pass
# A kept-alive connection the server closed while idle: the POST is sent again, once, on a
# new connection (harmless: the server de-duplicates).
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class SyncWorker:
    def __init__(
        self,
        outbox: Outbox,
        server_url: str,
        ic_token: str,
        interval: float = 5.0,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
        concurrency: int = 64,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.outbox = outbox
        self.url = server_url.rstrip("/") + EVENTS_PATH
        self.ic_token = ic_token
        self.interval = interval
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.concurrency = concurrency
        self.failures = 0
        self.sent = 0
        self.parked = 0
        self._target = urlsplit(self.url)
        self._proxy = _proxy_for(self._target)
        self._tls = _tls_context() if self._target.scheme == "https" else None
        self._work: queue.SimpleQueue = queue.SimpleQueue()  # (pass, event) or None: quit
        self._results: queue.SimpleQueue = queue.SimpleQueue()  # (pass, id, outcome, detail)
        self._senders: list[threading.Thread] = []
        self._pass = 0
        self._closed = False
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

    # -- a pass --------------------------------------------------------------------------

    def sync_once(self, deadline: float | None = None) -> bool:
        """Send what is pending; True when nothing is left pending. With ``deadline`` (a
        ``time.monotonic()`` value), the pass ends by then, answers still awaited or not."""
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            return False  # another pass is still running (a slow server): leave it pending
        try:
            return self._sync_pass(deadline)
        finally:
            self._lock.release()

    def _sync_pass(self, deadline: float | None) -> bool:
        self._pass += 1
        tag = self._pass
        sent_before = self.sent
        marks: list[tuple[str, str, str | None]] = []
        trouble: list[str] = []  # why the server could not take events (5xx, network)
        self._drain(marks, tag, trouble)  # answers that came after their pass had ended
        page: list = []
        cursor: tuple[int, str] | None = None
        exhausted = False
        in_flight = 0
        window = 2 * self.concurrency  # queued ahead, so that no sender waits for work
        marked = time.monotonic()
        while True:
            if deadline is None:
                stopping = self._stop.is_set()  # the final pass (with a deadline) takes over
            else:
                stopping = time.monotonic() >= deadline
            while not trouble and not stopping and in_flight < window:
                if not page:
                    if exhausted:
                        break
                    page = self.outbox.pending(PAGE, after=cursor)
                    exhausted = len(page) < PAGE
                    if not page:
                        break
                    cursor = (page[-1].timestamp_ms, page[-1].event_id)
                    page.reverse()
                self._work.put((tag, page.pop()))
                in_flight += 1
                if len(self._senders) < min(in_flight, self.concurrency):
                    self._start_sender()
            if in_flight == 0:
                self._mark(marks)
                if trouble or stopping:
                    break
                # Caught up: events committed meanwhile with an earlier timestamp than the
                # cursor are found by starting over (nothing of this pass is in flight).
                if not self.outbox.pending(1):
                    break
                cursor, exhausted = None, False
                continue
            if stopping:
                break  # answers still awaited are marked when they come (next pass, stop)
            limit = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
            try:
                result = self._results.get(timeout=limit)
            except queue.Empty:
                continue
            in_flight -= self._take(result, marks, tag, trouble)
            in_flight -= self._drain(marks, tag, trouble)
            if len(marks) >= MARK_BATCH or time.monotonic() - marked > MARK_EVERY:
                self._mark(marks)
                marked = time.monotonic()
        self._mark(marks)
        if trouble:
            if self.sent > sent_before:
                self.failures = 0  # the server takes events (a flapping one): short backoff
            self._failed(trouble[0])
            return False
        if in_flight or page or not exhausted:
            return False
        self.failures = 0
        return True

    def _take(self, result: tuple, marks: list, tag: int, trouble: list) -> int:
        """Record one sender's answer; 1 when it belongs to the pass ``tag``."""
        rtag, event_id, outcome, detail = result
        if outcome == "sent":
            marks.append((event_id, "sent", None))
            self.sent += 1
        elif outcome == "parked":
            marks.append((event_id, "parked", detail))
            self.parked += 1
            if self.parked <= 5 or self.parked % 100 == 0:
                logger.warning(
                    "iron_runtime: analytics event %s refused by the server (%s); parked "
                    "(%d so far)",
                    event_id,
                    detail,
                    self.parked,
                )
        elif outcome == "retry" and rtag == tag:
            trouble.append(detail)
        return 1 if rtag == tag else 0

    def _drain(self, marks: list, tag: int, trouble: list) -> int:
        n = 0
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return n
            n += self._take(result, marks, tag, trouble)

    def _mark(self, marks: list) -> None:
        if marks:
            self.outbox.mark_many(marks)
            marks.clear()

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self.failures in (1, 5) or self.failures % 20 == 0:
            logger.warning(
                "iron_runtime: analytics sync failed (%s); retrying in %.1f s", why, self._delay()
            )

    # -- senders -------------------------------------------------------------------------

    def _start_sender(self) -> None:
        t = threading.Thread(target=self._sender, name="iron-sync-send", daemon=True)
        self._senders.append(t)
        t.start()

    def _sender(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"content-type": "application/json", "user-agent": "iron-runtime"}
        if self._proxy is not None and self._proxy.auth and self._target.scheme == "http":
            headers["proxy-authorization"] = self._proxy.auth
        try:
            while (item := self._work.get()) is not None:
                tag, event = item
                if self._closed:
                    continue  # stopped: it stays pending for the next router
                body = json.dumps(event.wire(self.ic_token), separators=(",", ":")).encode()
                outcome: tuple[str, str | None]  # what happened, and why
                for _attempt in range(2):
                    reused = conn is not None
                    if conn is None:
                        conn = self._connect()
                    conn.timeout = self.timeout
                    if conn.sock is not None:
                        conn.sock.settimeout(self.timeout)
                    try:
                        conn.request("POST", self._request_target(), body, headers)
                        resp = conn.getresponse()
                        data = resp.read()
                    except Exception as e:  # noqa: BLE001 - network, TLS, protocol
                        conn.close()
                        conn = None
                        if reused and isinstance(e, _STALE):
                            continue
                        outcome = ("retry", type(e).__name__)
                        break
                    if resp.will_close:
                        conn.close()
                        conn = None
                    outcome = _outcome(resp.status, data)
                    break
                self._results.put((tag, event.event_id, *outcome))
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        t, p = self._target, self._proxy
        # A URL without a host is never reached (``requests``, for the router's other calls to
        # the server, refuses it): an empty host name resolves to nothing.
        server = t.hostname or ""
        host, port = (p.hostname or "", p.port or 80) if p is not None else (server, t.port)
        if t.scheme != "https":
            return http.client.HTTPConnection(host, port, timeout=self.timeout)
        conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls)
        if p is not None:  # TLS to the server inside the proxy's CONNECT tunnel
            tunnel = {"proxy-authorization": p.auth} if p.auth else None
            conn.set_tunnel(server, t.port or 443, headers=tunnel)
        return conn

    def _request_target(self) -> str:
        if self._proxy is not None and self._target.scheme == "http":
            return self.url  # an HTTP proxy takes the absolute URL
        return self._target.path + (f"?{self._target.query}" if self._target.query else "")

    # -- stopping ------------------------------------------------------------------------

    def stop(self, flush_deadline: float = 5.0) -> bool:
        """Stop the worker after a last pass bounded by ``flush_deadline`` seconds; True when
        everything was sent (what is left stays in the outbox for the next router)."""
        end = time.monotonic() + flush_deadline
        self.timeout = max(0.5, min(self.timeout, flush_deadline / 2))
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, end - time.monotonic()))
        self.failures = 0
        done = self.sync_once(deadline=end) if time.monotonic() < end else False
        if self._lock.acquire(timeout=max(0.0, end - time.monotonic())):
            try:  # answers that arrived after the last pass ended
                marks: list = []
                self._drain(marks, -1, [])
                self._mark(marks)
            finally:
                self._lock.release()
        self._closed = True
        for _ in self._senders:
            self._work.put(None)
        return done


def _outcome(status: int, data: bytes) -> tuple[str, str | None]:
    if 200 <= status < 300:
        return "sent", None
    if 400 <= status < 500 and status not in (408, 429):
        return "parked", f"{status}: {data[:300].decode('utf-8', 'replace')}"
    return "retry", f"HTTP {status}"


class _Proxy:
    """A proxy from the environment, spoken to in plain HTTP (CONNECT for HTTPS servers)."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url if "://" in url else "http://" + url)
        self.hostname = u.hostname
        self.port = u.port
        self.auth: str | None = None
        if u.username is not None:
            raw = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
            self.auth = "Basic " + base64.b64encode(raw).decode()


def _proxy_for(target: Any) -> _Proxy | None:
    """The proxy the environment sets for this URL (as ``requests`` would), or None."""
    proxies = urllib.request.getproxies()
    url = proxies.get(target.scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass(target.hostname or ""):
        return None
    return _Proxy(url)


def _tls_context() -> ssl.SSLContext:
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not cafile:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:  # pragma: no cover - certifi comes with requests
            cafile = None
    return ssl.create_default_context(cafile=cafile)
