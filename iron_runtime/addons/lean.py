"""mitmproxy without its debug-mode type checks of every message.

Unless Python runs with ``-O``, mitmproxy checks the type of every field of each request and
response it builds (``MessageData.__post_init__``, under ``if __debug__``): a debugging aid
for addon authors that costs about a tenth of the proxy's CPU per request. ``install()``
makes that check a no-op, once per process, which is what ``python -O`` would do for it
without disabling ``assert`` or needing bytecode compiled for ``-O``.
"""

from __future__ import annotations

from mitmproxy import http


def _unchecked(self: http.MessageData) -> None:
    """The fields are set by mitmproxy's own parsers and ``Request``/``Response.make``."""


def install() -> None:
    """Skip mitmproxy's debug-mode field type checks (once per process)."""
    if getattr(http.MessageData, "__post_init__", None) not in (None, _unchecked):
        setattr(http.MessageData, "__post_init__", _unchecked)  # noqa: B010 - a patch
