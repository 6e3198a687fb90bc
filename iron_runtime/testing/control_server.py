"""Emulator of the Iron Cage control server: provider keys, budget leases shared
by every router of an agent, analytics ingestion with de-duplication, token checks, and
switchable faults (down, 5xx, slow, flapping).

Agents are registered with ``add_agent(ic_token, provider, provider_key, budget_micros)``.
Like every emulator it serves many connections at once on its event loop; ``latency`` makes
each answer wait (concurrent requests wait together, as on a real server) and
``max_in_flight`` tells how many requests it ever answered at once.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from .emulator import Emulator, RecordedRequest, Reply

DEFAULT_GRANT = 10_000_000  # µ$, the original server's default handshake grant


@dataclass
class Agent:
    ic_token: str
    provider: str
    provider_key: str
    budget: int  # µ$ the agent may spend in all
    base_url: str | None = None
    encrypt: bool = False  # answer {"ip_token": ...} instead of {"provider_key": ...}
    granted: int = 0  # µ$ held by open leases
    spent: int = 0  # µ$ spent, from returned leases


@dataclass
class Lease:
    lease_id: str
    agent: Agent
    granted: int
    reported: int = 0
    open: bool = True
    reports: list[dict[str, Any]] = field(default_factory=list)
    returned_spent: int = 0  # µ$ spent, as the lease's return reported it


def encrypt_ip_token(key: bytes, plaintext: str) -> str:
    """``AES256:{iv}:{ciphertext}:{tag}``, base64 parts, AES-256-GCM (what the server sends)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    iv = os.urandom(12)
    sealed = AESGCM(key).encrypt(iv, plaintext.encode(), None)
    ct, tag = sealed[:-16], sealed[-16:]
    b64 = base64.b64encode
    return f"AES256:{b64(iv).decode()}:{b64(ct).decode()}:{b64(tag).decode()}"


def _err(status: int, error: str, code: str) -> Reply:
    return Reply(status, {"error": error, "code": code})


class ControlServerEmulator(Emulator):
    name = "control"

    def __init__(self, ip_token_key: bytes | None = None, **kw: Any) -> None:
        super().__init__(api_key="", **kw)
        self.agents: dict[str, Agent] = {}
        self.leases: dict[str, Lease] = {}
        self.events: dict[str, dict[str, Any]] = {}  # event_id → event, de-duplicated
        self.event_posts = 0
        self.key_fetches = 0
        self.ip_token_key = ip_token_key or os.urandom(32)
        self.fail_every: int | None = None  # answer 500 to every n-th call (flapping)
        self.default_grant = DEFAULT_GRANT  # µ$ a lease gets when the router asks no amount
        self.fail_status = 500
        self._calls = itertools.count(1)
        self._lock = threading.Lock()

    def add_agent(
        self, ic_token: str, provider: str, provider_key: str, budget_micros: int, **kw: Any
    ) -> Agent:
        agent = Agent(ic_token, provider, provider_key, budget_micros, **kw)
        self.agents[ic_token] = agent
        return agent

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.agents.clear()
            self.leases.clear()
            self.events.clear()
            self.event_posts = self.key_fetches = 0
            self.fail_every = None
            self.default_grant = DEFAULT_GRANT

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Reply:
        fault = self.next_fault()
        n = next(self._calls)
        if self.fail_every and n % self.fail_every == 0:
            return Reply(
                self.fail_status, {"error": "flapping", "code": "INTERNAL_ERROR"}, fault=fault
            )
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return _err(400, "invalid JSON", "INVALID_REQUEST")
        if not isinstance(body, dict):
            return _err(400, "body must be an object", "INVALID_REQUEST")
        path = request.path.partition("?")[0]
        routes = {
            "/api/v1/agents/provider-key": self._provider_key,
            "/api/v1/budget/handshake": self._handshake,
            "/api/v1/budget/report": self._report,
            "/api/v1/budget/refresh": self._refresh,
            "/api/v1/budget/return": self._return,
            "/api/v1/analytics/events": self._event,
        }
        route = routes.get(path)
        if route is None or request.method != "POST":
            return _err(404, "not found", "NOT_FOUND")
        with self._lock:
            reply = route(request, body)
        reply.fault = fault
        return reply

    def _agent(self, token: Any) -> Agent | None:
        return self.agents.get(token) if isinstance(token, str) else None

    def _lease(self, lease_id: Any) -> Lease | None:
        return self.leases.get(lease_id) if isinstance(lease_id, str) else None

    # -- keys ----------------------------------------------------------------------------

    def _provider_key(self, request: RecordedRequest, body: dict[str, Any]) -> Reply:
        self.key_fetches += 1
        token = body.get("ic_token")
        if not isinstance(token, str) or not token or len(token) > 2000:
            return _err(400, "ic_token is required", "INVALID_TOKEN")
        agent = self._agent(token)
        if agent is None:
            return _err(401, "Invalid IC Token", "UNAUTHORIZED")
        if not agent.provider_key:
            return _err(403, "Agent has no provider assigned", "NO_PROVIDER_ASSIGNED")
        answer: dict[str, Any] = {"provider": agent.provider}
        if agent.encrypt:
            answer["ip_token"] = encrypt_ip_token(self.ip_token_key, agent.provider_key)
        else:
            answer["provider_key"] = agent.provider_key
        if agent.base_url:
            answer["base_url"] = agent.base_url
        return Reply(200, answer)

    # -- budget leases -------------------------------------------------------------------

    def remaining(self, agent: Agent) -> int:
        return agent.budget - agent.spent - agent.granted

    def _handshake(self, request: RecordedRequest, body: dict[str, Any]) -> Reply:
        token = body.get("ic_token")
        auth = request.headers.get("authorization", "")
        agent = self._agent(token)
        if agent is None or auth != f"Bearer {token}":
            return _err(401, "Invalid IC Token", "UNAUTHORIZED")
        requested = body.get("requested_budget") or self.default_grant
        grant = min(int(requested), self.remaining(agent))
        if grant <= 0:
            return _err(403, "Budget limit exceeded", "BUDGET_EXCEEDED")
        lease = Lease(f"lease_{uuid.uuid4()}", agent, grant)
        self.leases[lease.lease_id] = lease
        agent.granted += grant
        return Reply(
            200,
            {
                "lease_id": lease.lease_id,
                "budget_granted": grant,
                "budget_remaining": self.remaining(agent),
                "expires_at": None,
            },
        )

    def _report(self, request: RecordedRequest, body: dict[str, Any]) -> Reply:
        lease = self._lease(body.get("lease_id"))
        if lease is None:
            return _err(404, "Lease not found", "LEASE_NOT_FOUND")
        cost = body.get("cost_microdollars")
        if not isinstance(cost, int) or cost < 0:
            return _err(400, "cost_microdollars must be a non-negative integer", "INVALID_REQUEST")
        lease.reported += cost
        lease.reports.append(body)
        return Reply(200, {"success": True, "budget_remaining": self.remaining(lease.agent)})

    def _refresh(self, request: RecordedRequest, body: dict[str, Any]) -> Reply:
        agent = self._agent(body.get("ic_token"))
        lease = self._lease(body.get("current_lease_id"))
        if agent is None or lease is None or lease.agent is not agent:
            return _err(401, "Invalid IC Token or lease", "UNAUTHORIZED")
        if not lease.open:
            return _err(400, "Lease is not active", "LEASE_CLOSED")
        requested = body.get("requested_budget") or DEFAULT_GRANT
        grant = min(int(requested), self.remaining(agent))
        if grant <= 0:
            return Reply(
                200,
                {
                    "status": "denied",
                    "reason": "agent budget exhausted",
                    "budget_remaining": self.remaining(agent),
                },
            )
        lease.granted += grant
        agent.granted += grant
        return Reply(
            200,
            {
                "status": "approved",
                "budget_granted": grant,
                "lease_id": lease.lease_id,
                "budget_remaining": self.remaining(agent),
            },
        )

    def _return(self, request: RecordedRequest, body: dict[str, Any]) -> Reply:
        lease = self._lease(body.get("lease_id"))
        if lease is None:
            return _err(404, "Lease not found", "LEASE_NOT_FOUND")
        if not lease.open:
            return _err(400, "Lease is not active", "LEASE_CLOSED")
        spent = body.get("spent_microdollars")
        if not isinstance(spent, int) or spent < 0:
            return _err(400, "spent_microdollars must be a non-negative integer", "INVALID_REQUEST")
        spent = min(spent, lease.granted)
        lease.open = False
        lease.agent.granted -= lease.granted
        lease.agent.spent += spent
        lease.returned_spent = spent
        return Reply(200, {"success": True, "returned": lease.granted - spent})

    # -- analytics -----------------------------------------------------------------------

    def _event(self, request: RecordedRequest, body: dict[str, Any]) -> Reply:
        self.event_posts += 1
        if self._agent(body.get("ic_token")) is None:
            return _err(401, "Invalid IC Token", "UNAUTHORIZED")
        event_id = body.get("event_id")
        kind = body.get("event_type")
        if not isinstance(event_id, str) or kind not in (
            "llm_request_completed",
            "llm_request_failed",
        ):
            return _err(400, "event_id and a known event_type are required", "INVALID_EVENT")
        if body.get("provider") not in ("openai", "anthropic", "unknown"):
            return _err(400, "unknown provider", "INVALID_EVENT")
        if kind == "llm_request_completed" and not all(
            isinstance(body.get(k), int) for k in ("input_tokens", "output_tokens")
        ):
            return _err(400, "completed events need token counts", "INVALID_EVENT")
        if event_id in self.events:
            return Reply(200, {"event_id": event_id, "status": "duplicate"})
        self.events[event_id] = body
        return Reply(202, {"event_id": event_id, "status": "accepted"})
