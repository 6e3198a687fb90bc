"""What a sloppy or hostile client sends at the HTTP level: every input gets a clear answer
(or a bounded close), nothing odd reaches the provider, memory stays bounded, no path
variant escapes the budget."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import make_router

BODY = json.dumps(
    {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
).encode()
CLAUDE_BODY = json.dumps(
    {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
).encode()


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the router closes the connection (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw[9:12])


def body_of(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def post(path: str, token: str, body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n"
        % (path.encode(), token.encode(), len(body), extra)
    ) + body


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def settled_rss(router) -> int:
    """The router's RSS once start-up work (a tokenizer vocabulary building in the
    background) is over: the size stays the same for a while. The peak (VmHWM) is then reset
    to it (``/proc/PID/clear_refs``), so that a later peak measures only what came after."""
    exchange(router.port, post("/v1/chat/completions", router.api_key))
    deadline = time.monotonic() + 30
    last = -1
    while time.monotonic() < deadline:
        rss = vm_kib(router.pid, "VmRSS")
        if abs(rss - last) < 256:
            with open(f"/proc/{router.pid}/clear_refs", "w") as f:
                f.write("5")
            return vm_kib(router.pid, "VmHWM")
        last = rss
        time.sleep(0.5)
    raise AssertionError("the router's memory did not settle")


# -- HEAD, trailers, framing, request lines ----------------------------------------------


def test_head_answers_carry_no_body_and_keep_the_connection_readable(router):
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    for path, headers, status in (
        ("/", {}, 200),
        ("/v1/models", {}, 401),
        ("/_iron/status", {"authorization": f"Bearer {router.api_key}"}, 404),
    ):
        conn.request("HEAD", path, headers=headers)
        resp = conn.getresponse()
        assert resp.status == status
        assert resp.read() == b""
        # the next answer on the same connection is read correctly
        conn.request("GET", "/")
        nxt = conn.getresponse()
        assert (nxt.status, nxt.read()) == (200, b"LlmRouter OK")
    conn.close()


def test_chunked_request_with_trailers_is_served_and_trailers_not_forwarded(router, openai_emu):
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        % router.api_key.encode()
        + b"%x\r\n%s\r\n0\r\nX-Trailer: smuggled\r\n\r\n" % (len(BODY), BODY)
    )
    answer = exchange(router.port, raw)
    assert status_of(answer) == 200
    assert body_of(answer)["choices"]
    assert "x-trailer" not in openai_emu.requests[-1].headers


@pytest.mark.parametrize(
    "head, reason",
    [
        (b"X-CR: a\rX-Smuggled-Cr: INJECTED\r\n", b"bare CR"),
        (b"X-Nul: a\x00b\r\n", b"control byte"),
        (b"X-Folded: a\r\n  X-Smuggled: b\r\n", b"folding"),
        (b"X-Esc: a\x1bb\r\n", b"control byte"),
    ],
)
def test_smuggling_bytes_in_headers_are_refused_and_never_forwarded(
    router, openai_emu, head, reason
):
    answer = exchange(router.port, post("/v1/chat/completions", router.api_key, extra=head))
    assert status_of(answer) == 400
    assert reason in answer
    assert b"x-iron-request-id: req_" in answer
    assert not openai_emu.requests


@pytest.mark.parametrize(
    "raw",
    [
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",  # two spaces
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\r\nHost: x\r\n\r\n",
    ],
)
def test_odd_request_lines_get_a_400_json_answer(router, openai_emu, raw):
    answer = exchange(router.port, raw)
    assert status_of(answer) == 400
    assert body_of(answer)["error"]["type"] == "invalid_request_error"
    assert not openai_emu.requests


@pytest.mark.parametrize(
    "chunked",
    [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcdef\r\n0\r\n\r\n", b"-1\r\nabc\r\n0\r\n\r\n"],
)
def test_malformed_chunked_framing_gets_a_400_json_answer(router, openai_emu, chunked):
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % router.api_key.encode()
    ) + chunked
    answer = exchange(router.port, raw)
    assert status_of(answer) == 400
    assert b"framing" in answer
    assert answer.count(b"HTTP/1.1 ") == 1
    assert not openai_emu.requests


def test_connect_is_answered_405(router):
    answer = exchange(router.port, b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", 5)
    assert status_of(answer) == 405
    assert body_of(answer)["error"]["code"] == "method_not_allowed"


def test_unreachable_provider_answer_is_json_with_a_request_id():
    from iron_runtime import LlmRouter

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, never listening: connections are refused
        with LlmRouter(
            provider_key="sk-test-key-0000000000", upstreams={"openai": f"http://127.0.0.1:{dead}"}
        ) as r:
            answer = exchange(r.port, post("/v1/chat/completions", r.api_key))
    assert status_of(answer) == 502
    assert b"x-iron-request-id: req_" in answer
    assert body_of(answer)["error"]["type"] == "iron_cage_upstream_error"


# -- size limits before and while reading -------------------------------------------------


def test_oversized_request_head_is_refused_with_431_while_it_arrives(router):
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ")
        refused = b""
        for _ in range(256):  # up to 16 MiB of one header value, never ended
            try:
                s.sendall(b"a" * 65536)
            except OSError:
                break
        s.settimeout(5)
        try:
            refused = s.recv(65536)
        except OSError:
            pass
    assert status_of(refused) == 431
    assert b"larger than 65536 bytes" in refused


def test_too_many_header_fields_is_431(router):
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    answer = exchange(router.port, post("/v1/chat/completions", router.api_key, extra=extra))
    assert status_of(answer) == 431
    assert b"more than 100 header fields" in answer


def test_declared_body_over_the_limit_is_refused_before_it_is_sent(router, openai_emu):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (router.api_key.encode(), 256 * 1024 * 1024)
    )
    answer = exchange(router.port, head)  # not a byte of the body is sent
    assert status_of(answer) == 413
    assert body_of(answer)["error"]["code"] == "request_too_large"
    assert not openai_emu.requests


def test_wrong_token_with_a_large_body_is_refused_on_the_headers(router, openai_emu):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
        b"Content-Length: %d\r\n\r\n" % (5 * 1024 * 1024)
    )
    answer = exchange(router.port, head)  # the body never comes; the answer does
    assert status_of(answer) == 401
    assert body_of(answer)["error"]["code"] == "invalid_api_key"
    rid = answer.split(b"x-iron-request-id: ")[1].split(b"\r\n")[0].decode()
    events = [e for e in router.stats()["recent"] if e.get("request_id") == rid]
    assert [(e["event_type"], e["error_code"], e["status"]) for e in events] == [
        ("llm_request_failed", "invalid_api_key", 401)
    ]


def test_sdk_uploading_a_body_over_the_limit_reads_the_413(router, oai, openai_emu):
    import openai

    with pytest.raises(openai.APIStatusError) as err:
        oai.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x" * (11 * 1024 * 1024)}]
        )
    assert err.value.status_code == 413
    assert not openai_emu.requests


def _chunked_flood(port: int, token: bytes, total: int) -> bytes:
    """Upload ``total`` bytes as one chunked body; return whatever the router answered."""
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % token
        )
        try:
            for _ in range(total >> 20):
                s.sendall(chunk)
        except OSError:
            pass  # the router closed after answering
        s.settimeout(5)
        try:
            return s.recv(65536)
        except OSError:
            return b""


def test_chunked_body_is_cut_at_the_limit(openai_emu, anthropic_emu):
    r = make_router(openai_emu, anthropic_emu, body_limit=1024 * 1024)
    try:
        answer = _chunked_flood(r.port, r.api_key.encode(), 64 * 1024 * 1024)
        assert status_of(answer) == 413
        assert b"over the router's limit of 1048576 bytes" in answer
        assert not openai_emu.requests
        assert r._admin("GET", "status")["budget"]["reserved_micros"] == 0
    finally:
        r.stop()


@pytest.mark.parametrize("kind", ["content-length", "chunked-wrong-token", "chunked-right-token"])
def test_a_gigabyte_hostile_body_keeps_the_router_within_20_mb(openai_emu, anthropic_emu, kind):
    r = make_router(openai_emu, anthropic_emu)
    try:
        before = settled_rss(r)
        if kind == "content-length":
            with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
                s.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                    % (1 << 30)
                )
                try:
                    for _ in range(1 << 14):  # 1 GiB in 64 KiB writes
                        s.sendall(b"x" * 65536)
                except OSError:
                    pass
        else:
            token = r.api_key.encode() if kind == "chunked-right-token" else b"wrong"
            _chunked_flood(r.port, token, 1 << 30)
        peak = vm_kib(r.pid, "VmHWM")
        assert peak - before < 20 * 1024, f"peak RSS grew by {(peak - before) // 1024} MiB"
        assert exchange(r.port, post("/v1/chat/completions", r.api_key)).startswith(b"HTTP/1.1 200")
    finally:
        r.stop()


# -- paths: one normalised form for routing, pricing and the provider ----------------------


@pytest.fixture(scope="module")
def spent_router(openai_emu, anthropic_emu):
    r = make_router(openai_emu, anthropic_emu, budget=0.000001)
    yield r
    r.stop()


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions#/files", BODY),
        ("/v1/chat/completions#/count_tokens", BODY),
        ("/v1/chat/completions#x/uploads", BODY),
        ("/v1/messages#/count_tokens", CLAUDE_BODY),
        ("/openai/v1/chat/completions#/files", BODY),
        ("/v1/chat/completions?x=/files", BODY),
        ("/v1/files/../chat/completions", BODY),
        ("/v1/chat/completions/./", BODY),
        ("/v1//chat/completions", BODY),
        ("/v1/%63hat/completions", BODY),
        ("/v1/messages/count_tokens/..", CLAUDE_BODY),
    ],
)
def test_no_path_variant_of_a_priced_endpoint_escapes_a_spent_budget(
    spent_router, openai_emu, anthropic_emu, path, body
):
    answer = exchange(spent_router.port, post(path, spent_router.api_key, body))
    assert status_of(answer) == 402, answer[:300]
    assert not openai_emu.requests and not anthropic_emu.requests


def test_paths_with_encoded_separators_are_refused(spent_router, openai_emu):
    for path in ("/v1/chat%2Fcompletions", "/v1/chat/completions%23/files", "/v1%5Cfiles"):
        answer = exchange(spent_router.port, post(path, spent_router.api_key))
        assert status_of(answer) == 400, path
        assert b"Request path refused" in answer
    assert not openai_emu.requests


def test_a_free_endpoint_stays_free_and_reaches_the_provider_normalised(
    spent_router, anthropic_emu
):
    body = json.dumps(
        {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    answer = exchange(
        spent_router.port, post("/v1/./messages//count_tokens#frag", spent_router.api_key, body)
    )
    assert status_of(answer) != 402  # (the emulator has no count_tokens: it answers 404)
    assert anthropic_emu.requests[-1].path == "/v1/messages/count_tokens"


_SEGMENT_NOISE = st.sampled_from(["", "/", "/.", "/x/..", "//", "/./"])
_SUFFIX = st.sampled_from(
    ["", "#/files", "#/count_tokens", "#x/uploads", "?a=/files", "?x#/uploads", "/", "/."]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    prefix=st.sampled_from(["", "/openai"]),
    noise=st.lists(_SEGMENT_NOISE, min_size=3, max_size=3),
    encode=st.lists(st.booleans(), min_size=4, max_size=4),
    suffix=_SUFFIX,
)
def test_property_no_spelling_of_chat_completions_escapes_the_reservation(
    spent_router, openai_emu, prefix, noise, encode, suffix
):
    def spell(word: str, enc: bool) -> str:
        return "".join(f"%{ord(c):02X}" for c in word) if enc else word

    path = (
        f"{prefix}/{spell('v1', encode[0])}{noise[0]}/{spell('chat', encode[1])}{noise[1]}"
        f"/{spell('completions', encode[2])}{noise[2]}{suffix}"
    )
    openai_emu.reset()
    answer = exchange(spent_router.port, post(path, spent_router.api_key))
    status = status_of(answer)
    # refused for the budget, or not a priced call at all (and then not forwarded free)
    assert status in (402, 400, 404), (path, answer[:300])
    if status != 402:
        assert not any(r.path.endswith("/chat/completions") for r in openai_emu.requests), path


def test_absolute_form_target_never_reaches_the_provider(router, openai_emu):
    raw = post("/v1/chat/completions", router.api_key).replace(
        b"POST /v1/chat/completions", b"POST http://attacker.example:8443/v1/chat/completions"
    )
    answer = exchange(router.port, raw)
    assert status_of(answer) == 200
    (seen,) = openai_emu.requests
    assert seen.path == "/v1/chat/completions"
    assert "attacker" not in json.dumps(seen.headers)


@pytest.mark.parametrize(
    "tail",
    [
        b"2\r\n{}\r\n0\r\n" + b"X-Trailer: aaaa\r\n" * 8000,  # a trailer section that never ends
        b"2;ext=" + b"a" * 200_000,  # a chunk extension that never ends
        b"0" * 200_000,  # a chunk-size line that never ends
    ],
)
def test_chunk_framing_that_never_ends_is_refused_not_buffered(router, openai_emu, tail):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % router.api_key.encode()
    )
    answer = exchange(router.port, head + tail)
    assert status_of(answer) == 400
    assert b"too long" in answer
    assert not openai_emu.requests


def test_empty_lines_before_a_request_are_skipped_at_once_and_bounded(router):
    for lead in (b"\r\n", b"\r\n\r\n\r\n", b"\n"):
        answer = exchange(
            router.port, lead + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.endswith(b"LlmRouter OK"), lead
    two = (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        b"\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert exchange(router.port, two).count(b"LlmRouter OK") == 2
    flood = exchange(router.port, b"\r\n" * 40_000)
    assert status_of(flood) == 400
    assert b"empty lines" in flood


def test_a_head_trickling_in_is_cut_off_after_the_head_deadline(router):
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    answer = b""
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as s:
        deadline = time.monotonic() + 20
        for byte in head:
            if time.monotonic() > deadline:
                break
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.25)
            s.setblocking(False)
            try:
                answer += s.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
            finally:
                s.setblocking(True)
            if answer:
                break
    assert status_of(answer) == 408
    assert b"longer than 10 s" in answer
