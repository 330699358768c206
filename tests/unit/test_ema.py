"""FTD's moving average of the synthetic images: its definition on a tiny case."""

import pytest

from tesla.domain.config import ConfigError, DistillConfig
from tesla.domain.ema import ImageEMA, ema_for
from tests.unit.fakes import V


def test_update_is_ftds_formula():
    ema = ImageEMA(0.9)
    keep = 1.0 - 0.9  # written as FTD writes it: (1 - decay), not 0.1
    assert list(ema.update(V([1.0, -2.0]), V([3.0, 4.0]))) == [0.9 * 1.0 + keep * 3.0, 0.9 * -2.0 + keep * 4.0]


def test_starts_at_the_initial_images_with_no_bias_correction():
    ema = ImageEMA(0.5)
    x0 = V([2.0, 4.0])
    avg = ema.start(x0)
    assert avg == x0  # the initial images themselves, not zeros
    xs = [V([0.0, 0.0]), V([4.0, 8.0]), V([8.0, 0.0])]
    for x in xs:
        avg = ema.update(avg, x)
    # closed form: d^t x0 + (1 - d) sum_k d^(t-k) x_k
    d, t = 0.5, len(xs)
    expected = [d ** t * x0[i] + sum((1 - d) * d ** (t - 1 - k) * xs[k][i] for k in range(t)) for i in range(2)]
    assert list(avg) == pytest.approx(expected, rel=1e-15)
    assert list(avg) == [5.25, 2.5]  # (2, 4) -> (1, 2) -> (2.5, 5) -> (5.25, 2.5)


def test_constant_images_are_a_fixed_point():
    ema, x = ImageEMA(0.999), V([0.25, -1.5])
    avg = ema.start(x)
    for _ in range(50):
        avg = ema.update(avg, x)
    assert list(avg) == pytest.approx(list(x), rel=1e-12)


def test_config_turns_it_on_and_off():
    assert ema_for(DistillConfig()) is None
    assert ema_for(DistillConfig(ema_decay=0)) is None
    assert ema_for(DistillConfig(ema_decay=0.0)) is None
    assert ema_for(DistillConfig(ema_decay=0.9995)) == ImageEMA(0.9995)
    for bad in (1.0, -0.1, 2, True, "0.9"):
        with pytest.raises(ConfigError, match="ema_decay"):
            DistillConfig(ema_decay=bad)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            ImageEMA(bad)
