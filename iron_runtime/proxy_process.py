"""The router process: mitmproxy's lean master with the iron addons, run by ``LlmRouter``.

Protocol with the launcher: the launcher writes one JSON line on stdin with the mitmproxy
options (secrets included, so they never show in ``ps``), then keeps stdin open. This
process answers one JSON line on stdout, ``{"port": N}`` once it listens (and, with a
control server, once the first key fetch and lease handshake have ended, at most
``STARTUP_WAIT`` seconds later) or ``{"error": ...}``.
It shuts down cleanly when stdin reaches end of file, which happens when the launcher calls
``stop()`` and also when the launcher's process dies for any reason.

Only ``Core``, ``Proxyserver``, ``NextLayer`` and ``TlsConfig`` are loaded beside the iron
addons: DumpMaster's thirty-odd default addons cost a third of the throughput. The other
addon modules are not even imported (``addons/lean.py``), the events of this fixed chain
are dispatched from a table of their handlers (``addons/dispatch.py``), and what start-up
made is frozen out of the garbage collector's reach (``freeze_heap``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

logger = logging.getLogger("iron_runtime")


class Lifecycle:
    """Reports the bound port to the launcher once the router is ready, and stops the proxy
    when the launcher goes."""

    def __init__(
        self,
        master: Any,
        proxyserver: Any,
        out: Any,
        services: Any = None,
        freeze: bool = False,
    ) -> None:
        self.master = master
        self.services = services
        self.proxyserver = proxyserver
        self.out = out
        self.freeze = freeze  # freeze_heap() before saying ready
        self.stopping = False

    def _say(self, message: dict) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    async def running(self) -> None:
        addrs = self.proxyserver.listen_addrs()
        if not addrs:
            self._say({"error": "mitmproxy did not bind its listening socket (see its log above)"})
            self.master.shutdown()
            return
        link = self.services.link if self.services is not None else None
        if link is not None:
            # With a control server: ready once the first key fetch and lease handshake have
            # ended (bounded), so that the first request never meets a lease still on its way.
            await link.ready()
        provider = link.provider if link is not None else "unknown"
        if self.freeze:
            freeze_heap()
        self._say({"port": addrs[0][1], "pid": os.getpid(), "provider": provider})
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._begin_stop)
        threading.Thread(target=self._watch_stdin, args=(loop,), daemon=True).start()
        threading.Thread(target=self._watch_parent, args=(loop,), daemon=True).start()

    def _watch_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(self._begin_stop)

    def _watch_parent(self, loop: asyncio.AbstractEventLoop) -> None:
        # Backstop for a launcher that died while a forked child still holds our stdin pipe.
        parent = os.getppid()
        stop = threading.Event()
        while not stop.wait(1.0):
            if os.getppid() != parent:
                loop.call_soon_threadsafe(self._begin_stop)
                return

    def _begin_stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            asyncio.get_running_loop().create_task(self._stop())

    async def _stop(self) -> None:
        try:
            await self.proxyserver.servers.update([])  # close the listening socket first
            await self._end_connections(grace=2.0)
        finally:
            self.master.shutdown()

    async def _end_connections(self, grace: float) -> None:
        """End the clients' connections, so each winds down through mitmproxy's own hooks."""
        connections = self.proxyserver.connections
        for handler in list(connections.values()):
            io = handler.transports.get(handler.client)
            if io is not None and io.handler is not None:
                io.handler.cancel("router stopping")
        deadline = asyncio.get_running_loop().time() + grace
        while connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)


def freeze_heap() -> None:
    """Move what starting up made (modules, mitmproxy's options and addons, pydantic's
    schemas: about 70,000 objects, alive as long as the process) out of the garbage
    collector's reach. mitmproxy frees each flow through the collector (its objects hold
    cycles), so collections run every few requests; the older ones no longer walk those
    objects: about 8 % less CPU per request and shorter pauses. Objects made later are
    collected as before. No collection runs first: it would add 30 ms to the start for
    the score of objects it finds."""
    gc.freeze()


class AddonGroup:
    """The iron addons as one entry of mitmproxy's addon chain (as a ``-s`` script is):
    mitmproxy wraps every chain entry in its own error guard and coroutine for every event
    of every flow, so five entries cost measurably more than one with five children."""

    def __init__(self, addons: list, *more: object) -> None:
        self.addons = [*addons, *more]


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("iron-runtime[%(process)d] %(levelname)s %(message)s"))
    level = os.environ.get("IRON_LOG_LEVEL", "WARNING").upper()
    for name in ("mitmproxy", "iron_runtime"):
        log = logging.getLogger(name)
        log.addHandler(handler)
        log.setLevel(level)
        log.propagate = False


async def serve(
    options: dict[str, Any], out: Any, bare: bool = False, patched: bool | None = None
) -> None:
    """Run the proxy until stopped. ``bare`` leaves the iron addons out (for benchmarks) and,
    unless ``patched``, the router's changes to mitmproxy (lean imports, dispatch table)."""
    patched = not bare if patched is None else patched
    if patched:  # before mitmproxy is imported: only the addons used here (addons/lean.py)
        from iron_runtime.addons import lean

        lean.import_addons_on_demand()
        lean.install()
    from mitmproxy import master as mitm_master
    from mitmproxy import options as mitm_options
    from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig

    opts = mitm_options.Options()
    master = mitm_master.Master(opts, event_loop=asyncio.get_running_loop())
    ps = proxyserver.Proxyserver()
    iron: list[Any] = []
    services = None
    if not bare:  # bare: no intake, egress or backlog patches either (they are the router's)
        from iron_runtime.addons.iron import make_addons
        from iron_runtime.pipeline import Services

        services = Services()
        iron = make_addons(services)
    master.addons.add(
        core.Core(),
        ps,
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        AddonGroup(iron, Lifecycle(master, ps, out, services, freeze=patched)),
    )
    if patched:
        from iron_runtime.addons import dispatch

        dispatch.install(master.addons)
    # lazy: never connect to the reverse target before the router has chosen the upstream.
    opts.update(connection_strategy="lazy", **options)
    await master.run()


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the launcher decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _configure_logging()
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write on the launcher's pipe
    line = sys.stdin.buffer.readline()
    try:
        options = json.loads(line)
    except ValueError:
        out.write(json.dumps({"error": "launcher sent no configuration"}) + "\n")
        out.flush()
        raise SystemExit(2) from None
    try:
        bare = "--bare" in sys.argv[1:]
        asyncio.run(serve(options, out, bare, patched=not bare or "--patched" in sys.argv[1:]))
    except Exception as e:
        logger.exception("router process failed")
        try:
            out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
            out.flush()
        except OSError:
            pass
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
