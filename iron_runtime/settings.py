"""Every ``iron_*`` option in one table: name, type, default, help, and the addon that reads
it. Addons declare their options from here in ``load``; the README's option table lists the
same names (a test keeps the two equal).

Types are the ones mitmproxy parses from ``--set`` and mitmweb's options page: str, int and
bool. Durations in seconds are strings holding a number (``"0.5"``), parsed by the addon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

DEFAULT_BODY_LIMIT = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    type: type
    default: str | int | bool
    help: str
    owner: str  # the addon that declares and reads it


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "iron_token",
        str,
        "direct",
        "Token agents present to the router (Authorization: Bearer or x-api-key).",
        "router",
    ),
    Setting(
        "iron_provider_key",
        str,
        "",
        "Real provider key; its provider is detected (sk-ant-... is Anthropic). "
        "'env:NAME' reads it from an environment variable.",
        "router",
    ),
    Setting("iron_openai_key", str, "", "Real OpenAI key (or env:NAME).", "router"),
    Setting("iron_anthropic_key", str, "", "Real Anthropic key (or env:NAME).", "router"),
    Setting(
        "iron_openai_upstream",
        str,
        "",
        "OpenAI base URL (default: $IRON_OPENAI_BASE_URL or https://api.openai.com).",
        "router",
    ),
    Setting(
        "iron_anthropic_upstream",
        str,
        "",
        "Anthropic base URL (default: $IRON_ANTHROPIC_BASE_URL or https://api.anthropic.com).",
        "router",
    ),
    Setting(
        "iron_body_limit",
        int,
        DEFAULT_BODY_LIMIT,
        "Largest request body accepted, in bytes.",
        "router",
    ),
    Setting(
        "iron_budget",
        str,
        "",
        "Budget in USD for everything this router forwards (empty: unlimited).",
        "budget",
    ),
    Setting(
        "iron_pricing",
        str,
        "",
        "Price file (LiteLLM's model_prices_and_context_window.json format) merged over the "
        "built-in prices.",
        "pricing",
    ),
    Setting(
        "iron_state_dir",
        str,
        "",
        "Folder of the analytics outbox (default: $IRON_STATE_DIR or ~/.local/state/iron-runtime).",
        "analytics",
    ),
    Setting(
        "iron_retention_days",
        int,
        7,
        "Days the outbox keeps each event; older ones are kept as hourly totals for stats "
        "(pending ones too when there is no control server). 0 keeps every event.",
        "analytics",
    ),
    Setting("iron_sync_interval", str, "5", "Seconds between analytics syncs.", "analytics"),
    Setting(
        "iron_flush_deadline",
        str,
        "3",
        "Seconds allowed to send pending analytics when stopping.",
        "analytics",
    ),
    Setting("iron_server_url", str, "", "Iron Cage control server URL.", "control"),
    Setting("iron_cache_ttl", int, 300, "Seconds a fetched provider key is kept.", "control"),
    Setting(
        "iron_server_keys",
        bool,
        False,
        "Fetch the provider key from the control server (server mode).",
        "control",
    ),
    Setting(
        "iron_lease", bool, False, "Take the budget from a lease of the control server.", "control"
    ),
    Setting(
        "iron_admin_secret",
        str,
        "",
        "Secret guarding the /_iron/ admin endpoint; empty disables it.",
        "admin",
    ),
)

BY_NAME = {s.name: s for s in SETTINGS}


class Loader(Protocol):
    """What ``load`` receives from mitmproxy (``mitmproxy.addonmanager.Loader``)."""

    def add_option(
        self, name: str, typespec: type, default: str | int | bool, help: str
    ) -> None: ...


def declare(loader: Loader, owner: str) -> None:
    """Declare the options ``owner`` reads."""
    for s in SETTINGS:
        if s.owner == owner:
            loader.add_option(s.name, s.type, s.default, s.help)
