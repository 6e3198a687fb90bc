"""Control addon: the options of the Iron Cage control server, and the start and stop of the
router's link to it (``iron_runtime.control.ServerLink``: the agent's provider key in server
mode, the budget lease, reports and refreshes)."""

from __future__ import annotations

from mitmproxy import ctx, exceptions

from iron_runtime import settings
from iron_runtime.pipeline import Services
from iron_runtime.settings import Loader


class Control:
    def __init__(self, services: Services | None = None) -> None:
        self.s = services or Services()

    def load(self, loader: Loader) -> None:
        settings.declare(loader, "control")

    def configure(self, updated: set[str]) -> None:
        if "iron_cache_ttl" in updated and ctx.options.iron_cache_ttl < 0:
            raise exceptions.OptionsError("iron_cache_ttl must be >= 0")
        if "iron_server_url" in updated and ctx.options.iron_server_url:
            url = ctx.options.iron_server_url
            if not url.startswith(("http://", "https://")):
                raise exceptions.OptionsError(f"iron_server_url must be http(s)://..., got {url}")

    def running(self) -> None:
        opts = ctx.options
        self.s.link.start(
            opts.iron_server_url,
            opts.iron_token,
            server_keys=opts.iron_server_keys,
            lease=opts.iron_lease,
            key_ttl=opts.iron_cache_ttl,
        )

    def done(self) -> None:
        self.s.link.stop()
