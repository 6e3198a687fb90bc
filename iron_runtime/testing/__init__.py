"""Local emulators of the OpenAI and Anthropic APIs, over real sockets.

They speak the real wire formats (JSON answers and SSE streams), check credentials, and can
be told to fail in the ways real providers fail. The test suite, the demo and the benchmark
run against them; they need no network and no keys.
"""

from .anthropic_emulator import AnthropicEmulator
from .control_server import ControlServerEmulator
from .emulator import Emulator, Fault, RecordedRequest
from .openai_emulator import OpenAIEmulator

__all__ = [
    "AnthropicEmulator",
    "ControlServerEmulator",
    "Emulator",
    "Fault",
    "OpenAIEmulator",
    "RecordedRequest",
]
