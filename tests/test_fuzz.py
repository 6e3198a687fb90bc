"""Seeded fuzzing of a real router with a budget, in front of the strict emulators: raw HTTP
mutations and mutated JSON bodies on the three paths (OpenAI chat, the gateway, Anthropic
messages). Whatever comes in: no 5xx from the router, an answer (or a close) within a
bound, one analytics event per answered request, no reservation left, and the router
serves a valid request after every batch."""

from __future__ import annotations

import json
import random
import re
import socket
import sqlite3
import time
from collections import Counter

import pytest

from .conftest import make_router

SEED = 20261126
BATCH = 100
MAX_INPUTS = 3000
TIME_BOUND_S = 60.0
ANSWER_BOUND_S = 10.0

PATHS = {
    "/v1/chat/completions": {
        "model": "gpt-4o-mini",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/v1/chat/completions ": {  # the gateway: a Claude model through the OpenAI shape
        "model": "claude-sonnet-4-6",
        "max_tokens": 5,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
    },
    "/v1/messages": {
        "model": "claude-sonnet-4-6",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    },
}

# Answers the HTTP layer writes before a request exists: no flow, hence no event.
PROTOCOL_PREFIXES = ("Malformed request", "Request header fields too large")

ODD_VALUES = [
    None,
    True,
    -1,
    0,
    2**63,
    1e308,
    "",
    "x" * 5000,
    "\ud800",
    "a\x00b",
    "é😀",
    [],
    {},
    [[[[[]]]]],
    {"type": "text"},
    "\\",
    '"',
]


def _mutate_json(rng: random.Random, body: dict) -> bytes:
    body = json.loads(json.dumps(body))
    for _ in range(rng.randint(1, 3)):
        action = rng.randrange(9)
        if action == 0:
            body[rng.choice(list(body) or ["model"])] = rng.choice(ODD_VALUES)
        elif action == 1:
            body.pop(rng.choice(list(body) or ["model"]), None)
        elif action == 2:
            body[rng.choice(["n", "stream", "tools", "tool_choice", "stop", "temperature"])] = (
                rng.choice(ODD_VALUES + [2, "auto", [{"type": "function"}]])
            )
        elif action == 3:
            messages = body.get("messages")
            msg = rng.choice(messages) if isinstance(messages, list) and messages else None
            if isinstance(msg, dict):
                msg[rng.choice(["role", "content", "tool_calls", "name"])] = rng.choice(
                    ODD_VALUES + ["tool", "assistant", [{"type": "image_url"}]]
                )
        elif action == 4:
            body["messages"] = rng.choice(ODD_VALUES)
        elif action == 5:
            body["model"] = rng.choice(["gpt-4o\ud800", "claude-\udfff", "", "no-such-model"])
        elif action == 6:
            depth = rng.choice([50, 1000, 20000])
            body["metadata"] = json.loads("[" * depth + "]" * depth) if depth < 1000 else None
            if depth >= 1000:
                raw = json.dumps(body).encode()
                return raw[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
        elif action == 7:
            body[f"unknown_\ud800_{rng.randrange(9)}"] = 1
        else:
            body["stream"] = True
    raw = json.dumps(body).encode()
    tail = rng.randrange(6)
    if tail == 0:
        raw = raw[: rng.randrange(len(raw))]  # truncated
    elif tail == 1:
        raw = raw.replace(b"hi", b"\xed\xa0\x80\xff")  # invalid UTF-8
    return raw


def _request(path: str, token: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n"
        % (path.strip().encode(), token.encode(), len(body), extra)
    ) + body


def _mutate_raw(rng: random.Random, raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    action = rng.randrange(8)
    if action == 0:  # a random byte somewhere in the head
        i = rng.randrange(len(head))
        head = head[:i] + bytes([rng.randrange(256)]) + head[i + 1 :]
    elif action == 1:
        head = head.replace(b"POST", rng.choice([b"GET", b"HEAD", b"PUT", b"DELETE", b"P0ST"]))
    elif action == 2:
        head += rng.choice(
            [b"\r\nX-A: b\rc", b"\r\n folded", b"\r\nX-N: \x00", b"\r\nno-colon", b"\r\n: empty"]
        )
    elif action == 3:
        head = head.replace(
            b"Content-Length: %d" % len(body),
            rng.choice([b"Content-Length: -1", b"Content-Length: x", b"Content-Length: 0"]),
        )
    elif action == 4:  # chunked, sometimes broken, sometimes with trailers
        head = head.replace(b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked")
        ending = rng.choice([b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n", b"zz\r\n\r\n"])
        body = b"%x\r\n%s\r\n%s" % (len(body), body, ending)
    elif action == 5:
        head = head.replace(b"/v1/", rng.choice([b"/v1/../v1/", b"/v1//", b"/%76%31/", b"/v1\\"]))
    elif action == 6:
        head = head.replace(b"HTTP/1.1", rng.choice([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x"]))
    else:
        head += b"\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(rng.choice([10, 120])))[:-2]
    mutated = head + b"\r\n\r\n" + body
    declared = re.search(rb"(?i)content-length:[ \t]*(\d+)", head)
    if declared and int(declared.group(1)) > len(body):
        return raw  # a client that announces more than it sends waits for itself: not a case
    return mutated


def _exchange(port: int, data: bytes) -> tuple[bytes, float]:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_BOUND_S) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # refused while sending: the answer is read below
        out = b""
        while not _complete(out):
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out, time.monotonic() - start


def _complete(raw: bytes) -> bool:
    """True once ``raw`` holds a whole answer framed by Content-Length (a mutated request may
    have lost its ``Connection: close``, and the router then keeps the connection open)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
        if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            return body.endswith(b"0\r\n\r\n")
    return False


def _answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1 answers in ``raw`` (at most one per exchange with Connection: close)."""
    if not raw.startswith(b"HTTP/1."):
        return []
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    return [(int(lines[0][9:12]), headers, body)]


@pytest.fixture(scope="module")
def fuzz_router(openai_emu, anthropic_emu, tmp_path_factory):
    state = tmp_path_factory.mktemp("fuzz-state")
    r = make_router(openai_emu, anthropic_emu, budget=100.0, state_dir=state)
    yield r, state / "analytics.sqlite3"
    r.stop()


def _events_by_request(db_path) -> Counter:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT json_extract(body, '$.request_id') FROM events").fetchall()
    finally:
        db.close()
    return Counter(r for (r,) in rows)


def test_fuzzed_http_and_json_never_break_the_router(fuzz_router):
    router, db_path = fuzz_router
    rng = random.Random(SEED)
    answered: list[str] = []
    slowest = 0.0
    statuses: Counter = Counter()
    deadline = time.monotonic() + TIME_BOUND_S
    sent = 0
    while sent < MAX_INPUTS and time.monotonic() < deadline:
        for _ in range(BATCH):
            path = rng.choice(list(PATHS))
            body = _mutate_json(rng, PATHS[path]) if rng.random() < 0.7 else None
            raw = _request(path, router.api_key, body or json.dumps(PATHS[path]).encode())
            if body is None or rng.random() < 0.2:
                raw = _mutate_raw(rng, raw)
            answer, took = _exchange(router.port, raw)
            sent += 1
            slowest = max(slowest, took)
            assert took < ANSWER_BOUND_S, (raw, answer[-300:])
            for status, headers, content in _answers(answer):
                statuses[status] += 1
                assert status < 500, (raw[:500], answer[:500])
                rid = headers.get("x-iron-request-id")
                assert rid, answer[:300]
                message = content.decode("utf-8", "replace")
                if not any(p in message for p in PROTOCOL_PREFIXES):
                    answered.append(rid)
        # after every batch, a valid request is served
        ok, _ = _exchange(
            router.port,
            _request(
                "/v1/chat/completions",
                router.api_key,
                b"%s" % (json.dumps(PATHS["/v1/chat/completions"]).encode()),
            ),
        )
        assert ok.startswith(b"HTTP/1.1 200"), ok[:300]
    assert sent >= 1000, f"only {sent} inputs in {TIME_BOUND_S} s"
    assert statuses[200] and statuses[400]  # the corpus reaches both sides

    status = router._admin("GET", "status")["budget"]
    assert status["reserved_micros"] == 0  # every reservation settled or released

    time.sleep(0.5)  # events of failed flows are committed without holding their answer
    events = _events_by_request(db_path)
    duplicated = [rid for rid, n in events.items() if n > 1]
    assert not duplicated
    missing = [rid for rid in answered if rid not in events]
    assert not missing, f"{len(missing)} answered requests without an event"
