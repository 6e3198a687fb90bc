"""Upstream base URLs, parsed once."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Upstream:
    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/prefix", never ending in "/" or "/v1"

    @classmethod
    def parse(cls, url: str) -> Upstream:
        """Parse ``https://api.openai.com`` (a trailing ``/v1`` is accepted and ignored,
        since request paths carry their own ``/v1``)."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host[:port][/path], got {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"upstream URL has an invalid port: {url!r}") from None
        base = parts.path.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        return cls(parts.scheme, parts.hostname, port, base)

    @property
    def netloc(self) -> str:
        """``host[:port]`` as the Host header shows it (port only when not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.base_path}"
