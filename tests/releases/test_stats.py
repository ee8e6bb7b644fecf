"""Assignment by hash (deterministic, balanced) and the statistics releases decide on."""

from __future__ import annotations

import hashlib
from collections import Counter
from decimal import Decimal

import pytest

from corral.registry import BUCKETS, Variant, bucket_of, choose_variant
from corral.releases import median, percentile, two_proportion_z_test

# Upper critical values of the chi-square distribution at significance 0.01, by degrees of
# freedom: NIST/SEMATECH e-Handbook of Statistical Methods, section 1.3.6.7.4, "Critical
# Values of the Chi-Square Distribution" (column 0.99 of the upper tail).
CHI_SQUARE_CRITICAL_0_01 = {1: 6.635, 3: 11.345}


def variants(*weights_bp: int) -> list[Variant]:
    return [Variant(f"v{i}", f"id{i}", f"0.1.{i}", w) for i, w in enumerate(weights_bp)]


def chi_square(observed: Counter[str], expected: dict[str, float]) -> float:
    return sum((observed[name] - e) ** 2 / e for name, e in expected.items())


def test_the_bucket_is_sha256_of_split_and_key_mod_10000() -> None:
    expected = int.from_bytes(hashlib.sha256(b"exp_1:user:alice").digest()[:8], "big") % 10_000
    assert bucket_of("exp_1", "user:alice") == expected
    assert bucket_of("exp_1", "user:alice") == bucket_of("exp_1", "user:alice")
    # Another split salts the hash: the same key lands elsewhere (for these ids).
    assert bucket_of("exp_2", "user:alice") != expected


def test_a_key_always_gets_the_same_variant() -> None:
    arms = variants(5_000, 5_000)
    first = [choose_variant(arms, bucket_of("exp_x", f"user:{i}")).name for i in range(500)]
    again = [choose_variant(arms, bucket_of("exp_x", f"user:{i}")).name for i in range(500)]
    assert first == again


@pytest.mark.parametrize("weights", [(5_000, 5_000), (1_000, 2_000, 3_000, 4_000)])
def test_assignment_of_10000_keys_fits_the_weights(weights: tuple[int, ...]) -> None:
    arms = variants(*weights)
    observed = Counter(
        choose_variant(arms, bucket_of("exp_balance", f"run_{i}")).name for i in range(10_000)
    )
    expected = {arm.name: 10_000 * arm.weight_bp / BUCKETS for arm in arms}
    statistic = chi_square(observed, expected)
    assert statistic < CHI_SQUARE_CRITICAL_0_01[len(arms) - 1], (statistic, observed)


def test_a_skewed_assignment_fails_the_chi_square_check() -> None:
    """The check can fail: 52/48 on 10,000 keys is far outside 50/50."""
    observed = Counter({"v0": 5_200, "v1": 4_800})
    assert chi_square(observed, {"v0": 5_000, "v1": 5_000}) > CHI_SQUARE_CRITICAL_0_01[1]


def test_a_zero_weight_variant_gets_nothing_and_weights_must_sum_to_10000() -> None:
    arms = variants(10_000, 0)
    assert {choose_variant(arms, b).name for b in range(BUCKETS)} == {"v0"}
    with pytest.raises(ValueError, match="9999"):
        choose_variant(variants(5_000, 4_999), 9_999)


def test_two_proportion_z_test_matches_a_worked_value() -> None:
    # 45/100 against 60/100: pooled p = 0.525, se = sqrt(0.525 * 0.475 * 0.02) = 0.070622,
    # z = 0.15 / 0.070622 = 2.1240, two-sided p = 2 (1 - Phi(2.1240)) = 0.03367.
    result = two_proportion_z_test(45, 100, 60, 100)
    assert result.z == pytest.approx(2.1240, abs=1e-4)
    assert result.p_value == pytest.approx(0.03367, abs=1e-4)
    assert two_proportion_z_test(60, 100, 45, 100).z == pytest.approx(-2.1240, abs=1e-4)
    assert two_proportion_z_test(0, 10, 0, 10).p_value == 1.0
    with pytest.raises(ValueError):
        two_proportion_z_test(1, 0, 1, 1)


def test_percentile_is_nearest_rank_and_median_is_decimal() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.95) == 95.0
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([], 0.95) is None
    assert median([Decimal("1"), Decimal("3")]) == Decimal("2")
    assert median([Decimal("5"), Decimal("1"), Decimal("2")]) == Decimal("2")
