"""Vocabularies are built on demand: none at import or for empty counts, only the one a model
needs, once per process even when flows ask for it at the same time, and ``warm_up`` never
blocks its caller."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import tiktoken

from iron_runtime import tokens


@pytest.fixture
def fresh(monkeypatch):
    """An empty vocabulary cache for the test (the process may hold built ones)."""
    monkeypatch.setattr(tokens, "_encodings", {})
    return tokens


@pytest.fixture
def fake_build(fresh, monkeypatch):
    """``_build`` replaced by a slow stand-in that records its calls; ``gate`` holds it."""
    calls: list[str] = []
    gate = threading.Event()
    gate.set()

    def build(name: str):
        calls.append(name)
        assert gate.wait(10)
        time.sleep(0.05)  # long enough for the other threads to arrive
        return object()

    monkeypatch.setattr(tokens, "_build", build)
    return calls, gate


def test_nothing_is_built_at_import_or_for_empty_counts():
    # A fresh interpreter: importing the router's modules and counting nothing builds none.
    code = """
import json
import iron_runtime, iron_runtime.metering, iron_runtime.cost
from iron_runtime import tokens
before = sorted(tokens.loaded())
tokens.count_text("", "o200k_base")
tokens.count_text("", "cl100k_base")
tokens.count_request({"messages": []}, "gpt-4o", anthropic=False)
tokens.count_request({"messages": [{"role": "user", "content": ""}]}, "claude-x", anthropic=True)
print(json.dumps([before, sorted(tokens.loaded())]))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == [[], []]


def test_a_count_builds_only_the_vocabulary_of_its_model(fresh):
    body = {"messages": [{"role": "user", "content": "hello world"}]}
    assert fresh.count_request(body, "gpt-4o", anthropic=False) == 2 + 4 + 3
    assert fresh.loaded() == {"o200k_base"}
    fresh.count_request(body, "claude-sonnet-4-6", anthropic=True)
    assert fresh.loaded() == {"o200k_base", "cl100k_base"}


def test_a_claude_count_builds_cl100k_only(fresh):
    fresh.count_request({"messages": [{"role": "user", "content": "hi"}]}, "claude-x", True)
    assert fresh.loaded() == {"cl100k_base"}


def test_the_lean_encoding_counts_as_tiktoken_does(fresh):
    """The built encoding drops its Python copy of the ranks and still counts exactly as a
    full tiktoken ``Encoding`` over the same vocabulary."""
    text = (
        "Hello, world! Ünïcödé, 漢字かな交じり文, emoji 🚀🔥, code: def f(x): return x**2\n"
        "  indented\r\n\tTabs and   spaces 1234567890 don't won't I'll"
    ) * 20
    for name in ("o200k_base", "cl100k_base"):
        lean = fresh.encoding(name)
        assert lean._mergeable_ranks == {}  # the Python dict is not retained
        spec = {
            "name": name,
            "pat_str": lean._pat_str,
            "mergeable_ranks": tokens._load_ranks(name),
            "special_tokens": lean._special_tokens,
        }
        full = tiktoken.Encoding(**spec)
        assert lean.encode_ordinary(text) == full.encode_ordinary(text)
        assert lean.n_vocab == full.n_vocab
        del full, spec


def test_concurrent_first_use_builds_once(fake_build):
    calls, gate = fake_build
    gate.clear()
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(tokens.encoding("o200k_base"))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(10)
    assert calls == ["o200k_base"]
    assert len(got) == 8 and all(g is got[0] for g in got)


def test_one_vocabulary_being_built_does_not_hold_up_the_other(fresh, monkeypatch):
    slow_started, release = threading.Event(), threading.Event()

    def build(name: str):
        if name == "o200k_base":
            slow_started.set()
            assert release.wait(10)
        return name

    monkeypatch.setattr(tokens, "_build", build)
    slow = threading.Thread(target=tokens.encoding, args=("o200k_base",))
    slow.start()
    try:
        assert slow_started.wait(10)
        assert tokens.encoding("cl100k_base") == "cl100k_base"  # not blocked by o200k_base
    finally:
        release.set()
        slow.join(10)
    assert tokens.loaded() == {"o200k_base", "cl100k_base"}


def test_unknown_vocabulary_is_an_error(fresh):
    with pytest.raises(ValueError):
        fresh.encoding("p50k_base")
    assert fresh.loaded() == frozenset()


def _wait_loaded(names: set[str], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while tokens.loaded() != names and time.monotonic() < end:
        time.sleep(0.01)


def test_warm_up_returns_at_once_and_builds_o200k_only(fake_build):
    calls, gate = fake_build
    gate.clear()  # the build blocks until released: warm_up must not
    t0 = time.monotonic()
    tokens.warm_up()
    assert time.monotonic() - t0 < 1.0
    assert tokens.loaded() == frozenset()
    gate.set()
    _wait_loaded({"o200k_base"})
    assert calls == ["o200k_base"]
    tokens.warm_up()  # already built: nothing more
    time.sleep(0.1)
    assert calls == ["o200k_base"]


def test_warm_up_builds_what_the_models_need(fake_build):
    calls, _ = fake_build
    tokens.warm_up(["claude-sonnet-4-6", "claude-haiku-4-5"])
    _wait_loaded({"cl100k_base"})
    assert calls == ["cl100k_base"]
    tokens.warm_up(["gpt-4o-mini", "claude-x"])
    _wait_loaded({"cl100k_base", "o200k_base"})
    assert sorted(calls) == ["cl100k_base", "o200k_base"]


def test_warm_up_and_a_request_at_once_build_once(fake_build):
    calls, gate = fake_build
    gate.clear()
    tokens.warm_up(["gpt-4o"])
    time.sleep(0.05)
    got = []
    t = threading.Thread(target=lambda: got.append(tokens.encoding("o200k_base")))
    t.start()
    gate.set()
    t.join(10)
    assert calls == ["o200k_base"] and got


def test_a_failed_warm_up_leaves_the_error_to_the_request(fresh, monkeypatch, caplog):
    def broken(name):
        raise RuntimeError("vocabulary is corrupt")

    monkeypatch.setattr(tokens, "_build", broken)
    tokens.warm_up()
    end = time.monotonic() + 5
    while "vocabulary" not in caplog.text and time.monotonic() < end:
        time.sleep(0.01)
    assert tokens.loaded() == frozenset()
    with pytest.raises(RuntimeError):
        tokens.count_text("hello", "o200k_base")


# -- the vocabulary-free bound ---------------------------------------------------------------

BOUND_TEXTS = [
    "",
    "hello world",
    "Hello, world! " * 50,
    "Ünïcödé, 漢字かな交じり文, emoji 🚀🔥👩‍👩‍👧",
    "def f(x):\n\treturn x ** 2  # code\r\n",
    "1234567890" * 30,
    " " * 100 + "\n" * 10,
    "\x00\x01\x7f control bytes",
    "lone surrogate \ud800 here",
    "".join(chr(c) for c in range(32, 2000)),
]


def test_the_byte_bound_is_never_below_the_count(fresh):
    for name in ("o200k_base", "cl100k_base"):
        for text in BOUND_TEXTS:
            assert tokens.byte_bound(text) >= tokens.count_text(text, name), (name, text)


def test_the_request_bound_builds_nothing_and_never_undercounts(fresh):
    bodies = [
        {"messages": [{"role": "user", "content": t}], "system": "be brief"} for t in BOUND_TEXTS
    ] + [
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image"}]},
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                },
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        },
        {"input": "an embeddings-like body, counted as its JSON"},
    ]
    cases = [(b, m, a) for b in bodies for m, a in (("gpt-4o", False), ("claude-x", True))]
    bounds = [tokens.count_request_bound(b, m, a) for b, m, a in cases]
    assert tokens.loaded() == frozenset()  # no vocabulary built for a bound
    for (body, model, anthropic), bound in zip(cases, bounds, strict=True):
        assert bound >= tokens.count_request(body, model, anthropic)
    # once the vocabulary is built, the bound is the exact count
    for body, model, anthropic in cases:
        exact = tokens.count_request(body, model, anthropic)
        assert tokens.count_request_bound(body, model, anthropic) == exact
