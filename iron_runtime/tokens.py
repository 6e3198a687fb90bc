"""Offline token counting for budget reservations.

The vocabularies ship in the package (``vocab/``), checked against the SHA-256 that tiktoken
itself expects, and tiktoken's own encoder runs on them: no download ever happens.
OpenAI models are counted with their own encoding; Claude models with ``cl100k_base`` and a
25 % margin (Anthropic's tokenizer is not public, and a reservation must not undercount).
Images count as 1,600 tokens each (the most either provider charges for one image at the
default sizes) and documents as their base64 size. Content nested past ``MAX_JSON_DEPTH``
(tool results inside tool results, say) is refused with a 400, never walked recursively.

A vocabulary is built when a count first needs it, and only that one: importing this module
and counting empty text build none, so a router without a budget, which counts nothing, never
holds one. ``warm_up()`` builds the likely one in the background when a budget is set. Built,
``o200k_base`` holds about 43 MB and ``cl100k_base`` 23 MB (tiktoken's Rust tables; the
Python copy of the ranks is dropped). Where a bound is all that is needed and no vocabulary
should be built for it, ``count_request_bound`` never counts fewer tokens than
``count_request`` (exact when the vocabulary is built, else each text's UTF-8 size).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any

from .payload import MAX_JSON_DEPTH, too_deep

EXPECTED_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
IMAGE_TOKENS = 1600
CLAUDE_MARGIN = 1.25
MESSAGE_OVERHEAD = 4  # role and separators, per message
REPLY_OVERHEAD = 3

if TYPE_CHECKING:
    import tiktoken

logger = logging.getLogger("iron_runtime")

# One lock per vocabulary: two flows that need the same one at once build it once, and a
# flow that needs the other one does not wait for it.
_locks = {name: threading.Lock() for name in EXPECTED_SHA256}
_spec_lock = threading.Lock()  # tiktoken's spec functions are called with a patched loader
_encodings: dict[str, tiktoken.Encoding] = {}

# The vocabulary ``warm_up()`` loads when told no models: the one of current OpenAI models.
WARM_UP_DEFAULT = ("o200k_base",)


def _load_ranks(name: str) -> dict[bytes, int]:
    raw = gzip.decompress(
        resources.files("iron_runtime").joinpath(f"vocab/{name}.tiktoken.gz").read_bytes()
    )
    if hashlib.sha256(raw).hexdigest() != EXPECTED_SHA256[name]:
        raise RuntimeError(f"vocabulary {name} is corrupt (SHA-256 mismatch)")
    ranks = {}
    b64decode = base64.b64decode
    for line in io.BytesIO(raw):  # line by line: no list of 200k lines held at once
        if line.strip():
            token, rank = line.split()
            ranks[b64decode(token)] = int(rank)
    return ranks


def _build(name: str) -> tiktoken.Encoding:
    """An ``Encoding`` from the packaged vocabulary, with tiktoken's own pattern and special
    tokens (its spec function, given our ranks instead of a download).

    tiktoken's Rust core copies the ranks into its own tables; the Python dict of 200k
    ``bytes`` keys it was built from is kept by ``Encoding`` only for pickling, so it is
    dropped (28 MB for ``o200k_base``, 15 MB for ``cl100k_base``) and the freed heap handed
    back to the system."""
    enc = _encoding_from(_load_ranks(name), name)
    enc._mergeable_ranks = {}  # only read to pickle an Encoding, which nothing here does
    _trim_heap()  # the ranks, the file and its lines are garbage by now
    return enc


def _encoding_from(ranks: dict[bytes, int], name: str) -> tiktoken.Encoding:
    import tiktoken  # with the first vocabulary: a router that counts nothing never imports it
    import tiktoken_ext.openai_public as public

    def loader(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if expected_hash != EXPECTED_SHA256[name]:
            raise RuntimeError(f"tiktoken expects another {name} vocabulary than ours")
        return ranks

    with _spec_lock:
        original = public.load_tiktoken_bpe
        public.load_tiktoken_bpe = loader
        try:
            spec = getattr(public, name)()
        finally:
            public.load_tiktoken_bpe = original
    return tiktoken.Encoding(**spec)


def _trim_heap() -> None:
    """Give the heap freed by a build back to the system (glibc keeps it otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def encoding(name: str) -> tiktoken.Encoding:
    """``cl100k_base`` or ``o200k_base``, built from the packaged vocabulary on first use
    (about 0.2 s), once per process even when several threads ask at once."""
    enc = _encodings.get(name)
    if enc is not None:
        return enc
    lock = _locks.get(name)
    if lock is None:
        raise ValueError(f"unknown vocabulary {name!r}")
    with lock:
        enc = _encodings.get(name)
        if enc is None:
            enc = _encodings[name] = _build(name)
        return enc


def loaded() -> frozenset[str]:
    """The vocabularies this process has built so far."""
    return frozenset(_encodings)


def encodings_for(models: Iterable[str]) -> set[str]:
    """The vocabularies counting for these models needs (Claude models: ``cl100k_base``)."""
    return {encoding_for(m) for m in models}


def warm_up(models: Iterable[str] = ()) -> None:
    """Build, in a background daemon thread, the vocabularies these models need (none
    given: ``o200k_base``, that of current OpenAI models), so that the first counted
    request does not wait for them. Returns at once; call it only when a budget is set,
    since only then are tokens counted. Any other vocabulary is built on first use."""
    models = list(models)
    names = sorted(encodings_for(models)) if models else list(WARM_UP_DEFAULT)
    todo = [n for n in names if n not in _encodings]
    if todo:
        threading.Thread(target=_warm, args=(todo,), name="iron-vocabulary", daemon=True).start()


def _warm(names: list[str]) -> None:
    for name in names:  # one after the other: one build's transient memory at a time
        try:
            encoding(name)
        except Exception:  # the request that needs it will meet the error itself
            logger.exception("iron_runtime: building the %s vocabulary failed", name)


def encoding_for(model: str) -> str:
    if model.startswith(
        (
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "o1",
            "o3",
            "o4",
            "chatgpt-4o",
            "codex",
            "gpt-oss",
            "ft:gpt-4o",
            "ft:gpt-4.1",
            "ft:o4",
        )
    ):
        return "o200k_base"
    return "cl100k_base"


def count_text(text: str, encoding_name: str = "cl100k_base") -> int:
    if not text:
        return 0
    return len(encoding(encoding_name).encode_ordinary(text))


def byte_bound(text: str) -> int:
    """An upper bound of ``count_text`` in either vocabulary, with none built: the text's
    UTF-8 size. Both are byte-level BPE vocabularies, every token stands for one byte or
    more, and the tokens of a text spell its bytes exactly, so a text never has more tokens
    than bytes (a lone surrogate, which tiktoken encodes as U+FFFD, is 3 bytes either way).
    About 4 times the exact count for English text."""
    return len(text.encode("utf-8", "surrogatepass"))


def count_text_bound(text: str, encoding_name: str = "cl100k_base") -> int:
    """``count_text`` if that vocabulary is already built, else ``byte_bound``: never fewer
    tokens than ``count_text``, and never builds a vocabulary."""
    if encoding_name in _encodings:
        return count_text(text, encoding_name)
    return byte_bound(text)


BYTES_PER_TOKEN = 4  # English text in either vocabulary, on average


def count_text_estimate(text: str, encoding_name: str = "cl100k_base") -> int:
    """``count_text`` if that vocabulary is already built, else an estimate that builds
    none: a token per ``BYTES_PER_TOKEN`` UTF-8 bytes. For figures that are only recorded
    (a router without a budget), never for a reservation: it can count too few."""
    if encoding_name in _encodings:
        return count_text(text, encoding_name)
    return -(-byte_bound(text) // BYTES_PER_TOKEN)


class _Collector:
    """Walks a request body, adding up text to tokenize and fixed-cost items.

    Content is walked with a list, not by recursion; ``depth`` is where a value sits in the
    body as JSON levels (the body itself is level 1), and past ``MAX_JSON_DEPTH`` the
    request is refused, as the body parse would have refused it.
    """

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.fixed = 0

    def content(self, value: Any, depth: int) -> None:
        if isinstance(value, str):
            self.texts.append(value)
            return
        todo = [(value, depth)]
        while todo:
            value, depth = todo.pop()
            if depth > MAX_JSON_DEPTH:
                raise too_deep("Request content")
            if isinstance(value, str):
                self.texts.append(value)
            elif isinstance(value, list):
                for part in value:
                    self.part(part, depth + 1, todo)
            elif isinstance(value, dict):
                self.part(value, depth, todo)

    def part(self, part: Any, depth: int, todo: list[tuple[Any, int]]) -> None:
        """One content part at ``depth``; content nested in it goes on ``todo``."""
        if isinstance(part, str):
            self.texts.append(part)
            return
        if not isinstance(part, dict):
            return
        kind = part.get("type")
        if kind in ("image_url", "image", "input_image"):
            self.fixed += IMAGE_TOKENS
        elif kind in ("document", "file", "input_file"):
            self.fixed += len(_dumps(part, ascii=True)) // 3  # base64: a token per 3 chars
        elif kind in ("tool_use", "tool_result"):
            self.texts.append(_dumps(part.get("input", "")))
            todo.append((part.get("content"), depth + 1))
        else:
            for key in ("text", "thinking", "refusal", "input_text", "output_text"):
                if isinstance(part.get(key), str):
                    self.texts.append(part[key])


def _dumps(value: Any, ascii: bool = False) -> str:
    """JSON text of a value, to count its tokens (the C encoder: no Python recursion)."""
    try:
        return json.dumps(value, ensure_ascii=ascii)
    except RecursionError:
        raise too_deep("Request content") from None


def count_request(body: dict[str, Any], model: str, anthropic: bool) -> int:
    """An upper estimate of the input tokens of a chat or messages request (any other JSON
    body: its serialized size in tokens). Raises a 400 ``RouterError`` for content nested
    deeper than ``MAX_JSON_DEPTH``."""
    return _count_request(body, model, anthropic, count_text)


def count_request_bound(body: dict[str, Any], model: str, anthropic: bool) -> int:
    """Never less than ``count_request`` and never builds a vocabulary: the same count with
    each text bounded by ``count_text_bound`` (exact if its vocabulary is built, else its
    UTF-8 size). For an estimate where a bound is all that is needed and no vocabulary
    should be built for it (a router without a budget pricing a failed request, say)."""
    return _count_request(body, model, anthropic, count_text_bound)


def count_request_estimate(body: dict[str, Any], model: str, anthropic: bool) -> int:
    """``count_request`` with each text counted by ``count_text_estimate``: exact once the
    vocabulary is built, never building one. For recorded figures only."""
    return _count_request(body, model, anthropic, count_text_estimate)


def _count_request(
    body: dict[str, Any], model: str, anthropic: bool, count: Callable[[str, str], int]
) -> int:
    c = _Collector()
    messages = body.get("messages")
    if isinstance(messages, list):
        c.fixed += REPLY_OVERHEAD
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            c.fixed += MESSAGE_OVERHEAD
            c.content(msg.get("content"), 4)  # body, messages, message, content
            calls = msg.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    c.texts.append(_dumps(call.get("function", call)))
        c.content(body.get("system"), 2)
        if body.get("tools"):
            c.texts.append(_dumps(body["tools"]))
    else:
        c.texts.append(_dumps(body))
    name = "cl100k_base" if anthropic else encoding_for(model)
    tokens = c.fixed + sum(count(t, name) for t in c.texts)
    return math.ceil(tokens * CLAUDE_MARGIN) if anthropic else tokens
