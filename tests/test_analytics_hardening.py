"""Analytics under hostile input and failing disks, and a sync that keeps up with the router.

No request can stop the outbox: text no UTF-8 store accepts (a lone UTF-16 surrogate, from a
JSON ``\\ud800`` escape in the request or echoed by the upstream, escaped or as raw bytes) is
stored as U+FFFD, a row the database refuses is stored as a minimal failed event, and a
response never waits on a failing or locked outbox for more than a moment. The sync sends
many events at once and still delivers each exactly once.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx
import openai
import pytest

from iron_runtime.analytics import LlmRequestCompleted, LlmRequestFailed, Outbox, SyncWorker
from iron_runtime.analytics.outbox import OutboxWriter
from iron_runtime.testing import ControlServerEmulator, Fault

from .conftest import make_router, wait_for

REPLACEMENT = "\ufffd"


def post_raw(router, path: str, body: bytes) -> httpx.Response:
    """A request whose JSON body is sent as written (the SDKs cannot encode a lone
    surrogate; a JSON ``\\ud800`` escape is valid JSON all the same)."""
    headers = {
        "authorization": f"Bearer {router.api_key}",
        "x-api-key": router.api_key,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    return httpx.post(router.base_url + path, content=body, headers=headers, timeout=15)


def chat_body(model: str) -> bytes:
    return (
        b'{"model": "%s", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'
        % model.encode()
    )


def recorded(router) -> list[dict]:
    return router.stats()["recent"]


@pytest.fixture
def router(openai_emu, anthropic_emu, tmp_path):
    r = make_router(openai_emu, anthropic_emu, state_dir=tmp_path)
    yield r
    r.stop()


# -- item 1: poisoned events, one trigger each -----------------------------------------------


def test_surrogate_in_the_model_to_openai_is_answered_and_recorded(router):
    resp = post_raw(router, "/chat/completions", chat_body("gpt-4o-mini\\ud800"))
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"]
    stats = router.stats()
    assert stats["totals"]["requests"] == 1 and stats["totals"]["failed"] == 0
    assert stats["recent"][0]["model"] == "gpt-4o-mini" + REPLACEMENT
    assert stats["outbox"]["writer"]["repaired"] == 1


def test_surrogate_in_the_model_on_the_gateway_is_recorded_and_the_router_goes_on(router):
    try:
        post_raw(router, "/chat/completions", chat_body("claude-haiku-4-5\\ud800"))
    except httpx.RemoteProtocolError:
        pass  # the gateway's own failure to encode its answer: see the next test
    [event] = recorded(router)
    assert event["model"] == "claude-haiku-4-5" + REPLACEMENT
    assert event["provider"] == "anthropic"
    oai = openai.OpenAI(base_url=router.base_url, api_key=router.api_key, max_retries=0)
    answer = oai.chat.completions.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content
    assert router.stats()["totals"]["requests"] == 2


def test_surrogate_in_the_model_on_the_gateway_gets_its_answer(router):
    resp = post_raw(router, "/chat/completions", chat_body("claude-haiku-4-5\\ud800"))
    assert resp.status_code == 200
    assert router.stats()["totals"]["failed"] == 0


def test_surrogate_in_the_model_on_messages_is_answered_and_recorded(router):
    resp = post_raw(router, "/messages", chat_body("claude-haiku-4-5\\ud800"))
    assert resp.status_code == 200
    assert resp.json()["content"][0]["text"]
    [event] = recorded(router)
    assert event["event_type"] == "llm_request_completed"
    assert event["model"] == "claude-haiku-4-5" + REPLACEMENT


def _unknown_field_body() -> bytes:
    return (
        b'{"model": "claude-haiku-4-5", "max_tokens": 5, "x\\ud800": 1,'
        b' "messages": [{"role": "user", "content": "hi"}]}'
    )


def test_surrogate_echoed_as_an_escape_in_the_upstream_error_is_recorded(router):
    resp = post_raw(router, "/messages", _unknown_field_body())
    assert resp.status_code == 400
    assert b"x\\ud800: Extra inputs are not permitted" in resp.content
    [event] = recorded(router)
    assert event["event_type"] == "llm_request_failed" and event["status"] == 400
    assert event["error_message"] == f"x{REPLACEMENT}: Extra inputs are not permitted"


def test_surrogate_echoed_as_raw_bytes_in_the_upstream_error_is_recorded(router, anthropic_emu):
    anthropic_emu.raw_surrogates = True  # the upstream writes U+D800 as the bytes ED A0 80
    resp = post_raw(router, "/messages", _unknown_field_body())
    assert resp.status_code == 400
    assert b"x\xed\xa0\x80: Extra inputs are not permitted" in resp.content
    [event] = recorded(router)
    assert event["event_type"] == "llm_request_failed" and event["status"] == 400
    assert event["error_message"].endswith(": Extra inputs are not permitted")
    assert "\ud800" not in event["error_message"]


def test_a_poisoned_event_never_stops_the_next_100_requests(router):
    assert post_raw(router, "/chat/completions", chat_body("gpt-4o\\ud800")).status_code == 200
    oai = openai.OpenAI(base_url=router.base_url, api_key=router.api_key, max_retries=0)
    for i in range(100):
        answer = oai.with_options(timeout=15).chat.completions.create(
            model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": f"n{i}"}]
        )
        assert answer.choices[0].message.content
    stats = router.stats()
    assert stats["totals"]["requests"] == 101 and stats["totals"]["failed"] == 0
    assert stats["by_model"]["gpt-4o"]["requests"] == 100
    assert stats["by_model"]["gpt-4o" + REPLACEMENT]["requests"] == 1


def test_a_locked_outbox_delays_a_response_but_never_holds_it(router, tmp_path):
    """Another process holds the outbox's write lock: the answer goes ahead after a bounded
    wait, is counted, and its event is committed once the lock is released."""
    blocker = sqlite3.connect(tmp_path / "analytics.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        resp = post_raw(router, "/chat/completions", chat_body("gpt-4o"))
        assert resp.status_code == 200
        writer = router.stats()["outbox"]["writer"]
        assert writer["answered_before_commit"] == 1
        assert router.stats()["totals"]["requests"] == 0  # not committed yet
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert wait_for(lambda: router.stats()["totals"]["requests"] == 1, timeout=60)


# -- item 1: the writer on its own ---------------------------------------------------------


class Done:
    """Collects ``done(committed)`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.lock = threading.Lock()

    def of(self, name: str):
        def done(committed: bool) -> None:
            with self.lock:
                self.calls.append((name, committed))

        return done


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(tmp_path / "analytics.sqlite3")
    yield ob
    ob.close()


def test_writer_stores_a_poisoned_event_repaired_alongside_the_others(outbox):
    writer = OutboxWriter(outbox)
    done = Done()
    events = [
        LlmRequestCompleted(provider="openai", model="gpt-4o"),
        LlmRequestFailed(provider="openai", model="m\ud800", error_message="bad \udc80 field"),
        LlmRequestCompleted(provider="openai", model="gpt-4o"),
    ]
    for i, e in enumerate(events):
        writer.submit(e, done.of(str(i)))
    assert wait_for(lambda: len(done.calls) == 3)
    writer.submit(LlmRequestCompleted(provider="openai", model="after"), done.of("3"))
    assert wait_for(lambda: len(done.calls) == 4)
    writer.close()
    assert sorted(done.calls) == [("0", True), ("1", True), ("2", True), ("3", True)]
    stored = {e["event_id"]: e for e in outbox.stats(recent=10)["recent"]}
    poisoned = stored[events[1].event_id]
    assert poisoned["model"] == "m" + REPLACEMENT
    assert poisoned["error_message"] == f"bad {REPLACEMENT} field"
    assert writer.stats()["repaired"] == 1 and writer.stats()["committed"] == 4


def test_writer_stores_a_row_the_database_refuses_as_a_minimal_failed_event(outbox):
    writer = OutboxWriter(outbox)
    done = Done()
    bad = LlmRequestCompleted(provider="openai", model="gpt-4o", timestamp_ms=2**70)
    good = [LlmRequestCompleted(provider="openai", model="gpt-4o") for _ in range(3)]
    for i, e in enumerate([good[0], bad, *good[1:]]):
        writer.submit(e, done.of(str(i)))
    assert wait_for(lambda: len(done.calls) == 4)
    writer.close()
    assert all(ok for _, ok in done.calls)
    stored = {e["event_id"]: e for e in outbox.stats(recent=10)["recent"]}
    assert set(stored) == {bad.event_id, *(e.event_id for e in good)}
    assert stored[bad.event_id]["event_type"] == "llm_request_failed"
    assert stored[bad.event_id]["error_code"] == "unstorable_event"
    assert writer.stats()["replaced"] == 1


def test_writer_with_a_full_disk_releases_waiters_and_retries(outbox):
    writer = OutboxWriter(outbox)
    pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
    outbox._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    done = Done()
    events = [LlmRequestCompleted(provider="openai", model="x" * 2000) for _ in range(20)]
    for i, e in enumerate(events):
        writer.submit(e, done.of(str(i)))
    assert wait_for(lambda: len(done.calls) == 20)
    assert not any(ok for _, ok in done.calls)  # released at once, not committed
    assert wait_for(lambda: writer.stats()["write_failures"] >= 2)  # retried
    assert "full" in writer.stats()["last_error"]
    assert outbox.counts()["pending"] == 0
    outbox._db.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert wait_for(lambda: outbox.counts()["pending"] == 20)
    writer.close()
    assert len(done.calls) == 20  # each waiter was told once
    assert writer.stats()["queued"] == 0 and writer.stats()["dropped"] == 0


def test_an_unreadable_row_is_parked_and_the_rest_is_synced(outbox, control):
    control.add_agent("ic_agent_1", "openai", "sk-x", 10**9)
    good = [LlmRequestCompleted(provider="openai", model="gpt-4o") for _ in range(5)]
    outbox.add(good)
    outbox.insert([("broken", 1, '{"event_type": "llm_request_unknown"}')])
    worker = SyncWorker(outbox, control.url, "ic_agent_1", concurrency=4)
    try:
        assert worker.sync_once(deadline=time.monotonic() + 60)
    finally:
        worker.stop(1.0)
    assert set(control.events) == {e.event_id for e in good}
    assert outbox.counts() == {"pending": 0, "sent": 5, "parked": 1}
    [parked] = outbox.parked()
    assert parked["event_id"] == "broken" and parked["reason"].startswith("unreadable")


# -- item 9: a sync that keeps up ----------------------------------------------------------


@pytest.fixture
def control():
    with ControlServerEmulator(record=False) as emu:
        yield emu


def _backlog(outbox: Outbox, n: int) -> set[str]:
    events = [
        LlmRequestCompleted(provider="openai", model="gpt-4o", input_tokens=3, output_tokens=2)
        for _ in range(n)
    ]
    outbox.add(events)
    return {e.event_id for e in events}


def test_a_backlog_is_delivered_exactly_once_with_requests_in_parallel(outbox, control):
    control.add_agent("ic_agent_1", "openai", "sk-x", 10**9)
    ids = _backlog(outbox, 2000)
    control.latency = 0.04
    worker = SyncWorker(outbox, control.url, "ic_agent_1", concurrency=32)
    try:
        assert worker.sync_once(deadline=time.monotonic() + 300)
    finally:
        worker.stop(1.0)
    assert set(control.events) == ids
    assert control.event_posts == 2000  # none sent twice
    assert outbox.counts() == {"pending": 0, "sent": 2000, "parked": 0}
    assert worker.sent == 2000
    assert 1 < control.max_in_flight <= 32


def test_refusals_and_failures_in_parallel_are_parked_or_kept(outbox, control):
    """Three posts answered 400 are parked with the reason; two answered 503 stay pending and
    are sent again by a later pass (the server, which did store them, says duplicate)."""
    control.add_agent("ic_agent_1", "openai", "sk-x", 10**9)
    ids = _backlog(outbox, 300)
    control.latency = 0.01
    refused = {"error": "refused", "code": "INVALID_EVENT"}
    control.inject(
        Fault(status=400, body=refused),
        Fault(status=503, body={}),
        Fault(status=400, body=refused),
        Fault(status=503, body={}),
        Fault(status=400, body=refused),
    )
    worker = SyncWorker(outbox, control.url, "ic_agent_1", concurrency=16)
    try:
        assert not worker.sync_once(deadline=time.monotonic() + 120)  # the 503s end the pass
        for _ in range(10):
            if worker.sync_once(deadline=time.monotonic() + 120):
                break
    finally:
        worker.stop(1.0)
    assert outbox.counts() == {"pending": 0, "sent": 297, "parked": 3}
    parked = outbox.parked()
    assert all(p["reason"].startswith("400: ") and "refused" in p["reason"] for p in parked)
    assert set(control.events) == ids  # the emulator stored even those it answered 400
    assert control.max_in_flight > 1


def test_stop_is_bounded_while_posts_hang(outbox, control):
    control.add_agent("ic_agent_1", "openai", "sk-x", 10**9)
    _backlog(outbox, 200)
    control.latency = 120  # the server takes the posts and never answers in time
    worker = SyncWorker(outbox, control.url, "ic_agent_1", concurrency=8).start()
    assert wait_for(lambda: control.in_flight == 8)
    result: list[bool] = []
    stopper = threading.Thread(target=lambda: result.append(worker.stop(1.0)))
    stopper.start()
    stopper.join(60)
    assert not stopper.is_alive()
    assert result == [False]
    assert outbox.counts() == {"pending": 200, "sent": 0, "parked": 0}  # none marked sent
