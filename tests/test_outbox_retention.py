"""Bounded state: the outbox keeps events for a retention period and hourly totals beyond it.

Old sent events (and, without a control server, old pending ones) are folded into the
``folded`` table and deleted in one transaction: every figure of ``stats()`` stays the same.
With a server, a pending event is never folded before it is delivered. Time is injected
(``now_ms``), never slept; the file size after many events stays close to the size of the
events retained.
"""

from __future__ import annotations

import argparse
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from iron_runtime import commands
from iron_runtime.analytics import LlmRequestCompleted, LlmRequestFailed, Outbox, SyncWorker
from iron_runtime.analytics import outbox as outbox_module
from iron_runtime.analytics.outbox import HOUR_MS, RETENTION_S, OutboxWriter
from iron_runtime.testing import ControlServerEmulator

from .conftest import wait_for

NOW = 1_750_000_000_000 - 1_750_000_000_000 % HOUR_MS  # an hour boundary (UTC)
FIGURES = ("totals", "by_model", "by_provider", "by_day")
MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4")]


def event(i: int, ts: int):
    provider, model = MODELS[i % len(MODELS)]
    if i % 7 == 0:
        return LlmRequestFailed(
            provider=provider, model=model, timestamp_ms=ts, error_code="500", cost_micros=i % 5
        )
    return LlmRequestCompleted(
        provider=provider,
        model=model,
        timestamp_ms=ts,
        input_tokens=100 + i,
        output_tokens=i % 50,
        cost_micros=1000 + i,
        request_id=f"req_{i:024d}",
        latency_ms=812.5,
    )


def events(n: int, start: int, step: int) -> list:
    return [event(i, start + i * step) for i in range(n)]


def figures(ob: Outbox, since: int | None = None) -> dict:
    data = ob.stats(recent=0, since=since)
    return {k: data[k] for k in FIGURES}


def mark(ob: Outbox, evs: list, state: str = "sent") -> None:
    ob.mark_many([(e.event_id, state, None) for e in evs])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "analytics.sqlite3"


def test_defaults_and_bad_retention(path):
    ob = Outbox(path)
    try:
        assert ob.retention_s == RETENTION_S == 7 * 86_400
        assert ob.keep_pending is True
    finally:
        ob.close()
    with pytest.raises(ValueError):
        Outbox(path, retention_s=-1)
    ob = Outbox(path, retention_s=None)
    try:
        ob.add(events(10, NOW - 10**12, 1000))
        mark(ob, [])
        assert ob.prune(now_ms=NOW) == 0  # None: kept for ever
    finally:
        ob.close()


def test_old_sent_events_are_folded_and_every_figure_is_unchanged(path):
    ob = Outbox(path, retention_s=3600)
    try:
        old = events(3000, NOW - 3 * 86_400_000, 61_000)  # 3 days ago, over about 2 days
        new = events(200, NOW - 1_800_000, 5000)  # the last half hour
        ob.add(old + new)
        mark(ob, old[:2500] + new[:100])
        before = figures(ob)
        assert before["totals"]["requests"] == 3200

        assert ob.prune(now_ms=NOW) == 2500
        counts = ob.counts()
        assert counts == {"pending": 600, "sent": 100, "parked": 0}  # old pending kept
        assert figures(ob) == before
        data = ob.stats(recent=5)
        assert data["outbox"]["folded"] == 2500
        assert [e["event_id"] for e in data["recent"]] == [e.event_id for e in new[::-1][:5]]
        assert ob.prune(now_ms=NOW) == 0  # nothing more due
    finally:
        ob.close()


def test_pending_events_are_kept_with_a_server_and_folded_without(path):
    ob = Outbox(path, retention_s=60, keep_pending=True)
    try:
        old = events(500, NOW - 86_400_000, 1000)
        ob.add(old)
        mark(ob, old[:10], "parked")
        before = figures(ob)
        assert ob.prune(now_ms=NOW) == 0
        assert ob.counts() == {"pending": 490, "sent": 0, "parked": 10}

        ob.keep_pending = False  # no control server: nobody will ever take them
        assert ob.prune(now_ms=NOW) == 490
        assert ob.counts() == {"pending": 0, "sent": 0, "parked": 10}  # parked: never folded
        assert figures(ob) == before
    finally:
        ob.close()


def test_a_prune_in_small_chunks_and_equal_timestamps_loses_nothing(path, monkeypatch):
    monkeypatch.setattr(outbox_module, "PRUNE_CHUNK", 7)
    ob = Outbox(path, retention_s=0, keep_pending=False)
    try:
        evs = [event(i, NOW - 100_000 + (i // 10) * 1000) for i in range(300)]  # 10 a ms
        ob.add(evs)
        before = figures(ob)
        folded = ob.prune(now_ms=NOW, limit=20)
        assert 20 <= folded < 30  # the last millisecond's events go together
        assert ob.counts()["pending"] == 300 - folded
        assert figures(ob) == before
        assert ob.prune(now_ms=NOW) == 300 - folded
        assert figures(ob) == before
    finally:
        ob.close()


def test_since_is_exact_for_kept_events_and_by_the_hour_for_folded_ones(path):
    ob = Outbox(path, retention_s=86_400, keep_pending=False)
    try:
        hour = NOW - 10 * 86_400_000  # folded
        old = [event(1, hour + m * 60_000) for m in range(60)]  # one a minute for an hour
        recent = [event(1, NOW - 3_600_000 + m * 60_000) for m in range(60)]  # kept
        ob.add(old + recent)
        half = recent[30].timestamp_ms
        assert figures(ob, since=half)["totals"]["requests"] == 30
        assert figures(ob, since=old[30].timestamp_ms)["totals"]["requests"] == 90
        ob.prune(now_ms=NOW)
        assert ob.counts()["pending"] == 60
        assert figures(ob, since=half)["totals"]["requests"] == 30  # exact
        # inside the folded hour: the whole hour counts
        assert figures(ob, since=old[30].timestamp_ms)["totals"]["requests"] == 120
        assert figures(ob, since=hour)["totals"]["requests"] == 120
        assert figures(ob, since=hour + HOUR_MS)["totals"]["requests"] == 60
        assert figures(ob, since=NOW)["totals"]["requests"] == 0
    finally:
        ob.close()


def test_the_writer_prunes_on_its_thread_at_start_and_periodically(path):
    ob = Outbox(path, retention_s=3600, keep_pending=False)
    old = events(400, NOW - 86_400_000, 1000)
    ob.add(old)
    before = figures(ob)
    writer = OutboxWriter(ob, prune_every=0.05)
    try:
        assert wait_for(lambda: ob.counts()["pending"] == 0)  # at start
        writer.submit(LlmRequestCompleted(provider="openai", model="gpt-4o", input_tokens=5))
        assert wait_for(lambda: writer.stats()["committed"] == 1)
        ob.add(events(50, NOW - 86_400_000, 1000))  # more, older than the retention
        assert wait_for(lambda: ob.counts()["pending"] == 1)  # periodically
        assert writer.stats()["pruned"] == 450 and writer.stats()["prune_failures"] == 0
    finally:
        writer.close()
        ob.close()
    ob = Outbox(path)
    try:
        totals = figures(ob)["totals"]
        assert totals["requests"] == before["totals"]["requests"] + 51
    finally:
        ob.close()


def test_reading_never_prunes(path, capsys):
    ob = Outbox(path, retention_s=60, keep_pending=False)
    try:
        ob.add(events(100, NOW - 86_400_000, 1000))
        assert ob.prune(now_ms=NOW - 86_400_000 + 50_000 + 60_000) == 50
        before = figures(ob)
    finally:
        ob.close()
    data = commands.folder_stats(path.parent)
    assert {k: data[k] for k in FIGURES} == before
    assert data["outbox"] == {"pending": 50, "sent": 0, "parked": 0, "folded": 50}
    args = argparse.Namespace(state_dir=str(path.parent), since=None, recent=0, json=False)
    args.by = "model"
    assert commands.stats(args) == 0
    out = capsys.readouterr().out
    assert "50 pending" in out and "50 older ones kept as hourly totals" in out
    [total] = [line.split() for line in out.splitlines() if line.startswith("total ")]
    assert total[:2] == ["total", "100"]
    summary = commands.session_summary(path.parent, 0)
    assert summary["cumulative"] == before["totals"]
    assert commands.folder_stats(path.parent)["outbox"]["pending"] == 50  # still there


def test_with_a_server_each_event_is_delivered_once_then_folded(path):
    ob = Outbox(path, retention_s=60, keep_pending=True)
    old = events(600, NOW - 86_400_000, 1000)
    ob.add(old)
    before = figures(ob)
    stop = threading.Event()

    def pruner() -> None:  # as often as it can, while the sync runs
        while not stop.is_set():
            ob.prune(now_ms=NOW)

    with ControlServerEmulator(record=False) as control:
        control.add_agent("ic_agent_1", "openai", "sk-x", 10**9)
        control.latency = 0.005
        thread = threading.Thread(target=pruner)
        thread.start()
        worker = SyncWorker(ob, control.url, "ic_agent_1", concurrency=8)
        try:
            assert worker.sync_once(deadline=time.monotonic() + 120)
        finally:
            worker.stop(1.0)
            stop.set()
            thread.join()
        assert set(control.events) == {e.event_id for e in old}
        assert control.event_posts == 600  # none sent twice, none lost
    try:
        ob.prune(now_ms=NOW)
        assert ob.counts() == {"pending": 0, "sent": 0, "parked": 0}
        assert figures(ob) == before
    finally:
        ob.close()


def _legacy(path: Path) -> None:
    """An outbox file made before retention: no auto-vacuum."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(outbox_module.SCHEMA.split("CREATE TABLE IF NOT EXISTS folded")[0])
    db.close()


@pytest.mark.parametrize("kind", ["new", "legacy"])
def test_the_file_stays_bounded(tmp_path, kind):
    """200,000 events, 1,000 a batch, one every second, a retention of 5,000 s, a prune after
    each batch: the file ends close to the size of a fresh one holding the events kept."""
    path = tmp_path / "analytics.sqlite3"
    if kind == "legacy":
        _legacy(path)
    ob = Outbox(path, retention_s=5000, keep_pending=False)
    start = NOW - 200_000_000
    total = 0
    largest = 0
    for b in range(200):
        batch = events(1000, start + b * 1_000_000, 1000)
        rows, _ = ob.rows(batch)
        ob.insert(rows)  # the writer's path
        total += 1000
        ob.prune(now_ms=batch[-1].timestamp_ms)
        largest = max(largest, ob.file_size())
    kept = ob.counts()["pending"]
    assert 5000 <= kept <= 6000
    assert figures(ob)["totals"]["requests"] == total
    ob.close()
    size = path.stat().st_size

    reference = tmp_path / "reference.sqlite3"
    ref = Outbox(reference)
    ref.add(events(kept, start, 1000))
    ref.close()
    bound = reference.stat().st_size * 1.5 + 256 * 1024  # + the hourly totals
    assert size < bound, (size, reference.stat().st_size)
    # while open, the write-ahead log stays within its limit
    assert largest < bound + outbox_module.WAL_LIMIT_BYTES + 4 * 1024 * 1024


def test_a_body_that_is_not_json_does_not_stop_a_prune(path):
    ob = Outbox(path, retention_s=60, keep_pending=False)
    try:
        ob.add(events(20, NOW - 86_400_000, 1000))
        ob.insert([("broken", NOW - 86_400_000, "not json")])
        assert ob.prune(now_ms=NOW) == 21
        data = ob.stats(recent=0)
        assert data["totals"]["requests"] == 21 and data["by_model"]["?"]["requests"] == 1
    finally:
        ob.close()
