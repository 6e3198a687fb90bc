"""``LlmRouter``: starts the router in a child process and controls it.

mitmproxy keeps process-wide state (``ctx.master``, ``ctx.options``), so each router gets a
process of its own; that also keeps the proxy off the agent's GIL. The child learns its
configuration over a pipe, reports its port, and exits when the pipe closes: on ``stop()``,
when the router is garbage-collected, at interpreter exit, or when this process dies.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import selectors
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .budget import usd_to_micros
from .keys import ProviderKeys
from .providers import Provider, default_upstream, detect_provider
from .upstreams import Upstream

MISSING_ARGUMENTS = (
    "Either 'provider_key' or both 'api_key' and 'server_url' must be provided. "
    "Use provider_key + api_key + server_url for direct mode with analytics sync "
    "(or provider_keys={'openai': ..., 'anthropic': ...} to serve both providers)."
)
STOPPED = "Router is stopped"
DEFAULT_BODY_LIMIT = 10 * 1024 * 1024


def default_state_dir() -> Path:
    """``$IRON_STATE_DIR``, else ``$XDG_STATE_HOME/iron-runtime``, else ``~/.local/state/...``."""
    if env := os.environ.get("IRON_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "iron-runtime"


class RouterStartError(RuntimeError):
    """The router process could not start (port taken, bad option, ...)."""


def stop_proxy_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Close the child's stdin (its signal to stop cleanly) and wait; force it if it hangs."""
    if proc.poll() is None:
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream:
                stream.close()
        except OSError:
            pass


def _read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    """The first line the child writes on stdout, within ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RouterStartError(f"router process did not start within {timeout:.0f} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RouterStartError(
                    f"router process exited during start-up (code {proc.wait()}); "
                    "its log is on stderr"
                )
            buf += chunk
    return buf.partition(b"\n")[0]


def start_proxy_process(
    options: Mapping[str, Any],
    *,
    bare: bool = False,
    patched: bool = False,
    timeout: float = 30.0,
) -> tuple[subprocess.Popen, dict[str, Any]]:
    """Start a router process with these mitmproxy options; returns it and its start-up
    report (``port``, ``pid``, ``provider``).

    ``bare`` starts the same master without the iron addons, mitmproxy as it comes (the
    benchmark's baseline); with ``patched`` too, it has the router process's own changes to
    mitmproxy and its garbage collector (``addons/lean.py``, ``addons/dispatch.py``,
    ``proxy_process.freeze_heap``) but still no iron addon.
    Stop it with ``stop_proxy_process``.
    """
    flags = (["--bare"] + (["--patched"] if patched else [])) if bare else []
    cmd = [sys.executable, "-m", "iron_runtime.proxy_process", *flags]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(dict(options)).encode() + b"\n")
        proc.stdin.flush()
        reply = json.loads(_read_line(proc, timeout))
    except BaseException:
        stop_proxy_process(proc)
        raise
    if "error" in reply:
        stop_proxy_process(proc)
        raise RouterStartError(f"router failed to start: {reply['error']}")
    return proc, reply


class LlmRouter:
    """A local LLM router (drop-in for ``iron_cage.LlmRouter``).

    Point an OpenAI SDK at ``base_url`` and an Anthropic SDK at ``base_url`` too, both with
    ``api_key=router.api_key``; the router injects the real provider key.

    With a ``server_url``, the constructor returns once the first provider-key fetch and budget
    handshake have succeeded or failed, as the original's did, and at most 5 s after the proxy
    listens when the server does not answer (``STARTUP_WAIT``); a request that needs the lease
    while that handshake is still in flight waits for it.
    """

    def __init__(
        self,
        api_key: str | None = None,
        server_url: str | None = None,
        cache_ttl_seconds: int = 300,
        budget: float | None = None,
        provider_key: str | None = None,
        *,
        provider_keys: Mapping[str, str] | None = None,
        upstreams: Mapping[str, str] | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        state_dir: str | os.PathLike[str] | None = None,
        pricing: str | os.PathLike[str] | None = None,
        sync_interval: float = 5.0,
        body_limit: int = DEFAULT_BODY_LIMIT,
        startup_timeout: float = 30.0,
    ) -> None:
        if provider_key is None and not provider_keys and (api_key is None or server_url is None):
            raise ValueError(MISSING_ARGUMENTS)
        if budget is not None:
            usd_to_micros(budget)  # ValueError for a negative or non-numeric budget
        if cache_ttl_seconds < 0:
            raise ValueError("cache_ttl_seconds must be >= 0")
        if not float(sync_interval) > 0:
            raise ValueError(f"sync_interval must be positive, got {sync_interval}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {port}")
        self._api_key = api_key if api_key is not None else "direct"
        self._server_url = server_url or ""
        keys = ProviderKeys.from_arguments(provider_key, provider_keys)
        if provider_key:
            self._provider = detect_provider(provider_key).value
        elif keys:
            self._provider = keys.providers()[0].value
        else:
            self._provider = "unknown"

        resolved: dict[Provider, Upstream] = {}
        for provider in Provider:
            url = (upstreams or {}).get(provider.value) or default_upstream(provider)
            resolved[provider] = Upstream.parse(url)
        unknown = set(upstreams or {}) - {p.value for p in Provider}
        if unknown:
            raise ValueError(f"upstreams: unknown provider(s) {sorted(unknown)}")

        self._state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        (self._state_dir / "certs").mkdir(parents=True, exist_ok=True)
        self._admin_secret = secrets.token_urlsafe(32)
        self._host = host
        options: dict[str, Any] = {
            "mode": [f"reverse:{resolved[Provider.OPENAI].url}"],
            "listen_host": host,
            "listen_port": port,
            "confdir": str(self._state_dir / "certs"),
            "iron_token": self._api_key,
            "iron_openai_key": keys.get(Provider.OPENAI) or "",
            "iron_anthropic_key": keys.get(Provider.ANTHROPIC) or "",
            "iron_openai_upstream": resolved[Provider.OPENAI].url,
            "iron_anthropic_upstream": resolved[Provider.ANTHROPIC].url,
            "iron_admin_secret": self._admin_secret,
            "iron_body_limit": body_limit,
            "iron_budget": "" if budget is None else repr(float(budget)),
            "iron_pricing": str(pricing) if pricing else "",
            "iron_state_dir": str(self._state_dir),
            "iron_sync_interval": repr(float(sync_interval)),  # a str option (mitmdump --set)
        }
        if self._server_url:
            options["iron_server_url"] = self._server_url
            options["iron_cache_ttl"] = int(cache_ttl_seconds)
            options["iron_server_keys"] = not keys  # server mode: the key comes from there
            options["iron_lease"] = budget is None  # the budget comes from a lease

        started = time.perf_counter()
        self._proc, reply = start_proxy_process(options, timeout=startup_timeout)
        self._port: int = reply["port"]
        if not keys:
            self._provider = reply.get("provider") or "unknown"
        self._finalizer = weakref.finalize(self, stop_proxy_process, self._proc)
        self.startup_seconds = time.perf_counter() - started
        self._stopped = False

    # -- properties of the original ------------------------------------------------------

    def _live(self) -> None:
        if self._stopped:
            raise RuntimeError(STOPPED)

    @property
    def base_url(self) -> str:
        self._live()
        host = self._host
        if host in ("", "0.0.0.0", "::", "localhost"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}/v1"

    @property
    def api_key(self) -> str:
        self._live()
        return self._api_key

    @property
    def port(self) -> int:
        self._live()
        return self._port

    @property
    def provider(self) -> str:
        self._live()
        return self._provider

    @property
    def is_running(self) -> bool:
        return not self._stopped and self._proc.poll() is None

    def _budget(self) -> dict | None:
        if self._stopped:
            return None
        return self._admin("GET", "status")["budget"]

    @property
    def budget(self) -> float | None:
        """The limit in USD; None when unlimited (or once stopped)."""
        b = self._budget()
        return None if b is None or b["limit_micros"] is None else b["limit_micros"] / 1e6

    @property
    def budget_status(self) -> tuple[float, float] | None:
        """``(spent_usd, limit_usd)``, spent excluding requests still in flight; None when
        unlimited (or once stopped)."""
        b = self._budget()
        if b is None or b["limit_micros"] is None:
            return None
        return b["spent_micros"] / 1e6, b["limit_micros"] / 1e6

    def total_spent(self) -> float:
        """USD spent so far (0.0 once stopped)."""
        b = self._budget()
        return 0.0 if b is None else b["spent_micros"] / 1e6

    def stats(self) -> dict:
        """Requests, tokens and cost: totals, by model, by provider, the most recent events
        and the outbox's sync state (read from the analytics outbox)."""
        self._live()
        return self._admin("GET", "stats")

    def set_budget(self, amount_usd: float | None) -> None:
        """Change the limit at once (None: unlimited); requests refused before may now pass.
        Does nothing once stopped."""
        if self._stopped:
            return
        if amount_usd is not None:
            usd_to_micros(amount_usd)  # validates
        self._admin("POST", "budget", {"limit_usd": amount_usd})

    def stop(self) -> None:
        """Stop the router process and wait for it; calling it again does nothing."""
        if getattr(self, "_stopped", True):
            return
        self._stopped = True
        self._finalizer()

    def __enter__(self) -> LlmRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._stopped:
            return "<LlmRouter stopped>"
        return f"<LlmRouter {self.base_url} provider={self._provider}>"

    # -- admin channel --------------------------------------------------------------------

    def _admin(self, method: str, command: str, body: dict | None = None) -> dict:
        self._live()
        conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=10)
        try:
            conn.request(
                method,
                f"/_iron/{command}",
                body=json.dumps(body) if body is not None else None,
                headers={
                    "x-iron-admin-secret": self._admin_secret,
                    "content-type": "application/json",
                },
            )
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"router admin {command} failed: {resp.status} {data}")
        return data

    @property
    def pid(self) -> int:
        """Process id of the router process."""
        return self._proc.pid
