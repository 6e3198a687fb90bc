"""Run an emulator in its own process: ``python -m iron_runtime.testing openai --port 9001``."""

from __future__ import annotations

import argparse
import asyncio

from .anthropic_emulator import AnthropicEmulator
from .control_server import ControlServerEmulator
from .emulator import Emulator
from .openai_emulator import OpenAIEmulator


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m iron_runtime.testing")
    parser.add_argument(
        "provider", choices=["openai", "anthropic", "control"], help="which service to emulate"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--reply", default=None, help="fixed reply text")
    parser.add_argument(
        "--chunk-delay", type=float, default=0.0, help="seconds between streamed events"
    )
    parser.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="IC_TOKEN:PROVIDER:KEY:BUDGET_USD",
        help="control server: an agent (repeatable)",
    )
    args = parser.parse_args()
    emu: Emulator
    if args.provider == "control":
        control = ControlServerEmulator(host=args.host, port=args.port, record=False)
        for spec in args.agent:
            token, provider, key, budget = spec.split(":", 3)
            control.add_agent(token, provider, key, int(float(budget) * 1_000_000))
        emu = control
    else:
        cls = OpenAIEmulator if args.provider == "openai" else AnthropicEmulator
        kw = {"api_key": args.api_key} if args.api_key else {}
        api = cls(host=args.host, port=args.port, record=False, **kw)
        api.reply_text = args.reply
        api.chunk_delay = args.chunk_delay
        emu = api

    def ready() -> None:
        print(f"{args.provider} emulator listening on {emu.url}", flush=True)

    try:
        asyncio.run(emu.serve_forever(ready))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
