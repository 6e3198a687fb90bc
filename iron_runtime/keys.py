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
