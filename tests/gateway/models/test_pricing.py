"""Pricing model calls: the bundled price table, cache rates, overrides, free providers."""

from __future__ import annotations

from decimal import Decimal

import pytest
from genai_prices import data_snapshot

from corral.errors import ModelPriceUnknown
from corral.gateway.models import Price, Usage, model_price, price_call, settings_override
from corral.settings import QuotaSettings


def test_cached_prompt_tokens_are_priced_at_the_cache_read_rate() -> None:
    # gpt-4o in the bundled table: $2.50 input, $1.25 cached input, $10 output per Mtok.
    usage = Usage(input_tokens=1000, output_tokens=100, cache_read_tokens=400)

    cost = price_call("openai", "gpt-4o", usage, None)

    assert (
        cost
        == Decimal("600") * Decimal("2.5") / 10**6
        + Decimal("400") * Decimal("1.25") / 10**6
        + Decimal("100") * Decimal("10") / 10**6
    )
    assert cost == Decimal("0.003")
    assert cost < price_call("openai", "gpt-4o", Usage(input_tokens=1000, output_tokens=100), None)


def test_cache_writes_are_priced_at_the_cache_write_rate() -> None:
    # claude-3-5-sonnet: $3 input, $3.75 cache write, $0.30 cache read, $15 output per Mtok.
    usage = Usage(
        input_tokens=10_000, output_tokens=1000, cache_read_tokens=2000, cache_write_tokens=5000
    )
    rates = model_price("anthropic", "claude-3-5-sonnet-latest")

    cost = price_call("anthropic", "claude-3-5-sonnet-latest", usage, None)

    assert (rates.input_usd_per_mtok, rates.cache_write_usd_per_mtok) == (
        Decimal("3"),
        Decimal("3.75"),
    )
    expected = (3000 * Decimal(3) + 2000 * Decimal("0.3") + 5000 * Decimal("3.75")) / 10**6
    assert cost == expected + 1000 * Decimal(15) / 10**6


def test_an_override_wins_and_prices_cache_tokens_at_its_rates() -> None:
    override = Price(
        Decimal("1"),
        Decimal("4"),
        cache_read_usd_per_mtok=Decimal("0.1"),
        cache_write_usd_per_mtok=None,
    )
    usage = Usage(input_tokens=2_000_000, output_tokens=500_000, cache_read_tokens=1_000_000)

    assert price_call("openai", "gpt-4o", usage, override) == Decimal("1") + Decimal(
        "0.1"
    ) + Decimal("2")
    # A cache-write count without a cache-write rate is priced at the input rate.
    written = Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000)
    assert price_call("openai", "gpt-4o", written, override) == Decimal("1")


def test_an_unknown_model_names_the_override_to_add() -> None:
    with pytest.raises(ModelPriceUnknown) as raised:
        price_call("openai", "no-such-model-xyz", Usage(input_tokens=1), None)

    assert raised.value.model == "openai/no-such-model-xyz"
    assert "prices:" in raised.value.message
    assert "CORRAL_QUOTAS__MODEL_PRICES" in raised.value.message
    with pytest.raises(ModelPriceUnknown):
        model_price("vllm", "my-finetune")


def test_an_unknown_model_is_looked_up_in_the_table_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import genai_prices

    lookups: list[str] = []
    calc_price = genai_prices.calc_price

    def counted(*args: object, **kwargs: object) -> object:
        lookups.append(str(args[1]))
        return calc_price(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(genai_prices, "calc_price", counted)
    name = "uncached-model-for-the-miss-test"

    for _ in range(3):  # every call still refused, the table scanned for the first only
        with pytest.raises(ModelPriceUnknown):
            price_call("vllm", name, Usage(input_tokens=1), None)
        with pytest.raises(ModelPriceUnknown):
            model_price("vllm", name)

    assert lookups == [name]
    # A priced model is still priced (and looked up) every time.
    price_call("openai", "gpt-4o", Usage(input_tokens=1), None)
    price_call("openai", "gpt-4o", Usage(input_tokens=1), None)
    assert lookups == [name, "gpt-4o", "gpt-4o"]


def test_local_and_scripted_calls_cost_nothing_unless_overridden() -> None:
    usage = Usage(input_tokens=10_000, output_tokens=10_000)

    assert price_call("local", "smollm2-135m", usage, None) == 0
    assert price_call("scripted", "test", usage, None) == 0
    assert price_call("scripted", "test", usage, Price(Decimal(1), Decimal(1))) == Decimal("0.02")


def test_settings_prices_are_an_override_source() -> None:
    settings = QuotaSettings.model_validate(
        {
            "model_prices": {
                "openai/gpt-4o": {
                    "input_usd_per_mtok": "5",
                    "output_usd_per_mtok": "20",
                    "cache_read_usd_per_mtok": "0.5",
                }
            }
        }
    )

    override = settings_override(settings.model_prices, "openai", "gpt-4o")

    assert override == Price(Decimal(5), Decimal(20), Decimal("0.5"), None)
    assert settings_override(settings.model_prices, "openai", "gpt-4o-mini") is None


def test_prices_come_from_the_bundled_snapshot_only() -> None:
    price_call("openai", "gpt-4o", Usage(input_tokens=1), None)

    snapshot = data_snapshot.get_snapshot()
    assert snapshot.from_auto_update is False
    assert snapshot is data_snapshot._bundled_snapshot()
    assert data_snapshot._custom_snapshot is None  # the updater (which fetches) never ran


def test_inconsistent_cache_counts_are_clamped_to_the_prompt() -> None:
    usage = Usage(input_tokens=100, output_tokens=0, cache_read_tokens=500)

    assert price_call("openai", "gpt-4o", usage, None) == 100 * Decimal("1.25") / 10**6
