"""What the denoiser is trained to predict: noise (epsilon), velocity (v) or the rectified-flow velocity.

The noising and targets come from diffusers' schedulers; what is written here is only the choice of
timesteps, the loss weighting (min-SNR), the noise offset and the improved-DDPM variational term that
learned-sigma models add to the simple loss (Nichol & Dhariwal 2021, as the DiT paper trains).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.training_utils import compute_snr

from film_diffusion.training.config import ObjectiveConfig
from film_diffusion.training.randomness import ShardedRandom

PREDICTION_TYPES = {"epsilon": "epsilon", "v": "v_prediction"}


@dataclass
class NoisyBatch:
    """A training example: the model's input ``x_t`` at ``timesteps``, and what it should predict."""

    x_t: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor  # per-sample loss weight


def noise_scheduler(objective: ObjectiveConfig, learn_sigma: bool = False, pixel_space: bool = True) -> SchedulerMixin:
    """The training schedule, saved with the model so that sampling reads the same prediction type (and
    clips the x0 estimate to [-1, 1] only for pixels, never for latents)."""
    if objective.prediction == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=objective.num_train_timesteps)
    return DDPMScheduler(num_train_timesteps=objective.num_train_timesteps, beta_schedule=objective.beta_schedule,
                         prediction_type=PREDICTION_TYPES[objective.prediction], clip_sample=pixel_space,
                         variance_type="learned_range" if learn_sigma else "fixed_small")


def noisy_batch(objective: ObjectiveConfig, scheduler: SchedulerMixin, x0: torch.Tensor,
                random: ShardedRandom) -> NoisyBatch:
    """Draw noise and timesteps (so a resumed or multi-process run draws the same) and noise ``x0``."""
    batch = x0.shape[0]
    noise = random.randn(tuple(x0.shape)).to(x0.dtype)
    if objective.noise_offset:
        noise = noise + objective.noise_offset * random.randn((batch, x0.shape[1], 1, 1)).to(x0.dtype)
    if objective.prediction == "flow":  # logit-normal sigmas, as SD3
        sigmas = torch.sigmoid(random.normal(objective.logit_mean, objective.logit_std, batch))
        s = sigmas.view(-1, 1, 1, 1).to(x0.dtype)
        return NoisyBatch(x_t=(1 - s) * x0 + s * noise, timesteps=sigmas * objective.num_train_timesteps,
                          target=noise - x0, weight=torch.ones(batch, device=x0.device))
    timesteps = random.randint(objective.num_train_timesteps, batch)
    target = noise if objective.prediction == "epsilon" else scheduler.get_velocity(x0, noise, timesteps)
    weight = torch.ones(batch, device=x0.device)
    if objective.min_snr_gamma is not None:
        snr = compute_snr(scheduler, timesteps).to(x0.device)
        clipped = snr.clamp(max=objective.min_snr_gamma)
        weight = clipped / snr if objective.prediction == "epsilon" else clipped / (snr + 1)
    return NoisyBatch(x_t=scheduler.add_noise(x0, noise, timesteps), timesteps=timesteps, target=target,
                      weight=weight)


def diffusion_loss(prediction: torch.Tensor, batch: NoisyBatch, x0: torch.Tensor,
                   scheduler: SchedulerMixin) -> torch.Tensor:
    """Weighted MSE on the predicted channels; with a learned variance (twice the channels) plus the
    variational bound term, through which only the variance learns (the mean is held fixed)."""
    channels = batch.target.shape[1]
    mse = (prediction[:, :channels].float() - batch.target.float()).pow(2).mean(dim=(1, 2, 3))
    loss = mse * batch.weight
    if prediction.shape[1] == 2 * channels:
        loss = loss + vb_term(scheduler, prediction.float(), batch.x_t.float(), x0.float(), batch.timesteps)
    return loss.mean()


def vb_term(scheduler: DDPMScheduler, prediction: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor,
            t: torch.Tensor) -> torch.Tensor:
    """Improved DDPM's L_vlb term per sample, in bits per dimension: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))
    for t > 0 and the decoder's negative log-likelihood at t = 0, scaled by ``T / 1000`` as improved DDPM's
    rescaled loss does (the identity at T = 1000, where DiT adds it unscaled). The model's variance
    interpolates log beta_t and log beta-tilde_t; its mean uses the detached epsilon, unclipped."""
    channels = x_t.shape[1]
    eps, v = prediction[:, :channels].detach(), prediction[:, channels:]
    alphas_cumprod = scheduler.alphas_cumprod.to(x_t.device, torch.float64)
    betas = scheduler.betas.to(x_t.device, torch.float64)
    prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    posterior_var = betas * (1 - prev) / (1 - alphas_cumprod)
    log_posterior_var = torch.log(torch.cat([posterior_var[1:2], posterior_var[1:]]))  # clipped at t = 0
    coef_x0 = betas * prev.sqrt() / (1 - alphas_cumprod)
    coef_xt = (1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod)

    def at(values: torch.Tensor) -> torch.Tensor:
        return values[t].float().view(-1, 1, 1, 1)

    true_mean = at(coef_x0) * x0 + at(coef_xt) * x_t
    frac = (v + 1) / 2  # the model's output in [-1, 1] -> interpolation weight
    model_log_var = frac * at(torch.log(betas)) + (1 - frac) * at(log_posterior_var)
    x0_pred = (x_t - at((1 - alphas_cumprod).sqrt()) * eps) / at(alphas_cumprod.sqrt())
    model_mean = at(coef_x0) * x0_pred + at(coef_xt) * x_t  # unclipped, as in training there (and for latents)
    kl = 0.5 * (-1.0 + model_log_var - at(log_posterior_var) + torch.exp(at(log_posterior_var) - model_log_var)
                + (true_mean - model_mean) ** 2 * torch.exp(-model_log_var))
    kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
    nll = -_discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
    return torch.where(t == 0, nll, kl) * (scheduler.config.num_train_timesteps / 1000.0)


def _discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of 8-bit data in [-1, 1] under a Gaussian discretised to its bins (improved DDPM)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(
        x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
    return log_probs


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
