"""The recorder commits each turn's events on the event loop, falls back to the writer
thread when that fails, and has the writer checkpoint the log."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from iron_runtime.analytics import LlmRequestCompleted
from iron_runtime.analytics import recorder as recorder_module
from iron_runtime.analytics.recorder import Recorder


def event(i: int) -> LlmRequestCompleted:
    return LlmRequestCompleted(model="gpt-4o", provider="openai", request_id=f"r{i}")


def writer_settled(rec: Recorder) -> None:
    """Wait (bounded) until the writer's first prune, which it runs as it starts and which
    holds the file's lock, has ended: a commit on the loop meanwhile would be refused."""
    deadline = time.monotonic() + 5
    while rec.writer._next_prune == 0.0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert rec.writer._next_prune > 0.0


async def checkpoints_reach(rec: Recorder, n: int) -> None:
    """Wait (bounded) until the writer has run ``n`` checkpoints."""
    for _ in range(250):
        if rec.stats()["outbox"]["writer"]["checkpoints"] == n:
            break
        await asyncio.sleep(0.02)
    assert rec.stats()["outbox"]["writer"]["checkpoints"] == n


def stored(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM events").fetchone()[0]


def test_one_turns_events_are_committed_together_before_their_futures_resolve(tmp_path):
    rec = Recorder()
    rec.open(tmp_path)

    async def main() -> None:
        rec.start("", "", 5.0)
        writer_settled(rec)
        futures = [rec.record(event(i)) for i in range(5)]  # one turn of the loop
        assert stored(tmp_path / "analytics.sqlite3") == 0 and not any(f.done() for f in futures)
        await asyncio.gather(*futures)
        assert stored(tmp_path / "analytics.sqlite3") == 5  # on disk once they resolve
        await rec.record(event(5))

    asyncio.run(main())
    writer = rec.stats()["outbox"]["writer"]
    assert (writer["loop_commits"], writer["committed"], writer["loop_failures"]) == (2, 6, 0)
    rec.stop(0)


def test_a_locked_outbox_hands_the_events_to_the_writer_which_commits_them_later(tmp_path):
    rec = Recorder()
    rec.open(tmp_path)
    path = tmp_path / "analytics.sqlite3"
    blocker = sqlite3.connect(path, isolation_level=None)

    async def main() -> None:
        rec.start("", "", 5.0)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            await asyncio.wait_for(rec.record(event(1)), 5)  # bounded: goes ahead
        finally:
            blocker.execute("ROLLBACK")
        await asyncio.wait_for(rec.record(event(2)), 5)  # the writer's turn meanwhile

    asyncio.run(main())
    writer = rec.stats()["outbox"]["writer"]
    assert writer["loop_failures"] == 1 and writer["answered_before_commit"] == 1
    rec.stop(0)
    blocker.close()
    assert stored(path) == 2  # none lost


def test_the_writer_checkpoints_and_empties_the_log_of_the_loops_commits(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "CHECKPOINT_CHECK_EVERY", 10)
    monkeypatch.setattr(recorder_module, "CHECKPOINT_WAL_BYTES", 1)
    rec = Recorder()
    rec.open(tmp_path)

    async def main() -> None:
        rec.start("", "", 5.0)
        writer_settled(rec)
        for n in range(1, 4):
            for i in range(10):
                await rec.record(event(10 * n + i))  # a turn, and a commit, each
            await checkpoints_reach(rec, n)  # the writer thread runs the one asked for

    asyncio.run(main())
    writer = rec.stats()["outbox"]["writer"]
    assert writer["loop_commits"] == 30 and writer["committed"] == 30
    assert rec.outbox.wal_size() < 64 * 1024  # emptied by the last checkpoint, 10 commits ago
    rec.stop(0)


def test_commits_return_to_the_loop_as_soon_as_the_writers_checkpoint_ends(tmp_path):
    rec = Recorder()
    rec.open(tmp_path)

    async def main() -> None:
        rec.start("", "", 5.0)
        writer_settled(rec)
        await rec.record(event(1))  # on the loop
        rec._loop_after = float("inf")  # as after a commit the checkpoint's lock refused
        await asyncio.wait_for(rec.record(event(2)), 5)  # so this one goes to the writer
        assert rec.stats()["outbox"]["writer"]["loop_commits"] == 1
        rec.writer.request_checkpoint()
        await checkpoints_reach(rec, 1)
        await rec.record(event(3))  # the checkpoint has ended: back on the loop
        assert rec.stats()["outbox"]["writer"]["loop_commits"] == 2

    asyncio.run(main())
    assert stored(tmp_path / "analytics.sqlite3") == 3
    rec.stop(0)
