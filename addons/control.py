"""Control addon: the router's side of the Iron Cage control server, when ``iron_server_url``
is set: the agent's provider key (server mode) and the budget lease (SPEC §6-7).

At start it fetches the key (to learn the provider) and asks for a lease; when the server
cannot be reached it keeps retrying with back-off while requests that need the missing piece
get 503 with the reason. Reports and refreshes run on a worker thread; the lease goes back on
stop with what was spent.
"""

from __future__ import annotations

import logging
import queue
import threading

from mitmproxy import ctx, exceptions

from iron_runtime.control import ControlServer, KeyCache, LeaseClient, LeaseError
from iron_runtime.errors import RouterError

logger = logging.getLogger("iron_runtime")

REFRESH_BELOW = 0.10  # ask for more when less than 10 % of the lease is left


class Control:
    def __init__(self) -> None:
        self.server: ControlServer | None = None
        self.keys: KeyCache | None = None
        self.leases: LeaseClient | None = None
        self.provider = "unknown"
        self.lease_error: str | None = None
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
            return
        self.server = ControlServer(url, ctx.options.iron_token, timeout=10)
        if ctx.options.iron_server_keys:
            self.keys = KeyCache(self.server, ttl=ctx.options.iron_cache_ttl)
            try:
                self.server.timeout = 3  # start-up must not hang on a slow server
                self.provider = self.keys.fetch_blocking().provider.value
            except RouterError as e:
                logger.warning("iron_runtime: provider key not available at start: %s", e.message)
            finally:
                self.server.timeout = 10
        if ctx.options.iron_lease:
            self.leases = LeaseClient(self.server)
            self.lease_error = "The budget lease has not been granted yet."
        self._worker = threading.Thread(target=self._work, name="iron-control", daemon=True)
        self._worker.start()

    # -- the worker: handshake with back-off, then reports and refreshes -----------------

    def _work(self) -> None:
        delay = 0.5
        while self.leases is not None and self.leases.lease is None:
            try:
                if self.keys is not None and self.keys.key is None:
                    self.provider = self.keys.fetch_blocking().provider.value
                provider = self.provider if self.provider != "unknown" else "openai"
                lease = self.leases.handshake(provider)
                self.lease_error = None
                self._budget().ledger.set_limit(lease.granted)
                logger.info("iron_runtime: budget lease %s granted", lease.lease_id)
            except Exception as e:  # an unreadable answer must not end the retries
                self.lease_error = e.message if isinstance(e, RouterError) else repr(e)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
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
