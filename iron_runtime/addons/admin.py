"""Admin endpoint of the launcher: ``/_iron/...`` on the router's own port, guarded by a
random secret that only the launching process holds (never the agent's IC token).

Without the secret every ``/_iron/`` path answers 404, as if it did not exist.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import time
from typing import Any

from mitmproxy import ctx, http

from iron_runtime import errors, settings
from iron_runtime.exchange import Exchange
from iron_runtime.headers import REQUEST_ID
from iron_runtime.pipeline import Services
from iron_runtime.settings import Loader
from iron_runtime.wire import new_request_id

from ._glue import answer_error, fail_closed, forget_credentials

ADMIN_PREFIX = "/_iron/"
ADMIN_HEADER = "x-iron-admin-secret"


class Admin:
    def __init__(self, services: Services | None = None) -> None:
        self.s = services or Services()
        self.secret = b""
        self.started = time.time()

    def load(self, loader: Loader) -> None:
        settings.declare(loader, "admin")

    def configure(self, updated: set[str]) -> None:
        if "iron_admin_secret" in updated:
            self.secret = ctx.options.iron_admin_secret.encode()

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or not flow.request.path.startswith(ADMIN_PREFIX):
            return
        x = self.s.exchanges.start(flow, new_request_id)
        x.local = "admin"
        presented = flow.request.headers.get(ADMIN_HEADER, "").encode()
        if not self.secret or not hmac.compare_digest(presented, self.secret):
            return answer_error(flow, x, errors.not_found("No such endpoint."))
        command = flow.request.path[len(ADMIN_PREFIX) :].partition("?")[0]
        if command == "status" and flow.request.method == "GET":
            return self._reply(flow, x, self.status())
        if command == "stats" and flow.request.method == "GET":
            return self._reply(flow, x, self.s.recorder.stats())
        if command == "budget" and flow.request.method == "POST":
            try:
                limit = json.loads(flow.request.content or b"{}").get("limit_usd")
                if limit is not None and (
                    isinstance(limit, bool)
                    or not isinstance(limit, (int, float))
                    or not 0 <= limit < math.inf
                ):
                    raise ValueError("limit_usd must be a finite number >= 0 or null")
            except (ValueError, AttributeError) as e:
                return answer_error(flow, x, errors.bad_request(f"budget: {e}"))
            self.s.set_budget_usd(limit)
            return self._reply(flow, x, self.status())
        return answer_error(flow, x, errors.not_found(f"Unknown admin command {command!r}."))

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "budget": self.s.ledger.report(),
        }

    @staticmethod
    def _reply(flow: http.HTTPFlow, x: Exchange, body: dict[str, Any]) -> None:
        flow.response = http.Response.make(
            200, json.dumps(body), {"content-type": "application/json", REQUEST_ID: x.request_id}
        )
        forget_credentials(flow)
