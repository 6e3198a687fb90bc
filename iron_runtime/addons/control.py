"""Control addon: the router's side of the Iron Cage control server, when ``iron_server_url``
is set: the agent's provider key (server mode) and the budget lease.

At start a worker thread fetches the key (to learn the provider) and asks for a lease.
``LlmRouter`` reports itself ready once that first attempt has ended, in success or failure,
or after ``STARTUP_WAIT`` seconds. A request that needs the lease while a handshake is in
flight waits for it (at most ``LEASE_WAIT`` seconds); when the server cannot be reached the
worker keeps retrying with back-off, and requests that need the missing piece get 503 with
the reason meanwhile. Reports and refreshes run on the same worker thread; the lease goes
back on stop with what was spent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading

from mitmproxy import ctx, exceptions

from iron_runtime import errors
from iron_runtime.control import ControlServer, KeyCache, LeaseClient
from iron_runtime.errors import LeaseError, RouterError

logger = logging.getLogger("iron_runtime")

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


class Control:
    def __init__(self) -> None:
        self.server: ControlServer | None = None
        self.keys: KeyCache | None = None
        self.leases: LeaseClient | None = None
        self.provider = "unknown"
        self.lease_error: str | None = None
        # resolved once the first key fetch and lease handshake have ended, either way
        self.started = _running_future()
        self._attempt: concurrent.futures.Future | None = None  # the handshake in flight
        self._leased = False  # a lease is in hand and its grant is the budget's limit
        self._jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._refreshing = False
        self._worker: threading.Thread | None = None

    def load(self, loader) -> None:
        loader.add_option("iron_server_url", str, "", "Iron Cage control server URL.")
        loader.add_option("iron_cache_ttl", int, 300, "Seconds a fetched provider key is kept.")
        loader.add_option(
            "iron_server_keys",
            bool,
            False,
            "Fetch the provider key from the control server (server mode).",
        )
        loader.add_option(
            "iron_lease", bool, False, "Take the budget from a lease of the control server."
        )

    def configure(self, updated: set[str]) -> None:
        if "iron_cache_ttl" in updated and ctx.options.iron_cache_ttl < 0:
            raise exceptions.OptionsError("iron_cache_ttl must be >= 0")
        if "iron_server_url" in updated and ctx.options.iron_server_url:
            url = ctx.options.iron_server_url
            if not url.startswith(("http://", "https://")):
                raise exceptions.OptionsError(f"iron_server_url must be http(s)://..., got {url}")

    @property
    def lease_wanted(self) -> bool:
        return bool(ctx.options.iron_lease and self.server)

    def running(self) -> None:
        url = ctx.options.iron_server_url
        if not url:
            self.started.set_result(None)
            return
        self.server = ControlServer(url, ctx.options.iron_token, timeout=SERVER_TIMEOUT)
        if ctx.options.iron_server_keys:
            self.keys = KeyCache(self.server, ttl=ctx.options.iron_cache_ttl)
        if ctx.options.iron_lease:
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

    # -- the budget gate ---------------------------------------------------------------------

    def lease_pending(self) -> bool:
        """True while requests that spend need a lease that is not in hand."""
        return self.lease_wanted and not self._leased

    async def wait_for_lease(self, timeout: float = LEASE_WAIT) -> bool:
        """Wait for the handshake in flight, if there is one (at most ``timeout`` s); True once
        the lease is in hand. Between retries nothing is in flight: False at once."""
        attempt = self._attempt
        if attempt is not None and self.lease_pending():
            await _wait(attempt, timeout)
        return not self.lease_pending()

    def lease_unavailable(self) -> RouterError:
        """The 503 for a request that needs the lease while the server has not granted one."""
        return errors.budget_unavailable(self.lease_error)

    # -- the worker: first key and handshake with back-off, then reports and refreshes ------

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
            self._budget().ledger.set_limit(lease.granted)
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

    def _budget(self):
        return ctx.master.addons.get("budget")

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
        """Called by the budget after each settled request."""
        if self.leases is None or self.leases.lease is None:
            return
        self._jobs.put(lambda: self.leases.report(request_id, tokens, cost, model, provider))
        spent, _, limit = self._budget().ledger.status()
        granted = self.leases.lease.granted
        if limit is not None and not self._refreshing and limit - spent < REFRESH_BELOW * granted:
            self._refreshing = True
            self._jobs.put(self._refresh)

    def _refresh(self) -> None:
        try:
            added = self.leases.refresh()
            if added:
                ledger = self._budget().ledger
                ledger.set_limit((ledger.limit or 0) + added)
                logger.info("iron_runtime: budget lease refreshed by %d µ$", added)
        finally:
            self._refreshing = False

    def done(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(2)  # a handshake in flight: its lease must be returned too
        if self.server is not None:
            self.server.timeout = 2  # stopping must not hang on a slow server
        if self.leases is not None and self.leases.lease is not None:
            self._leased = False
            # pending reports are dropped: the return below carries the total spent
            spent = self._budget().ledger.status()[0]
            try:
                returned = self.leases.give_back(spent)
                logger.info("iron_runtime: budget lease returned (%d µ$ unspent)", returned)
            except LeaseError as e:
                logger.warning("iron_runtime: %s", e.message)
        if self.server is not None:
            self.server.close()


def control() -> Control | None:
    return ctx.master.addons.get("control")
