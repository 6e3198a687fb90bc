"""The built-in price table prices every model a user of the original or of LiteLLM can name:
the original's 126 priced models, LiteLLM's OpenAI and Anthropic rows (retired and dated
models, fine-tunes, embeddings, moderation, audio and realtime), fine-tuned model ids, and
embeddings reserved by their input and settled from their usage, through a real router."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import anthropic
import openai
import pytest

from iron_runtime.cost import embedding_input_tokens, is_embeddings
from iron_runtime.pricing import PriceTable
from iron_runtime.tokens import count_text

from .conftest import make_router

ROOT = Path(__file__).resolve().parent.parent
PRICES = PriceTable.builtin()
TABLE = json.loads((ROOT / "iron_runtime" / "prices.json").read_text("utf-8"))

# Every model the original (iron_runtime 0.4.0, module/iron_cost/asset/pricing.json) priced.
# Its file had one more row, openai/container, priced per code-interpreter session at $0,
# which the original itself filtered out.
ORIGINAL_MODELS = """
chatgpt-4o-latest claude-3-5-haiku-20241022 claude-3-5-haiku-latest claude-3-5-sonnet-20240620
claude-3-5-sonnet-20241022 claude-3-5-sonnet-latest claude-3-7-sonnet-20250219
claude-3-7-sonnet-latest claude-3-haiku-20240307 claude-3-opus-20240229 claude-3-opus-latest
claude-4-opus-20250514 claude-4-sonnet-20250514 claude-haiku-4-5 claude-haiku-4-5-20251001
claude-opus-4-1 claude-opus-4-1-20250805 claude-opus-4-20250514 claude-opus-4-5
claude-opus-4-5-20251101 claude-sonnet-4-20250514 claude-sonnet-4-5 claude-sonnet-4-5-20250929
codex-mini-latest ft:gpt-3.5-turbo ft:gpt-3.5-turbo-0125 ft:gpt-3.5-turbo-0613
ft:gpt-3.5-turbo-1106 ft:gpt-4-0613 ft:gpt-4.1-2025-04-14 ft:gpt-4.1-mini-2025-04-14
ft:gpt-4.1-nano-2025-04-14 ft:gpt-4o-2024-08-06 ft:gpt-4o-2024-11-20 ft:gpt-4o-mini-2024-07-18
ft:o4-mini-2025-04-16 gpt-3.5-turbo gpt-3.5-turbo-0125 gpt-3.5-turbo-0301 gpt-3.5-turbo-0613
gpt-3.5-turbo-1106 gpt-3.5-turbo-16k gpt-3.5-turbo-16k-0613 gpt-4 gpt-4-0125-preview gpt-4-0314
gpt-4-0613 gpt-4-1106-preview gpt-4-1106-vision-preview gpt-4-32k gpt-4-32k-0314 gpt-4-32k-0613
gpt-4-turbo gpt-4-turbo-2024-04-09 gpt-4-turbo-preview gpt-4-vision-preview gpt-4.1
gpt-4.1-2025-04-14 gpt-4.1-mini gpt-4.1-mini-2025-04-14 gpt-4.1-nano gpt-4.1-nano-2025-04-14
gpt-4.5-preview gpt-4.5-preview-2025-02-27 gpt-4o gpt-4o-2024-05-13 gpt-4o-2024-08-06
gpt-4o-2024-11-20 gpt-4o-audio-preview gpt-4o-audio-preview-2024-10-01
gpt-4o-audio-preview-2024-12-17 gpt-4o-audio-preview-2025-06-03 gpt-4o-mini gpt-4o-mini-2024-07-18
gpt-4o-mini-audio-preview gpt-4o-mini-audio-preview-2024-12-17 gpt-4o-mini-realtime-preview
gpt-4o-mini-realtime-preview-2024-12-17 gpt-4o-mini-search-preview
gpt-4o-mini-search-preview-2025-03-11 gpt-4o-realtime-preview gpt-4o-realtime-preview-2024-10-01
gpt-4o-realtime-preview-2024-12-17 gpt-4o-realtime-preview-2025-06-03 gpt-4o-search-preview
gpt-4o-search-preview-2025-03-11 gpt-5 gpt-5-2025-08-07 gpt-5-chat gpt-5-chat-latest gpt-5-codex
gpt-5-mini gpt-5-mini-2025-08-07 gpt-5-nano gpt-5-nano-2025-08-07 gpt-5-pro gpt-5-pro-2025-10-06
gpt-5.1 gpt-5.1-2025-11-13 gpt-5.1-chat-latest gpt-5.1-codex gpt-5.1-codex-max gpt-5.1-codex-mini
gpt-realtime gpt-realtime-2025-08-28 gpt-realtime-mini o1 o1-2024-12-17 o1-mini
o1-mini-2024-09-12 o1-preview o1-preview-2024-09-12 o1-pro o1-pro-2025-03-19 o3 o3-2025-04-16
o3-deep-research o3-deep-research-2025-06-26 o3-mini o3-mini-2025-01-31 o3-pro o3-pro-2025-06-10
o4-mini o4-mini-2025-04-16 o4-mini-deep-research o4-mini-deep-research-2025-06-26
""".split()

# One or more models of each kind of OpenAI and Anthropic row LiteLLM prices per token.
LITELLM_KINDS = {
    "current chat": ["gpt-4o", "gpt-5.4", "claude-sonnet-4-6", "claude-opus-4-7"],
    "dated": ["gpt-4o-2024-11-20", "claude-haiku-4-5-20251001", "o3-2025-04-16"],
    "retired": ["claude-3-haiku-20240307", "gpt-4-32k-0613", "o1-preview", "gpt-4.5-preview"],
    "fine-tune": ["ft:gpt-4o-mini-2024-07-18", "ft:gpt-3.5-turbo", "ft:davinci-002"],
    "legacy completion": ["gpt-3.5-turbo-instruct", "davinci-002", "babbage-002"],
    "embedding": ["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"],
    "moderation": ["omni-moderation-latest", "text-moderation-latest"],
    "audio": ["gpt-4o-audio-preview", "gpt-audio", "gpt-4o-mini-audio-preview-2024-12-17"],
    "realtime": ["gpt-realtime", "gpt-4o-realtime-preview", "gpt-realtime-mini"],
    "responses only": ["o1-pro", "computer-use-preview", "o3-deep-research"],
    "alias": ["claude-sonnet-latest", "gpt-sol-latest"],
}


def expected_micros(model: str, prompt: int, output: int = 0) -> int:
    p = PRICES.lookup(model)
    return math.ceil((prompt * p.input + output * p.output) / 1_000_000)


def spent_micros(router) -> int:
    return router._admin("GET", "status")["budget"]["spent_micros"]


def reserved_micros(router) -> int:
    return router._admin("GET", "status")["budget"]["reserved_micros"]


# -- coverage ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ORIGINAL_MODELS)
def test_every_model_the_original_priced_has_its_own_row(model):
    price = PRICES.lookup(model)
    assert price is not None and price.priced, model
    assert price.model == model  # its own row, not a neighbour found by dropping a suffix
    assert price.max_output_tokens, model


@pytest.mark.parametrize(
    "model", [m for kind in LITELLM_KINDS.values() for m in kind], ids=lambda m: m
)
def test_every_kind_of_litellm_row_is_priced(model):
    price = PRICES.lookup(model)
    assert price is not None and price.priced, model


def test_the_table_records_where_it_comes_from_and_keeps_every_row_it_took():
    source = TABLE["_source"]
    assert source["from"].startswith("LiteLLM ") and source["as_of"]
    history = source["history"]
    assert [h["from"].split(" (")[0] for h in history[-2:]] == ["LiteLLM 1.110.2", "LiteLLM 1.80.0"]
    for merge in history[1:]:
        assert merge["as_of"] and merge["taken"] > 100
        for model in merge["added"]:
            assert PRICES.lookup(model) is not None and PRICES.lookup(model).priced, model
        for models in merge["skipped"].values():
            assert not set(models) & set(TABLE), "a skipped row is in the table"
    rows = [m for m in TABLE if m != "_source"]
    latest = history[-2]  # the last full merge; the one after it only added retired rows
    assert len(rows) >= latest["taken"] + len(history[-1]["added"])
    providers = {row.get("litellm_provider") for row in TABLE.values() if "alias_of" not in row}
    assert providers == {None, "openai", "text-completion-openai", "anthropic"}  # None: _source


def test_rates_are_litellm_s_where_the_original_disagreed():
    # the original: gpt-5-chat at 128,000 output tokens; LiteLLM now says 16,384
    assert PRICES.lookup("gpt-5-chat").max_output_tokens == 16_384
    # and retired rows came with their cache rates, which the original did not have
    p = PRICES.lookup("claude-3-haiku-20240307")
    assert (p.input, p.output, p.cache_read, p.cache_write) == (250_000, 1_250_000, 30_000, 300_000)


def test_the_check_script_passes_on_the_builtin_table():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_prices.py")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout
    assert "embedding 4" in out.stdout and "alias 11" in out.stdout


# -- lookup --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, row",
    [
        ("ft:gpt-4o-mini-2024-07-18:org::abc123", "ft:gpt-4o-mini-2024-07-18"),
        ("ft:gpt-3.5-turbo:org:name:id", "ft:gpt-3.5-turbo"),
        ("ft:gpt-3.5-turbo-0613:acme::8xYz", "ft:gpt-3.5-turbo-0613"),
        ("ft:gpt-4.1-2025-04-14:acme:support:AbC:ckpt-step-100", "ft:gpt-4.1-2025-04-14"),
        ("openai/ft:gpt-4o-2024-08-06:org::x", "ft:gpt-4o-2024-08-06"),
        ("ft:davinci-002:org::x", "ft:davinci-002"),
        ("ft:gpt-4o-mini-2024-07-18", "ft:gpt-4o-mini-2024-07-18"),
    ],
)
def test_a_fine_tuned_model_is_priced_as_its_ft_row(name, row):
    assert PRICES.lookup(name).model == row


def test_a_fine_tune_is_never_priced_as_its_cheaper_base_model():
    tuned = PRICES.lookup("ft:gpt-4o-mini-2024-07-18:org::abc123")
    base = PRICES.lookup("gpt-4o-mini-2024-07-18")
    assert tuned.input == 2 * base.input and tuned.output == 2 * base.output
    # a fine-tune of a base with no ft: row is unpriced (refused under a budget), not cheap
    assert PRICES.lookup("ft:gpt-4o-mini:org::abc123") is None
    assert PRICES.lookup("gpt-4o-mini") is not None


def test_alias_rows_give_the_price_of_the_row_they_name(tmp_path):
    assert TABLE["claude-sonnet-latest"] == {"alias_of": "claude-sonnet-5-5"}
    assert PRICES.lookup("claude-sonnet-latest") == PRICES.lookup("claude-sonnet-5-5")
    assert PRICES.lookup("anthropic/claude-sonnet-latest").model == "claude-sonnet-5-5"
    user = tmp_path / "p.json"
    user.write_text(
        json.dumps(
            {
                "mine": {"alias_of": "gpt-4o-mini"},
                "loop-a": {"alias_of": "loop-b"},
                "loop-b": {"alias_of": "loop-a"},
                "claude-sonnet-latest": {
                    "input_cost_per_token": 1e-6,
                    "output_cost_per_token": 2e-6,
                },
            }
        )
    )
    table = PriceTable.load(user)
    assert table.lookup("mine").model == "gpt-4o-mini"
    assert table.lookup("loop-a") is None  # an alias loop prices nothing
    assert table.lookup("claude-sonnet-latest").input == 1_000_000  # a row replaces an alias
    user.write_text(json.dumps({"bad": {"alias_of": 3}}))
    with pytest.raises(ValueError, match="alias_of"):
        PriceTable.load(user)


def test_litellm_rows_with_no_output_or_whole_float_limits_load(tmp_path):
    user = tmp_path / "p.json"
    user.write_text(
        json.dumps(
            {
                "mod": {
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                    "max_output_tokens": 0,
                    "max_tokens": 0,
                },
                "big": {
                    "input_cost_per_token": 1e-7,
                    "output_cost_per_token": 1e-7,
                    "max_output_tokens": 2000000.0,
                },
            }
        )
    )
    table = PriceTable.load(user)
    assert table.lookup("mod").priced and table.lookup("mod").max_output_tokens is None
    assert table.lookup("big").max_output_tokens == 2_000_000


# -- embeddings: counting ------------------------------------------------------------------


def test_embedding_inputs_are_counted_as_billed():
    model = "text-embedding-3-small"
    text = "Retrieval pipelines embed documents, chunk by chunk."
    assert embedding_input_tokens({"input": text}, model) == count_text(text, "cl100k_base")
    two = ["first chunk of text", "second chunk"]
    assert embedding_input_tokens({"input": two}, model) == sum(
        count_text(t, "cl100k_base") for t in two
    )
    # token ids count as given, however many tokens their digits would be as text
    ids = [100_000, 99_999, 5, 100_255] * 50
    assert embedding_input_tokens({"input": ids}, model) == 200
    assert embedding_input_tokens({"input": [ids, [1, 2, 3]]}, model) == 203
    # extra fields are not input
    body = {"input": "hi", "dimensions": 256, "encoding_format": "base64", "user": "u" * 500}
    assert embedding_input_tokens(body, model) == 1


def test_malformed_embedding_input_is_counted_generously():
    model = "text-embedding-3-small"
    odd = {"input": {"text": "a dict is not an input"}}
    assert embedding_input_tokens(odd, model) >= count_text("a dict is not an input")
    assert embedding_input_tokens({"input": [1, "two", [3, "four"]]}, model) >= 4


@pytest.mark.parametrize(
    "path, yes",
    [
        ("/v1/embeddings", True),
        ("/v1/embeddings/", True),
        ("/v1/embeddings?x=1", True),
        ("/v1/chat/completions", False),
        ("/v1/embeddings/extra", False),
    ],
)
def test_embeddings_path(path, yes):
    assert is_embeddings(path) is yes


# -- through a real router with a budget ---------------------------------------------------


@pytest.fixture
def budget_router(openai_emu, anthropic_emu):
    r = make_router(openai_emu, anthropic_emu, budget=5.0)
    yield r
    r.stop()


def sdk(router):
    return (
        openai.OpenAI(base_url=router.base_url, api_key=router.api_key, max_retries=0),
        anthropic.Anthropic(base_url=router.base_url, api_key=router.api_key, max_retries=0),
    )


TEXT = "Tokenization of antidisestablishmentarianism in retrieval-augmented pipelines " * 20


@pytest.mark.parametrize(
    "value, count",
    [
        (TEXT, len(TEXT.split())),
        ([TEXT, "a second, shorter chunk"], len(TEXT.split()) + 4),
        (list(range(1000, 1600)), 600),
        ([list(range(300)), list(range(5, 205))], 500),
    ],
    ids=["string", "strings", "token-ids", "lists-of-token-ids"],
)
def test_embeddings_are_reserved_and_settled_from_usage(budget_router, openai_emu, value, count):
    oai, _ = sdk(budget_router)
    model = "text-embedding-3-large"
    raw = oai.embeddings.with_raw_response.create(model=model, input=value)
    answer = raw.parse()
    n = 1 if isinstance(value, str) or isinstance(value[0], int) else len(value)
    assert len(answer.data) == n and len(answer.data[0].embedding) == 3072
    assert answer.usage.prompt_tokens == count  # the provider's count (the emulator's)
    cost = expected_micros(model, count)
    assert spent_micros(budget_router) == cost  # settled from usage, no output cost
    assert budget_router.total_spent() == cost / 1e6
    assert raw.headers["x-iron-cost-usd"] == f"{cost / 1e6:.6f}"
    assert reserved_micros(budget_router) == 0
    # the router's own count, which the reservation used, differs for text: the settlement
    # really came from the answer's usage
    if isinstance(value, str):
        estimate = embedding_input_tokens({"input": value}, model)
        assert expected_micros(model, estimate) != cost


def test_an_embedding_reservation_counts_token_ids_as_given_and_no_output(
    openai_emu, anthropic_emu
):
    ids = [100_000 + i for i in range(2000)]  # 4,000+ tokens if they were counted as text
    with make_router(openai_emu, anthropic_emu, budget=0.0002) as router:
        oai, _ = sdk(router)
        with pytest.raises(openai.APIStatusError) as err:
            oai.embeddings.create(model="text-embedding-3-large", input=ids)
        assert err.value.status_code == 402
        assert err.value.code == "insufficient_budget"
        assert "2000 input + 0 output tokens of text-embedding-3-large" in err.value.message
        assert not openai_emu.requests
        # 2,000 tokens at $0.13 per million: $0.00026 does not fit in $0.0002; 1,500 do
        answer = oai.embeddings.create(model="text-embedding-3-large", input=ids[:1500])
        assert answer.usage.prompt_tokens == 1500
        assert spent_micros(router) == expected_micros("text-embedding-3-large", 1500) == 195


def test_embeddings_without_a_budget_are_costed(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu) as router:
        oai, _ = sdk(router)
        oai.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])
        assert spent_micros(router) == expected_micros("text-embedding-3-small", 3)


@pytest.mark.parametrize("model", ["claude-3-haiku-20240307", "claude-sonnet-4-20250514"])
def test_retired_claude_models_are_accepted_and_priced_under_a_budget(budget_router, model):
    _, claude = sdk(budget_router)
    message = claude.messages.create(
        model=model, max_tokens=50, messages=[{"role": "user", "content": "hello there"}]
    )
    usage = message.usage
    assert spent_micros(budget_router) == expected_micros(
        model, usage.input_tokens, usage.output_tokens
    )
    assert spent_micros(budget_router) > 0


def test_retired_and_fine_tuned_openai_models_are_accepted_under_a_budget(budget_router):
    oai, _ = sdk(budget_router)
    total = 0
    for model, row in [
        ("gpt-4-32k", "gpt-4-32k"),
        ("o1-mini", "o1-mini"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini-2024-07-18"),
    ]:
        answer = oai.chat.completions.create(
            model=model, max_tokens=30, messages=[{"role": "user", "content": "hi there"}]
        )
        total += expected_micros(row, answer.usage.prompt_tokens, answer.usage.completion_tokens)
        assert spent_micros(budget_router) == total, model


# -- the update script ----------------------------------------------------------------------


def test_update_script_merges_openai_and_anthropic_rows_and_keeps_retired_ones(tmp_path):
    table = tmp_path / "prices.json"
    table.write_text(
        json.dumps(
            {
                "_source": {"from": "earlier", "as_of": "2026-01-01"},
                "gpt-4o": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-5},
                "gpt-retired": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
            }
        )
    )
    litellm = tmp_path / "model_prices_and_context_window.json"
    chat = {"litellm_provider": "openai", "mode": "chat", "max_output_tokens": 100}
    litellm.write_text(
        json.dumps(
            {
                "sample_spec": {"input_cost_per_token": 0.0},
                "gpt-4o": {
                    **chat,
                    "input_cost_per_token": 2.5e-6,
                    "output_cost_per_token": 1e-5,
                    "input_cost_per_token_batches": 1.25e-6,
                    "supports_vision": True,
                },
                "gpt-new": {**chat, "input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6},
                "gpt-new-latest": {"alias_of": "gpt-new"},
                "azure/gpt-new": {
                    **chat,
                    "litellm_provider": "azure",
                    "input_cost_per_token": 1e-6,
                    "output_cost_per_token": 4e-6,
                },
                "text-embedding-9": {
                    "litellm_provider": "openai",
                    "mode": "embedding",
                    "input_cost_per_token": 1e-8,
                    "output_cost_per_token": 0.0,
                },
                "davinci-009": {
                    "litellm_provider": "text-completion-openai",
                    "mode": "completion",
                    "input_cost_per_token": 2e-6,
                    "output_cost_per_token": 2e-6,
                },
                "claude-x": {
                    "litellm_provider": "anthropic",
                    "mode": "chat",
                    "input_cost_per_token": 3e-6,
                    "output_cost_per_token": 1.5e-5,
                    "cache_creation_input_token_cost": 3.75e-6,
                },
                "gpt-image-9": {
                    "litellm_provider": "openai",
                    "mode": "image_generation",
                    "input_cost_per_token": 5e-6,
                    "output_cost_per_token": 1e-5,
                },
                "whisper-9": {"litellm_provider": "openai", "input_cost_per_second": 1e-4},
            }
        )
    )
    script = str(ROOT / "scripts" / "update_prices.py")
    run = [sys.executable, script, str(litellm), "--table", str(table)]
    out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert "added 5: claude-x, davinci-009, gpt-new, gpt-new-latest, text-embedding-9" in out
    assert "gpt-4o: input_cost_per_token 1e-06 -> 2.5e-06" in out
    assert "kept, not in this file 1: gpt-retired" in out
    data = json.loads(table.read_text())
    assert set(data) == {
        "_source",
        "gpt-4o",
        "gpt-retired",
        "gpt-new",
        "gpt-new-latest",
        "text-embedding-9",
        "davinci-009",
        "claude-x",
    }
    assert data["gpt-4o"] == {
        "input_cost_per_token": 2.5e-6,
        "output_cost_per_token": 1e-5,
        "max_output_tokens": 100,
        "litellm_provider": "openai",
        "mode": "chat",
    }
    assert data["gpt-new-latest"] == {"alias_of": "gpt-new"}
    source = data["_source"]
    assert source["from"] == litellm.name and source["history"][0]["from"] == "earlier"
    merge = source["history"][-1]
    assert merge["taken"] == 6 and merge["changed"] == ["gpt-4o"]
    assert merge["skipped"] == {
        "image generation: priced per image or image token": ["gpt-image-9"],
        "no per-token price": ["whisper-9"],
    }
    assert PriceTable.load(table).lookup("gpt-new-latest").output == 4_000_000

    # an older release adds what the table lacks and changes nothing
    litellm.write_text(
        json.dumps(
            {
                "gpt-4o": {**chat, "input_cost_per_token": 5e-6, "output_cost_per_token": 1.5e-5},
                "gpt-old": {**chat, "input_cost_per_token": 3e-5, "output_cost_per_token": 6e-5},
            }
        )
    )
    out = subprocess.run([*run, "--add-only"], capture_output=True, text=True, check=True).stdout
    assert "added 1: gpt-old" in out and "changed 0" in out
    data = json.loads(table.read_text())
    assert data["gpt-4o"]["input_cost_per_token"] == 2.5e-6 and "gpt-old" in data
    assert data["_source"]["history"][-1]["add_only"] is True

    check = str(ROOT / "scripts" / "check_prices.py")
    ok = subprocess.run([sys.executable, check, str(table), "--against", str(litellm)], text=True)
    assert ok.returncode == 0


def test_check_script_catches_broken_aliases_and_missing_litellm_rows(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            {
                "a": {"alias_of": "nowhere"},
                "b": {"alias_of": "c"},
                "c": {"alias_of": "b"},
                "free": {
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                    "max_output_tokens": 0,
                },
            }
        )
    )
    litellm = tmp_path / "litellm.json"
    litellm.write_text(
        json.dumps(
            {
                "gpt-x": {
                    "litellm_provider": "openai",
                    "mode": "chat",
                    "input_cost_per_token": 1e-6,
                    "output_cost_per_token": 1e-6,
                }
            }
        )
    )
    check = str(ROOT / "scripts" / "check_prices.py")
    out = subprocess.run(
        [sys.executable, check, str(prices), "--against", str(litellm)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "a: alias_of 'nowhere' names no row" in out.stdout
    assert "b: alias_of loops back" in out.stdout
    assert "free:" not in out.stdout  # 0 output tokens for a free-output model is LiteLLM's
    assert "gpt-x: in litellm.json, not in this file" in out.stdout
    assert "4 problem(s)" in out.stdout


def test_anthropic_dash_zero_aliases_are_priced_as_their_dated_rows():
    from iron_runtime.pricing import PriceTable

    table = PriceTable.builtin()
    for alias, dated in (
        ("claude-sonnet-4-0", "claude-sonnet-4-20250514"),
        ("claude-opus-4-0", "claude-opus-4-20250514"),
    ):
        assert table.lookup(alias) == table.lookup(dated)
