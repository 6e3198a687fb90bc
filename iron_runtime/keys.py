"""Provider keys held by the router, and how they are shown when they must be shown."""

from __future__ import annotations

from collections.abc import Mapping

from .providers import Provider, detect_provider


def mask_secret(secret: str) -> str:
    """A recognisable but useless form of a secret: ``sk-…wxyz``."""
    if len(secret) <= 12:
        return "…" if secret else ""
    return f"{secret[:3]}…{secret[-4:]}"


class ProviderKeys:
    """The real provider keys, by provider. Never printed: ``repr`` shows masked keys."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[Provider, str]) -> None:
        self._keys = {Provider(p): k for p, k in keys.items() if k}

    @classmethod
    def from_arguments(
        cls, provider_key: str | None = None, provider_keys: Mapping[str, str] | None = None
    ) -> ProviderKeys:
        """Keys from the launcher's arguments: ``provider_keys`` plus ``provider_key``."""
        keys: dict[Provider, str] = {}
        for name, key in (provider_keys or {}).items():
            try:
                provider = Provider(name)
            except ValueError:
                raise ValueError(
                    f"provider_keys: unknown provider {name!r}; use 'openai' or 'anthropic'"
                ) from None
            if key:
                keys[provider] = key
        if provider_key:
            keys[detect_provider(provider_key)] = provider_key
        return cls(keys)

    def get(self, provider: Provider) -> str | None:
        return self._keys.get(provider)

    def providers(self) -> list[Provider]:
        return [p for p in Provider if p in self._keys]

    def secrets(self) -> list[str]:
        return list(self._keys.values())

    def as_dict(self) -> dict[str, str]:
        return {p.value: k for p, k in self._keys.items()}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        shown = ", ".join(f"{p.value}={mask_secret(k)}" for p, k in self._keys.items())
        return f"ProviderKeys({shown})"


_CREDENTIAL_LINES = (b"authorization:", b"x-api-key:")


class KeyPlaceholders:
    """Stand-ins for real keys in flows, and the request-head rewrite that swaps them back
    as the head goes on the wire."""

    def __init__(self) -> None:
        self._placeholders: dict[str, str] = {}  # real key → placeholder
        self._keys: dict[bytes, bytes] = {}  # placeholder → real key (wire bytes)

    def placeholder(self, key: str) -> str:
        """The stand-in for ``key`` in flows: its masked form, made unique per key."""
        found = self._placeholders.get(key)
        if found is not None:
            return found
        base = mask_secret(key)
        placeholder, n = base, 1
        while placeholder.encode() in self._keys:
            n += 1
            placeholder = f"{base}~{n}"
        self._placeholders[key] = placeholder
        self._keys[placeholder.encode()] = key.encode()
        return placeholder

    def secrets(self) -> list[str]:
        return list(self._placeholders)

    def on_the_wire(self, head: bytes) -> bytes:
        """The request head with placeholders in its credential lines replaced by keys."""
        if not self._keys:
            return head
        lines = head.split(b"\r\n")
        changed = False
        for i, line in enumerate(lines):
            if not line[:14].lower().startswith(_CREDENTIAL_LINES):
                continue
            name, _, value = line.partition(b":")
            value = value.strip()
            scheme = b""
            if value[:7].lower() == b"bearer ":
                scheme, value = value[:7], value[7:].strip()
            key = self._keys.get(value)
            if key is not None:
                lines[i] = name + b": " + scheme + key
                changed = True
        return b"\r\n".join(lines) if changed else head
