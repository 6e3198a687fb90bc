"""The router's listening socket queues a burst of connections: its listen backlog is
``listen.BACKLOG`` (capped by the kernel's somaxconn), not asyncio's default of 100.

The backlog is read from ``ss -ltn`` (for a listening socket, Send-Q is the backlog); no
timing is asserted.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iron_runtime import LlmRouter
from iron_runtime.addons import listen

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = Path(sys.executable).parent / "mitmdump"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not shutil.which("ss"),
    reason="reads listen backlogs with Linux's ss",
)

EXPECTED = listen.effective_backlog()


def backlog(port: int) -> int | None:
    """The listen backlog of the TCP socket listening on 127.0.0.1:``port``, if any."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3].endswith(f":{port}"):
            return int(fields[2])
    return None


def wait_for_backlog(port: int, want: int, proc: subprocess.Popen, timeout: float = 15) -> int:
    end = time.monotonic() + timeout
    seen = None
    while time.monotonic() < end and proc.poll() is None:
        seen = backlog(port)
        if seen == want:
            break
        time.sleep(0.1)
    return seen


def test_the_backlog_asked_for_is_what_the_kernel_grants():
    assert 100 < EXPECTED <= listen.BACKLOG
    try:
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    except OSError:
        return
    assert EXPECTED == min(listen.BACKLOG, somaxconn)


def test_relisten_resizes_an_asyncio_servers_queue():
    async def main() -> tuple[int | None, int | None]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            before = backlog(port)
            listen.relisten(server, 1000)
            listen.relisten(server, 1000)  # harmless twice
            return before, backlog(port)
        finally:
            server.close()
            await server.wait_closed()

    before, after = asyncio.run(main())
    assert before == 100  # asyncio's default, what mitmproxy gets
    assert after == listen.effective_backlog(1000)


def test_install_is_idempotent():
    from mitmproxy.proxy import mode_servers

    listen.install()
    patched = mode_servers.AsyncioServerInstance.listen
    listen.install()
    assert mode_servers.AsyncioServerInstance.listen is patched
    assert patched.__wrapped__ is listen._original_listen


def test_the_routers_listener_has_the_backlog():
    """``LlmRouter``'s process: ``make_addons()`` calls ``listen.install()`` before mitmproxy
    binds its socket."""
    with LlmRouter(provider_key="sk-backlog-test-0123456789") as router:
        assert backlog(router.port) == EXPECTED


def _mitmdump(script: Path, port: int, tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(MITMDUMP),
            "-q",
            "-s",
            str(script),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--set",
            f"confdir={tmp_path / 'certs'}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("script", ["backlog-only", "iron"])
def test_a_mitmdump_script_resizes_the_socket_bound_before_it_loaded(script, tmp_path):
    """mitmdump binds its listener before it loads ``-s`` scripts: the ``Backlog`` addon's
    ``running`` hook resizes it. ``iron`` is the checkout's ``addons/iron.py``."""
    if script == "iron":
        path = ROOT / "addons" / "iron.py"
    else:
        path = tmp_path / "backlog.py"
        path.write_text(
            "from iron_runtime.addons import listen\n"
            "listen.install()\n"
            "addons = [listen.Backlog()]\n"
        )
    port = free_port()
    proc = _mitmdump(path, port, tmp_path)
    try:
        seen = wait_for_backlog(port, EXPECTED, proc)
        assert seen == EXPECTED, proc.stdout.read() if proc.poll() is not None else seen
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
