"""Analytics: one event per request, kept in an SQLite outbox, synced to the control server."""

from .events import Event, LlmRequestCompleted, LlmRequestFailed
from .outbox import Outbox
from .sync import SyncWorker

__all__ = ["Event", "LlmRequestCompleted", "LlmRequestFailed", "Outbox", "SyncWorker"]
