"""The two providers the router speaks to, and where they live."""

from __future__ import annotations

import os
from enum import StrEnum


class Provider(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


DEFAULT_UPSTREAMS: dict[Provider, str] = {
    Provider.OPENAI: "https://api.openai.com",
    Provider.ANTHROPIC: "https://api.anthropic.com",
}

UPSTREAM_ENV: dict[Provider, str] = {
    Provider.OPENAI: "IRON_OPENAI_BASE_URL",
    Provider.ANTHROPIC: "IRON_ANTHROPIC_BASE_URL",
}


def detect_provider(key: str) -> Provider:
    """The provider a key belongs to: ``sk-ant-`` keys are Anthropic's, anything else OpenAI's."""
    return Provider.ANTHROPIC if key.startswith("sk-ant-") else Provider.OPENAI


def default_upstream(provider: Provider) -> str:
    """The upstream base URL: the environment override if set, else the provider's API."""
    return os.environ.get(UPSTREAM_ENV[provider]) or DEFAULT_UPSTREAMS[provider]
