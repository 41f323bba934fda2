"""Targets and weights of each objective, the variational term, and the data order across processes."""

import pytest
import torch
from diffusers import DDPMScheduler

from film_diffusion.training.config import ObjectiveConfig
from film_diffusion.training.objectives import diffusion_loss, noise_scheduler, noisy_batch, vb_term
from film_diffusion.training.randomness import ShardedRandom
from film_diffusion.training.streams import RandomOrder, StreamSampler, WindowShuffle


def x0(batch: int = 6) -> torch.Tensor:
    return torch.rand(batch, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_targets_follow_the_schedulers_definitions():
    data = x0()
    for prediction in ("epsilon", "v", "flow"):
        objective = ObjectiveConfig(prediction=prediction)
        scheduler = noise_scheduler(objective)
        batch = noisy_batch(objective, scheduler, data, ShardedRandom(0, 0, 1, torch.device("cpu")))
        noise = torch.randn(data.shape, generator=torch.Generator().manual_seed(0))  # the same first draw
        if prediction == "flow":
            s = (batch.timesteps / 1000).view(-1, 1, 1, 1)
            torch.testing.assert_close(batch.x_t, (1 - s) * data + s * noise)
            torch.testing.assert_close(batch.target, noise - data)
        else:
            torch.testing.assert_close(batch.x_t, scheduler.add_noise(data, noise, batch.timesteps))
            expected = noise if prediction == "epsilon" else scheduler.get_velocity(data, noise, batch.timesteps)
            torch.testing.assert_close(batch.target, expected)
        assert torch.equal(batch.weight, torch.ones(6))


def test_min_snr_weights():
    objective = ObjectiveConfig(prediction="epsilon", min_snr_gamma=5.0)
    scheduler = noise_scheduler(objective)
    batch = noisy_batch(objective, scheduler, x0(64), ShardedRandom(0, 0, 1, torch.device("cpu")))
    alphas = scheduler.alphas_cumprod[batch.timesteps]
    snr = alphas / (1 - alphas)
    torch.testing.assert_close(batch.weight, snr.clamp(max=5.0) / snr)
    assert (batch.weight[snr > 5] < 1).all() and torch.equal(batch.weight[snr <= 5], torch.ones(int((snr <= 5).sum())))


def test_vb_term_is_zero_for_the_true_posterior_and_positive_otherwise():
    scheduler = DDPMScheduler(variance_type="learned_range")
    data, noise = x0(4), torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1, 10, 500, 999])
    x_t = scheduler.add_noise(data, noise, t)
    exact = torch.cat([noise, -torch.ones_like(noise)], dim=1)  # true noise; v = -1: the posterior variance
    assert vb_term(scheduler, exact, x_t, data, t).abs().max() < 1e-5
    wrong_variance = torch.cat([noise, torch.ones_like(noise)], dim=1)  # beta_t: far from the posterior's at small t
    vb = vb_term(scheduler, wrong_variance, x_t, data, t)
    assert (vb[:2] > 1e-3).all() and (vb >= 0).all()
    wrong_variance.requires_grad_(True)
    batch = type("B", (), {})()
    batch.target, batch.x_t, batch.timesteps, batch.weight = noise, x_t, t, torch.ones(4)
    diffusion_loss(wrong_variance, batch, data, scheduler).backward()
    assert wrong_variance.grad[:, 3:].abs().sum() > 0  # the variance learns from the vb term only


ORDERS = {"random": lambda: RandomOrder(10, seed=5), "window": lambda: WindowShuffle([3, 4, 1, 2], window=4, seed=5)}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("world", [2, 4])
def test_processes_split_each_global_micro_batch_and_resume_mid_epoch(world, order):
    length, micro, make = 10, 3, ORDERS[order]
    whole = StreamSampler(make(), micro * world, 0, 1)
    shards = [iter(StreamSampler(make(), micro, rank, world)) for rank in range(world)]
    stream = iter(whole)
    for _ in range(7):  # crosses several epochs
        expected = [next(stream) for _ in range(micro * world)]
        assert [next(s) for s in shards for _ in range(micro)] == expected  # indices and stream positions
    resumed, fresh = iter(StreamSampler(make(), micro, 1, world, start=4)), iter(StreamSampler(make(), micro, 1, world))
    for _ in range(4 * micro):
        next(fresh)
    assert [next(resumed) for _ in range(9)] == [next(fresh) for _ in range(9)]
    for epoch in range(3):
        places = [make()(epoch, offset) for offset in range(length)]  # a fresh order each time: no state carried
        assert sorted(places) == list(range(length))  # an epoch is a permutation


def test_a_window_shuffle_reads_each_window_from_few_chunks_and_reorders_them_each_epoch():
    sizes = [100] * 50  # 50 row groups of 100
    order = WindowShuffle(sizes, window=200, seed=0)
    epochs = [[order(epoch, offset) for offset in range(5000)] for epoch in range(2)]
    for places in epochs:
        assert sorted(places) == list(range(5000))
        for start in range(0, 5000, 200):
            assert len({index // 100 for index in places[start:start + 200]}) <= 3  # a window spans <= 3 chunks
    assert epochs[0][:200] != epochs[1][:200]
    firsts = [epochs[0][start] // 100 for start in range(0, 5000, 200)]
    assert firsts != sorted(firsts)  # chunks come in a shuffled order
    huge_seed = WindowShuffle(sizes, window=200, seed=10**12)  # any seed the config takes
    assert sorted(huge_seed(0, offset) for offset in range(5000)) == list(range(5000))


def test_sharded_random_gives_each_process_its_slice_of_one_draw():
    one = ShardedRandom(7, 0, 1, torch.device("cpu")).randn((4, 2))
    halves = [ShardedRandom(7, rank, 2, torch.device("cpu")).randn((2, 2)) for rank in range(2)]
    assert torch.equal(torch.cat(halves), one)
