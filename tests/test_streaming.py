"""Streams reach the client as the provider sends them, not when the answer is complete."""

from __future__ import annotations

import time

import httpx

from iron_runtime.testing import Fault

PAUSE = 0.25  # between the emulator's SSE events


def test_openai_stream_first_chunk_arrives_long_before_the_last_is_sent(oai, openai_emu):
    openai_emu.inject(Fault(chunk_delay=PAUSE))
    arrivals = []
    stream = oai.chat.completions.create(
        model="gpt-4o",
        stream=True,
        messages=[{"role": "user", "content": "one two three four five six"}],
    )
    for _chunk in stream:
        arrivals.append(time.monotonic())
    sent = openai_emu.events_sent
    assert len(sent) >= 8
    # the first chunk was in the client's hands while the emulator still had seconds to go
    assert arrivals[0] < sent[-1] - 5 * PAUSE
    # and every chunk arrived within a fraction of the pause after it was sent
    assert arrivals[1] - sent[1] < PAUSE / 2


def test_anthropic_stream_events_arrive_one_by_one(claude, anthropic_emu):
    anthropic_emu.inject(Fault(chunk_delay=PAUSE))
    arrivals = []
    with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "a b c d e"}],
    ) as stream:
        for _event in stream:
            arrivals.append(time.monotonic())
    sent = anthropic_emu.events_sent
    assert arrivals[0] < sent[-1] - 5 * PAUSE


def test_client_hanging_up_mid_stream_leaves_the_router_serving(router, oai, openai_emu):
    openai_emu.inject(Fault(chunk_delay=0.2))
    with httpx.stream(
        "POST",
        router.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {router.api_key}"},
        json={
            "model": "gpt-4o",
            "stream": True,
            "messages": [{"role": "user", "content": "a b c d e f g h"}],
        },
    ) as r:
        first = next(r.iter_raw())
        assert first.startswith(b"data: ")
    # the client is gone; the next request is served normally
    assert oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    ).choices
