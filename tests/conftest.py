"""Shared fixtures: emulators of both providers and routers in front of them, on real sockets."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator

import anthropic
import openai
import pytest

# Routers started by the tests keep their state (mitmproxy's CA) out of the user's home.
_STATE = tempfile.mkdtemp(prefix="iron-tests-")
os.environ.setdefault("IRON_STATE_DIR", _STATE)

from iron_runtime import LlmRouter  # noqa: E402
from iron_runtime.testing import AnthropicEmulator, OpenAIEmulator  # noqa: E402


@pytest.fixture(scope="session")
def openai_emu() -> Iterator[OpenAIEmulator]:
    with OpenAIEmulator() as emu:
        yield emu


@pytest.fixture(scope="session")
def anthropic_emu() -> Iterator[AnthropicEmulator]:
    with AnthropicEmulator() as emu:
        yield emu


@pytest.fixture(autouse=True)
def _fresh_emulators(request: pytest.FixtureRequest) -> None:
    for name in ("openai_emu", "anthropic_emu"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


def make_router(openai_emu: OpenAIEmulator, anthropic_emu: AnthropicEmulator, **kw) -> LlmRouter:
    return LlmRouter(
        provider_keys={"openai": openai_emu.api_key, "anthropic": anthropic_emu.api_key},
        upstreams={"openai": openai_emu.url, "anthropic": anthropic_emu.url},
        **kw,
    )


@pytest.fixture(scope="session")
def router(openai_emu: OpenAIEmulator, anthropic_emu: AnthropicEmulator) -> Iterator[LlmRouter]:
    """One router for the tests that only send traffic through it."""
    r = make_router(openai_emu, anthropic_emu)
    yield r
    r.stop()


@pytest.fixture
def oai(router: LlmRouter) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key=router.api_key, max_retries=0)


@pytest.fixture
def claude(router: LlmRouter) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=router.base_url, api_key=router.api_key, max_retries=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until_serving(proc, port: int, what: str, timeout: float = 30.0) -> None:
    """Wait until a mitmproxy tool started with the iron addons answers the health check
    (scripts load just after the port opens); fail with its output if it dies or hangs."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).text == "LlmRouter OK":
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what} did not start: {proc.stdout.read()}")
        time.sleep(0.05)


def wait_for(predicate, timeout: float = 30.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
