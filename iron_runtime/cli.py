"""``iron-runtime`` command line."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from .budget import usd
from .keys import mask_secret

if TYPE_CHECKING:  # the SDKs come with the demo extra; the router needs neither
    import anthropic
    import openai
    from openai.types.chat import ChatCompletionToolParam

    from . import LlmRouter
    from .testing import AnthropicEmulator, ControlServerEmulator, OpenAIEmulator


def _say(text: str = "") -> None:
    print(text, flush=True)


DEMO_EXTRA = "pip install 'iron-runtime[demo]'"


class _Unexpected(Exception):
    """A demo step saw what the router should have prevented."""


@dataclass
class _Tour:
    """What the demo's steps drive: the emulators, the router, and an SDK client for each
    provider, both pointed at the router."""

    oai: OpenAIEmulator
    ant: AnthropicEmulator
    control: ControlServerEmulator
    router: LlmRouter
    client: openai.OpenAI
    claude: anthropic.Anthropic


def demo(args: argparse.Namespace) -> int:
    """A keyless tour: local emulators of OpenAI and Anthropic behind a real router.

    It drives the router with the official SDKs, which the router itself does not need: they
    come with the ``demo`` extra. Without them, one line says so and the exit status is 2.
    """
    try:
        import anthropic
        import openai
    except ModuleNotFoundError as e:
        print(
            f"iron-runtime demo needs the OpenAI and Anthropic SDKs ({e.name!r} is missing): "
            f"{DEMO_EXTRA}",
            file=sys.stderr,
        )
        return 2

    from . import LlmRouter
    from .testing import AnthropicEmulator, ControlServerEmulator, OpenAIEmulator

    _say("iron-runtime demo: no keys needed; OpenAI and Anthropic are emulated on 127.0.0.1.\n")
    with (
        OpenAIEmulator() as oai,
        AnthropicEmulator() as ant,
        ControlServerEmulator() as control,
        tempfile.TemporaryDirectory(prefix="iron-demo-") as state,
    ):
        _show_emulators(oai, ant, control)
        t0 = time.perf_counter()
        router = LlmRouter(
            api_key="ic_demo_agent",
            server_url=control.url,
            provider_keys={"openai": oai.api_key, "anthropic": ant.api_key},
            upstreams={"openai": oai.url, "anthropic": ant.url},
            state_dir=state,
            sync_interval=0.5,
        )
        with router:
            _say(
                f"  Router              {router.base_url}   "
                f"(started in {time.perf_counter() - t0:.2f} s, agent token "
                f"{router.api_key!r})\n"
            )
            tour = _Tour(
                oai,
                ant,
                control,
                router,
                client=openai.OpenAI(base_url=router.base_url, api_key=router.api_key),
                claude=anthropic.Anthropic(base_url=router.base_url, api_key=router.api_key),
            )
            try:
                _openai_chat(tour)
                _openai_stream(tour)
                _anthropic_chat(tour)
                _anthropic_stream(tour)
                _translated_tool_call(tour)
                _budget_refusal(tour)
                _bad_token(tour)
                _analytics_sync(tour)
            except _Unexpected as e:
                _say(f"   unexpected: {e}")
                return 1
        _lease_returned(control)
        _say("\nDone: router stopped, no process left behind.")
    return 0


def _show_emulators(
    oai: OpenAIEmulator, ant: AnthropicEmulator, control: ControlServerEmulator
) -> None:
    """The three emulated services; the control server knows one agent, with $2.00."""
    control.add_agent("ic_demo_agent", "openai", oai.api_key, budget_micros=2_000_000)
    _say(f"  OpenAI emulator     {oai.url}   (real key {mask_secret(oai.api_key)})")
    _say(f"  Anthropic emulator  {ant.url}   (real key {mask_secret(ant.api_key)})")
    _say(f"  Iron Cage server    {control.url}   (agent ic_demo_agent, budget $2.00)")


def _openai_chat(t: _Tour) -> None:
    """Routing: the OpenAI SDK reaches OpenAI, with the real key injected by the router."""
    _say("1. OpenAI SDK → router → OpenAI, gpt-4o")
    raw = t.client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hello through the router"}]
    )
    reply = raw.parse()
    usage = reply.usage
    assert usage is not None  # the emulator always counts
    _say(f"   reply: {reply.choices[0].message.content!r}")
    _say(
        f"   usage: {usage.prompt_tokens} in / {usage.completion_tokens} out;"
        f" x-iron-request-id {raw.headers.get('x-iron-request-id')}"
    )
    seen = t.oai.requests[-1].headers
    _say(
        f"   OpenAI saw: authorization 'Bearer {mask_secret(seen['authorization'][7:])}'"
        " (the real key, injected by the router)\n"
    )


def _openai_stream(t: _Tour) -> None:
    """Streaming: chunks reach the SDK as the provider sends them."""
    _say("2. OpenAI SDK, streamed: chunks print as they arrive")
    t.oai.chunk_delay = 0.15
    print("   ", end="", flush=True)
    for chunk in t.client.chat.completions.create(
        model="gpt-4o",
        stream=True,
        messages=[{"role": "user", "content": "stream these words one by one"}],
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    t.oai.chunk_delay = 0.0
    _say("\n")


def _anthropic_chat(t: _Tour) -> None:
    """Routing: the Anthropic SDK reaches Anthropic, with its key and API version."""
    import anthropic

    _say("3. Anthropic SDK → router → Anthropic, claude-sonnet-4-6")
    message = t.claude.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=200,
        messages=[{"role": "user", "content": "Hello Claude, via the router"}],
    )
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)  # the emulator answers in text
    _say(f"   reply: {block.text!r}")
    _say(f"   usage: {message.usage.input_tokens} in / {message.usage.output_tokens} out")
    seen = t.ant.requests[-1].headers
    _say(
        f"   Anthropic saw: x-api-key {mask_secret(seen['x-api-key'])}, "
        f"anthropic-version {seen['anthropic-version']}\n"
    )


def _anthropic_stream(t: _Tour) -> None:
    """Streaming, the Anthropic way."""
    _say("4. Anthropic SDK, streamed")
    t.ant.chunk_delay = 0.15
    print("   ", end="", flush=True)
    with t.claude.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=200,
        messages=[{"role": "user", "content": "stream these words one by one"}],
    ) as stream:
        for text in stream.text_stream:
            print(text, end="", flush=True)
    t.ant.chunk_delay = 0.0
    _say("\n")


def _translated_tool_call(t: _Tour) -> None:
    """Translation: an OpenAI chat completion with a tool, answered by Anthropic, streamed."""
    _say("5. OpenAI SDK → router → Anthropic: claude-sonnet-4-6 through chat.completions,")
    _say("   streamed, with a tool call (the router translates request and SSE stream)")
    t.ant.chunk_delay = 0.1
    t.ant.script(
        [
            {"type": "text", "text": "Let me look that up."},
            {"type": "tool_use", "name": "get_weather", "input": {"city": "Paris"}},
        ]
    )
    weather: ChatCompletionToolParam = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    print("   ", end="", flush=True)
    finish = None
    for chunk in t.client.chat.completions.create(
        model="claude-sonnet-4-6",
        stream=True,
        tools=[weather],
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
    ):
        delta = chunk.choices[0].delta
        if delta.content:
            print(delta.content, end="", flush=True)
        for call in delta.tool_calls or []:
            if call.function and call.function.name:
                print(f"\n   tool call #{call.index}: {call.function.name}(", end="")
            if call.function and call.function.arguments:
                print(call.function.arguments, end="", flush=True)
        finish = chunk.choices[0].finish_reason or finish
    t.ant.chunk_delay = 0.0
    _say(
        f")\n   finish_reason: {finish}; Anthropic received /v1/messages with "
        f"{len(t.ant.requests[-1].json()['tools'])} tool\n"
    )


def _budget_refusal(t: _Tour) -> None:
    """The lease: every token priced, and a request the budget cannot cover refused."""
    import openai

    _say("6. The budget: a lease of the agent's $2.00 from the Iron Cage server")
    # in hand since the constructor returned
    _say(
        f"   lease granted: ${t.router.budget:.2f}; spent so far "
        f"${t.router.total_spent():.6f} (every token priced)"
    )
    try:
        t.client.chat.completions.create(
            model="gpt-4o",
            max_tokens=500_000,
            messages=[{"role": "user", "content": "write a very long essay"}],
        )
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        _say(f"   refused before it left: {e.status_code} {e.code}")
        _say(f"   {body.get('message', e.message)}\n")
    else:
        raise _Unexpected("the request went through")


def _bad_token(t: _Tour) -> None:
    """A client without the agent token is refused by the router itself."""
    import openai

    _say("7. A wrong token is refused before anything leaves the machine")
    try:
        openai.OpenAI(
            base_url=t.router.base_url, api_key="not-the-token", max_retries=0
        ).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    except openai.AuthenticationError as e:
        _say(f"   openai.AuthenticationError: {e.status_code}\n")
    else:
        raise _Unexpected("the request went through")


def _analytics_sync(t: _Tour) -> None:
    """Analytics: the events of the requests above reach the control server."""
    _say("8. Analytics: one event per request, synced to the Iron Cage server")
    deadline = time.monotonic() + 10
    while len(t.control.events) < 7 and time.monotonic() < deadline:
        time.sleep(0.1)
    kinds = [
        e["event_type"].removeprefix("llm_request_")
        for e in sorted(t.control.events.values(), key=lambda e: e["timestamp_ms"])
    ]
    _say(f"   the server has {len(kinds)} events: {', '.join(kinds)}")


def _lease_returned(control: ControlServerEmulator) -> None:
    """Once the router stopped: its lease went back to the server, with what it spent."""
    (lease,) = control.leases.values()
    _say(
        f"   on stop the lease went back: {usd(lease.granted)} granted, "
        f"{usd(lease.returned_spent)} spent"
    )


class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument answered in one line (what is wrong, where to read
    more) and exit status 2, instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    """``iron-runtime``: its exit status. A bad argument or environment (no key, a wrong type,
    an unreachable server, an unwritable state folder, a port in use) is one line on stderr
    and status 2; ``run`` returns the agent's status."""
    from . import __version__
    from .commands import CliError, add_commands

    parser = Parser(
        prog="iron-runtime",
        description="Local LLM router for AI agents: keys, routing, budgets, analytics.",
    )
    parser.add_argument("--version", action="version", version=f"iron-runtime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("demo", help="keyless tour against local emulators")
    p.set_defaults(func=demo)
    add_commands(sub)
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand that did not take them
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    prog = f"iron-runtime {args.command}"
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        return e.code
    except (ValueError, OSError, RuntimeError) as e:  # from the router: its first line
        lines = str(e).strip().splitlines() or [type(e).__name__]
        print(f"{prog}: {lines[0]}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
