"""train.ema_decay is the decay a run uses: with train.ema_warmup, diffusers' warm-up min(decay, n / (n + 9)) at the
n-th update (0 at the first: the EMA starts as a copy); without it, the decay itself from the first update. The
decay of each logged step is in metrics.jsonl."""

import pytest
import torch
from runs import metric_rows, tiny_run

from film_diffusion.training.ema import RunEMA


def averaged(values: list[float], decay: float, warmup: bool) -> tuple[float, list[float]]:
    """The EMA of a one-number parameter that takes ``values`` after each update, and the decay of each update."""
    weight = torch.nn.Parameter(torch.tensor([values[0]]))
    ema = RunEMA([weight], decay=decay, warmup=warmup)
    decays = []
    for value in values[1:]:
        weight.data.fill_(value)
        ema.step([weight])
        decays.append(ema.last_decay)
    return ema.shadow_params[0].item(), decays


def test_without_warm_up_the_decay_is_the_configured_one_from_the_first_update():
    value, decays = averaged([0.0, 1.0, 2.0], decay=0.5, warmup=False)
    assert decays == [0.5, 0.5]
    assert value == pytest.approx(0.5 * (0.5 * 0.0 + 0.5 * 1.0) + 0.5 * 2.0)


def test_with_warm_up_the_decay_climbs_to_the_configured_one():
    value, decays = averaged([0.0, 1.0, 2.0, 3.0], decay=0.999, warmup=True)
    assert decays == [0.0, pytest.approx(2 / 11), pytest.approx(3 / 12)]
    first = 1.0  # the first update copies the weights
    assert value == pytest.approx((3 / 12) * ((2 / 11) * first + (9 / 11) * 2.0) + (9 / 12) * 3.0)
    weight = torch.nn.Parameter(torch.zeros(1))
    ema = RunEMA([weight], decay=0.999, warmup=True)
    ema.optimization_step = 2500
    assert ema.last_decay == pytest.approx(2500 / 2509)  # the quickstart's last update: 0.9964, not 0.999


@pytest.mark.parametrize(("warmup", "expected"), [(True, [0.0, 2 / 11, 3 / 12]), (False, [0.9, 0.9, 0.9])])
def test_a_run_logs_the_decay_it_used(tmp_path, warmup, expected):
    run = tiny_run(tmp_path / "run", "train.max_steps=3", "train.ema_decay=0.9", f"train.ema_warmup={warmup}")
    assert [row["ema_decay"] for row in metric_rows(run)] == pytest.approx(expected)
