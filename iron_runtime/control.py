"""Client of the Iron Cage control server: provider keys and budget leases.

The wire formats are the original server's. Calls are blocking (``requests`` on a keep-alive
session) and are made from worker threads, never on the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from .errors import LeaseError, RouterError, key_unavailable
from .providers import Provider


@dataclass(frozen=True, slots=True)
class ProviderKey:
    key: str
    provider: Provider
    base_url: str | None = None

    def __repr__(self) -> str:  # never print the key
        return f"ProviderKey(provider={self.provider.value}, base_url={self.base_url!r})"


class ControlServer:
    def __init__(self, url: str, ic_token: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.ic_token = ic_token
        self.timeout = timeout
        self.session = requests.Session()

    def post(
        self, path: str, body: dict[str, Any], auth: bool = False, timeout: float | None = None
    ) -> requests.Response:
        headers = {"authorization": f"Bearer {self.ic_token}"} if auth else {}
        # requests' connection pool is thread-safe: a slow call on the worker thread must not
        # hold up the lease return at shutdown
        return self.session.post(
            self.url + path, json=body, headers=headers, timeout=timeout or self.timeout
        )

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
    except requests.RequestException as e:
        raise key_unavailable(
            503,
            f"The Iron Cage server at {server.url} could not be "
            f"reached for the provider key ({type(e).__name__}).",
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
        except requests.RequestException as e:
            raise LeaseError(
                f"The Iron Cage server at {self.server.url} could not be reached "
                f"for the budget lease ({type(e).__name__})."
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
