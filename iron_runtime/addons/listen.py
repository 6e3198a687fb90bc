"""The listen backlog: a burst of connections is queued by the kernel, not refused.

mitmproxy's TCP listeners come from ``asyncio.start_server`` with its default backlog of
100: when more clients connect at once than the proxy accepts in one turn of its event loop,
the kernel drops the extra SYNs and the clients retry them a second later (500 streams
opened at once: about half waited 1.04 s to connect). ``install()`` wraps mitmproxy's
``AsyncioServerInstance.listen`` once per process so that, after it has bound its sockets,
each TCP socket listens again with ``BACKLOG`` (a second ``listen()`` on a listening socket
only resizes its queue). Linux caps the queue at ``net.core.somaxconn``
(``/proc/sys/net/core/somaxconn``, 4096 by default since Linux 5.4). asyncio still accepts at
most 100 connections per turn of the loop, so a burst does not stall the flows in progress;
the rest wait, connected, in the kernel's queue.

Under ``mitmdump -s`` and ``mitmweb -s`` a script is loaded after mitmproxy has bound its
listeners; the ``Backlog`` addon's ``running`` hook resizes the queues of the sockets already
bound, and ``install()`` covers those bound later (a changed ``mode`` or port).
"""

from __future__ import annotations

import functools
import socket

from mitmproxy import ctx
from mitmproxy.proxy import mode_servers

BACKLOG = 4096

_original_listen = mode_servers.AsyncioServerInstance.listen


def effective_backlog(backlog: int = BACKLOG) -> int:
    """The queue length the kernel grants for ``backlog`` (Linux: capped at somaxconn)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return min(backlog, int(f.read()))
    except (OSError, ValueError):
        return backlog


def relisten(server: object, backlog: int = BACKLOG) -> None:
    """Give each TCP socket of an asyncio server a listen queue of ``backlog``."""
    for ts in getattr(server, "sockets", None) or ():
        if ts.type != socket.SOCK_STREAM:
            continue
        sock = socket.socket(fileno=ts.fileno())  # the same socket, not a copy
        try:
            sock.listen(backlog)
        finally:
            sock.detach()  # the server still owns the descriptor


@functools.wraps(_original_listen)
async def _listen(self, host, port):
    servers = await _original_listen(self, host, port)
    for server in servers:
        relisten(server)
    return servers


def install() -> None:
    """Patch mitmproxy's TCP listeners to use ``BACKLOG`` (once per process)."""
    if mode_servers.AsyncioServerInstance.listen is not _listen:
        setattr(mode_servers.AsyncioServerInstance, "listen", _listen)  # noqa: B010 - a patch


class Backlog:
    """Resizes the listen queues of the servers mitmproxy bound before this addon loaded."""

    def running(self) -> None:
        install()
        proxyserver = ctx.master.addons.get("proxyserver")
        for instance in getattr(proxyserver, "servers", None) or ():
            for server in getattr(instance, "_servers", None) or ():
                relisten(server)
