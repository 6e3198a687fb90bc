"""Client of the Iron Cage control server: provider keys and budget leases.

The wire formats are the original server's. Calls are blocking (``requests`` on a keep-alive
session) and are made from worker threads, never on the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .budget import Ledger
from .errors import LeaseError, RouterError, budget_unavailable, key_unavailable
from .providers import Provider

if TYPE_CHECKING:
    import requests

logger = logging.getLogger("iron_runtime")


@dataclass(frozen=True, slots=True)
class ProviderKey:
    key: str
    provider: Provider
    base_url: str | None = None

    def __repr__(self) -> str:  # never print the key
        return f"ProviderKey(provider={self.provider.value}, base_url={self.base_url!r})"


class Unreachable(Exception):
    """The control server could not be reached; the message is the network error's type."""


class ControlServer:
    """The Iron Cage server's HTTP API (``requests`` is imported with the first one: a
    router without a server never loads it)."""

    def __init__(self, url: str, ic_token: str, timeout: float = 10.0) -> None:
        import requests

        self.url = url.rstrip("/")
        self.ic_token = ic_token
        self.timeout = timeout
        self.session = requests.Session()
        self._network_error = requests.RequestException

    def post(
        self, path: str, body: dict[str, Any], auth: bool = False, timeout: float | None = None
    ) -> requests.Response:
        headers = {"authorization": f"Bearer {self.ic_token}"} if auth else {}
        # requests' connection pool is thread-safe: a slow call on the worker thread must not
        # hold up the lease return at shutdown
        try:
            return self.session.post(
                self.url + path, json=body, headers=headers, timeout=timeout or self.timeout
            )
        except self._network_error as e:
            raise Unreachable(type(e).__name__) from None

    def close(self) -> None:
        self.session.close()


# -- keys --------------------------------------------------------------------------------------


def ip_token_key() -> bytes:
    """The 32-byte AES key from ``IP_TOKEN_KEY`` (hex or base64)."""
    raw = os.environ.get("IP_TOKEN_KEY", "").strip()
    if not raw:
        raise key_unavailable(
            503,
            "The control server sent an encrypted provider key (ip_token) but "
            "IP_TOKEN_KEY is not configured: set it to the 32-byte key, hex or base64.",
        )
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(raw)
        except (ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    raise key_unavailable(
        503, "IP_TOKEN_KEY must be 32 bytes, given as 64 hex characters or base64."
    )


def decrypt_ip_token(token: str, key: bytes) -> str:
    """``AES256:{iv_b64}:{ciphertext_b64}:{tag_b64}`` → the provider key (AES-256-GCM)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    parts = token.split(":")
    if len(parts) != 4 or parts[0] != "AES256":
        raise key_unavailable(503, "The control server sent a malformed ip_token.")
    try:
        iv, ct, tag = (base64.b64decode(p) for p in parts[1:])
        return AESGCM(key).decrypt(iv, ct + tag, None).decode()
    except (binascii.Error, InvalidTag, ValueError, UnicodeDecodeError):
        raise key_unavailable(
            503, "The ip_token could not be decrypted with IP_TOKEN_KEY (wrong key?)."
        ) from None


def fetch_provider_key(server: ControlServer) -> ProviderKey:
    try:
        resp = server.post("/api/v1/agents/provider-key", {"ic_token": server.ic_token})
    except Unreachable as e:
        raise key_unavailable(
            503,
            f"The Iron Cage server at {server.url} could not be "
            f"reached for the provider key ({e}).",
        ) from None
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code != 200:
        error = body.get("error", "Unknown error") if isinstance(body, dict) else "Unknown error"
        code = body.get("code", "UNKNOWN") if isinstance(body, dict) else "UNKNOWN"
        status = 403 if resp.status_code in (401, 403, 404) else 503
        raise key_unavailable(
            status,
            f"The Iron Cage server refused the provider key: {resp.status_code}: {error} ({code}).",
        )
    try:
        provider = Provider(body.get("provider"))
    except ValueError:
        raise key_unavailable(
            503, f"The Iron Cage server assigned an unknown provider {body.get('provider')!r}."
        ) from None
    if isinstance(body.get("ip_token"), str):
        key = decrypt_ip_token(body["ip_token"], ip_token_key())
    elif isinstance(body.get("provider_key"), str) and body["provider_key"]:
        key = body["provider_key"]
    else:
        raise key_unavailable(503, "The Iron Cage server sent no provider key.")
    return ProviderKey(key, provider, body.get("base_url") or None)


class KeyCache:
    """The agent's provider key, fetched once per ``ttl`` seconds.

    Concurrent callers share one fetch, whether they wait on the event loop (requests) or on
    a thread (the router's start-up). When a refresh fails, the cached key keeps serving for
    ``grace`` more seconds; after that, requests get the fetch's error.
    """

    def __init__(self, server: ControlServer, ttl: float, grace: float = 300.0) -> None:
        self.server = server
        self.ttl = ttl
        self.grace = grace
        self.key: ProviderKey | None = None
        self.fetched_at = 0.0
        self.fetches = 0
        self._lock = threading.Lock()
        self._inflight: concurrent.futures.Future | None = None

    def fresh(self) -> ProviderKey | None:
        if self.key is not None and time.monotonic() - self.fetched_at < self.ttl:
            return self.key
        return None

    def fetch_blocking(self) -> ProviderKey:
        self.fetches += 1
        key = fetch_provider_key(self.server)
        self.key, self.fetched_at = key, time.monotonic()
        return key

    def _shared_fetch(self) -> concurrent.futures.Future:
        """The fetch in flight, or a new one on a thread of its own."""
        with self._lock:
            if self._inflight is None or self._inflight.done():
                future: concurrent.futures.Future = concurrent.futures.Future()
                future.set_running_or_notify_cancel()  # no waiter can cancel it for the others
                self._inflight = future
                threading.Thread(
                    target=self._run_fetch, args=(future,), name="iron-key-fetch", daemon=True
                ).start()
            return self._inflight

    def _run_fetch(self, future: concurrent.futures.Future) -> None:
        try:
            future.set_result(self.fetch_blocking())
        except BaseException as e:  # handed to every waiter
            future.set_exception(e)

    def fetch_shared(self) -> ProviderKey:
        """Blocking: a new key, from the fetch in flight if there is one."""
        return self._shared_fetch().result()

    async def get(self) -> ProviderKey:
        key = self.fresh()
        if key is not None:
            return key
        try:
            return await asyncio.wrap_future(self._shared_fetch())
        except RouterError:
            stale = self.key
            if stale is not None and time.monotonic() - self.fetched_at < self.ttl + self.grace:
                return stale
            raise


# -- budget leases -----------------------------------------------------------------------------


@dataclass
class LeaseState:
    lease_id: str
    granted: int  # µ$ in all, refreshes included


class LeaseClient:
    """Protocol 005: handshake, report, refresh, return. Blocking calls; run them off the
    event loop."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.lease: LeaseState | None = None

    def _json(self, path: str, body: dict, auth: bool = False) -> dict:
        try:
            resp = self.server.post(path, body, auth=auth)
        except Unreachable as e:
            raise LeaseError(
                f"The Iron Cage server at {self.server.url} could not be reached "
                f"for the budget lease ({e})."
            ) from None
        try:
            data = resp.json()
        except ValueError:
            data = {}
        if resp.status_code != 200:
            error = data.get("error", "") if isinstance(data, dict) else ""
            raise LeaseError(
                f"The Iron Cage server refused {path.rsplit('/', 1)[-1]}: "
                f"{resp.status_code} {error}".strip()
            )
        return data

    def handshake(self, provider: str, requested: int | None = None) -> LeaseState:
        body: dict[str, Any] = {"ic_token": self.server.ic_token, "provider": provider}
        if requested:
            body["requested_budget"] = requested
        data = self._json("/api/v1/budget/handshake", body, auth=True)
        try:
            lease = LeaseState(str(data["lease_id"]), int(data["budget_granted"]))
        except (KeyError, TypeError, ValueError):
            raise LeaseError(
                f"The Iron Cage server's handshake answer has no usable lease: {str(data)[:200]}"
            ) from None
        self.lease = lease
        return lease

    def report(self, request_id: str, tokens: int, cost: int, model: str, provider: str) -> None:
        assert self.lease is not None
        self._json(
            "/api/v1/budget/report",
            {
                "lease_id": self.lease.lease_id,
                "request_id": request_id,
                "tokens": tokens,
                "cost_microdollars": cost,
                "model": model,
                "provider": provider,
            },
        )

    def refresh(self, requested: int | None = None) -> int:
        """More budget on the current lease; returns the µ$ added (0 when denied)."""
        assert self.lease is not None
        body: dict[str, Any] = {
            "ic_token": self.server.ic_token,
            "current_lease_id": self.lease.lease_id,
        }
        if requested:
            body["requested_budget"] = requested
        data = self._json("/api/v1/budget/refresh", body)
        if data.get("status") != "approved":
            return 0
        added = int(data.get("budget_granted") or 0)
        self.lease = LeaseState(
            str(data.get("lease_id") or self.lease.lease_id), self.lease.granted + added
        )
        return added

    def give_back(self, spent: int) -> int:
        """Return the lease; the server credits back what was not spent."""
        assert self.lease is not None
        data = self._json(
            "/api/v1/budget/return", {"lease_id": self.lease.lease_id, "spent_microdollars": spent}
        )
        self.lease = None
        return int(data.get("returned") or 0)


# -- the router's link to the server: first key and lease, reports, refreshes, return --------

REFRESH_BELOW = 0.10  # ask for more when less than 10 % of the lease is left
SERVER_TIMEOUT = 10.0  # seconds one call to the control server may take
STARTUP_WAIT = 5.0  # seconds start-up waits at most for the first key fetch and handshake
LEASE_WAIT = SERVER_TIMEOUT  # seconds a request waits at most for a handshake in flight


def _running_future() -> concurrent.futures.Future:
    """A future only its owner resolves (waiters cannot cancel it for one another)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    return future


async def _wait(future: concurrent.futures.Future, timeout: float) -> bool:
    """Wait on the event loop for a thread's future, at most ``timeout`` s; True if it ended."""
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError:
        return False
    return True


class ServerLink:
    """The router's side of the control server: the agent's provider key (server mode) and
    the budget lease whose grant is the ledger's limit.

    ``start`` fetches the key (to learn the provider) and asks for a lease on a worker thread;
    ``ready`` resolves once that first attempt has ended, in success or failure. A request
    that needs the lease while a handshake is in flight waits for it (at most ``LEASE_WAIT``
    seconds); when the server cannot be reached the worker keeps retrying with back-off, and
    requests that need the missing piece get 503 with the reason meanwhile. Reports and
    refreshes run on the same worker thread; ``stop`` returns the lease with what was spent.
    Without ``start`` the link is idle: no key, no lease, nothing pending.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.server: ControlServer | None = None
        self.keys: KeyCache | None = None
        self.leases: LeaseClient | None = None
        self.provider = "unknown"
        self.lease_error: str | None = None
        # resolved once the first key fetch and lease handshake have ended, either way
        self.started = _running_future()
        self._attempt: concurrent.futures.Future | None = None  # the handshake in flight
        self._leased = False  # a lease is in hand and its grant is the ledger's limit
        self._jobs: queue.Queue[Callable[[], Any]] = queue.Queue()
        self._stop = threading.Event()
        self._refreshing = False
        self._worker: threading.Thread | None = None

    def start(
        self, url: str, ic_token: str, *, server_keys: bool, lease: bool, key_ttl: float
    ) -> None:
        if not url:
            if not self.started.done():
                self.started.set_result(None)
            return
        self.server = ControlServer(url, ic_token, timeout=SERVER_TIMEOUT)
        if server_keys:
            self.keys = KeyCache(self.server, ttl=key_ttl)
        if lease:
            self.leases = LeaseClient(self.server)
            self.lease_error = "The budget lease has not been granted yet."
            # in flight from now on: a request arriving before the worker runs waits for it
            self._attempt = _running_future()
        self._worker = threading.Thread(target=self._work, name="iron-control", daemon=True)
        self._worker.start()

    async def ready(self, timeout: float = STARTUP_WAIT) -> None:
        """Wait until the first key fetch and lease handshake have ended (or ``timeout``)."""
        if not await _wait(self.started, timeout):
            logger.warning(
                "iron_runtime: the control server has not answered within %g s; "
                "requests wait for it or get 503 with the reason",
                timeout,
            )

    # -- keys ----------------------------------------------------------------------------------

    async def fetch_key(self) -> ProviderKey:
        """The agent's provider key, fetched off the event loop (one fetch shared by all the
        requests waiting for it); raises the RouterError the request is answered with."""
        assert self.keys is not None
        key = await self.keys.get()
        self.provider = key.provider.value
        return key

    # -- the budget gate -----------------------------------------------------------------------

    def lease_pending(self) -> bool:
        """True while requests that spend need a lease that is not in hand."""
        return self.leases is not None and not self._leased

    async def wait_for_lease(self, timeout: float = LEASE_WAIT) -> bool:
        """Wait for the handshake in flight, if there is one (at most ``timeout`` s); True once
        the lease is in hand. Between retries nothing is in flight: False at once."""
        attempt = self._attempt
        if attempt is not None and self.lease_pending():
            await _wait(attempt, timeout)
        return not self.lease_pending()

    def lease_unavailable(self) -> RouterError:
        """The 503 for a request that needs the lease while the server has not granted one."""
        return budget_unavailable(self.lease_error)

    def granted(self) -> int | None:
        """µ$ the current lease granted (refreshes included), or None without a lease."""
        lease = self.leases.lease if self.leases is not None else None
        return lease.granted if lease is not None else None

    def need_more(self) -> None:
        """A request did not fit: ask the server for more, once at a time."""
        if self.leases is not None and self.leases.lease is not None and not self._refreshing:
            self._refreshing = True
            self._jobs.put(self._refresh)

    def settled(self, request_id: str, tokens: int, cost: int, model: str, provider: str) -> None:
        """Report a settled request to the server (on the worker), and ask for more when the
        lease runs low."""
        leases = self.leases
        if leases is None or leases.lease is None:
            return
        self._jobs.put(lambda: leases.report(request_id, tokens, cost, model, provider))
        spent, _, limit = self.ledger.status()
        granted = leases.lease.granted
        if limit is not None and not self._refreshing and limit - spent < REFRESH_BELOW * granted:
            self._refreshing = True
            self._jobs.put(self._refresh)

    # -- the worker: first key and handshake with back-off, then reports and refreshes --------

    def _work(self) -> None:
        try:
            if self.leases is not None:
                self._take_lease()
            elif self.keys is not None:
                self._fetch_key()
        finally:
            if not self.started.done():
                self.started.set_result(None)
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                job()
            except RouterError as e:
                logger.warning("iron_runtime: control server: %s", e.message)
            except Exception:
                logger.exception("iron_runtime: control server job failed")

    def _fetch_key(self) -> None:
        assert self.keys is not None
        try:
            self.provider = self.keys.fetch_shared().provider.value
        except RouterError as e:
            logger.warning("iron_runtime: provider key not available at start: %s", e.message)

    def _take_lease(self) -> None:
        """Handshake until a lease is granted or the router stops; ``started`` is resolved
        after the first attempt."""
        delay = 0.5
        while not self._stop.is_set():
            granted = self._handshake()
            if not self.started.done():
                self.started.set_result(None)
            if granted or self._stop.wait(delay):
                return
            delay = min(delay * 2, 30.0)

    def _handshake(self) -> bool:
        assert self.leases is not None
        attempt = self._attempt or _running_future()
        self._attempt = attempt
        try:
            if self.keys is not None and self.keys.key is None:
                self.provider = self.keys.fetch_shared().provider.value
            provider = self.provider if self.provider != "unknown" else "openai"
            lease = self.leases.handshake(provider)
            self.ledger.set_limit(lease.granted)
            self._leased = True
            self.lease_error = None
            logger.info("iron_runtime: budget lease %s granted", lease.lease_id)
            return True
        except Exception as e:  # an unreadable answer must not end the retries
            self.lease_error = e.message if isinstance(e, RouterError) else repr(e)
            if not self.started.done():
                logger.warning("iron_runtime: no budget lease at start: %s", self.lease_error)
            return False
        finally:
            self._attempt = None
            attempt.set_result(None)  # wakes the requests waiting for this handshake

    def _refresh(self) -> None:
        assert self.leases is not None
        try:
            added = self.leases.refresh()
            if added:
                self.ledger.add_to_limit(added)
                logger.info("iron_runtime: budget lease refreshed by %d µ$", added)
        finally:
            self._refreshing = False

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(2)  # a handshake in flight: its lease must be returned too
        if self.server is not None:
            self.server.timeout = 2  # stopping must not hang on a slow server
        if self.leases is not None and self.leases.lease is not None:
            self._leased = False
            # pending reports are dropped: the return below carries the total spent
            spent = self.ledger.status()[0]
            try:
                returned = self.leases.give_back(spent)
                logger.info("iron_runtime: budget lease returned (%d µ$ unspent)", returned)
            except LeaseError as e:
                logger.warning("iron_runtime: %s", e.message)
        if self.server is not None:
            self.server.close()
