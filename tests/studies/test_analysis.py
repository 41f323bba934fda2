"""``film-diffusion analyze``: gamma and beta read and changed in the units a site applies; own values change
nothing, the mean does; a trained model's analysis writes its tables and plots."""

import json

import pytest
import torch
from PIL import Image
from runs import tiny_run

from film_diffusion import Condition, DiT, UNet
from film_diffusion.cli import main
from film_diffusion.grid import LABEL_WIDTH, PAD
from film_diffusion.studies.analysis import (
    CaptionDrive,
    attribute_share,
    caption_modulation,
    edited_modulation,
    modulating_methods,
)

METHODS = ["film", {"name": "film", "gamma": "raw"}, "adaln_zero"]
CASES = [("dit", m) for m in METHODS] + [("unet", "film")]  # the U-Net's FiLM carries the timestep too


def tiny_dit(method, backbone: str = "dit"):
    """Every weight random (none zero-initialised), so gamma and beta differ between captions and reach the output."""
    torch.manual_seed(0)
    if backbone == "unet":
        denoiser = UNet(sample_size=8, in_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                        attention_levels=(1,), num_heads=2, norm_num_groups=4, conditioning=[method],
                        cond_pooled_dim=6, cond_token_dim=5).eval()
    else:
        denoiser = DiT(sample_size=8, patch_size=4, in_channels=3, hidden_size=16, depth=2, num_heads=2,
                       conditioning=[method], cond_pooled_dim=6, cond_token_dim=5).eval()
    with torch.no_grad():
        for p in denoiser.parameters():
            p.normal_(std=0.3)
    return denoiser


class Drive(CaptionDrive):
    """Five random pooled captions, read by the model's own conditioning stack."""

    def __init__(self, denoiser):
        self.stack, self.labels, self.count = denoiser.conditioner, None, 5
        self.condition = Condition(pooled=torch.randn(5, 6, generator=torch.Generator().manual_seed(1)))


def the_method(denoiser):
    [method] = modulating_methods(denoiser).values()
    return method


def call(denoiser):
    g = torch.Generator().manual_seed(2)
    condition = Condition(tokens=torch.randn(3, 4, 5, generator=g), pooled=torch.randn(3, 6, generator=g))
    with torch.no_grad():
        return denoiser(torch.randn(3, 3, 8, 8, generator=g), torch.tensor([300, 300, 300]), condition).sample


@pytest.mark.parametrize("backbone, method", CASES)
def test_own_values_change_nothing_and_the_mean_or_fixed_values_do(backbone, method):
    denoiser = tiny_dit(method, backbone)
    drive = Drive(denoiser)
    plain = call(denoiser)
    method = the_method(denoiser)
    with edited_modulation(denoiser, drive, lambda site, gamma, beta, mean: (gamma.clone(), beta.clone())):
        torch.testing.assert_close(call(denoiser), plain, rtol=0, atol=1e-6)
    seen = []
    with edited_modulation(denoiser, drive, lambda site, gamma, beta, mean: seen.append(mean) or (gamma, beta)):
        call(denoiser)
    t_emb = denoiser.t_embedder(torch.tensor([300]))
    expected = [(m.scale, m.shift) for m in caption_modulation(method, drive, t_emb)]
    assert len(seen) == len(expected) == sum(m.gate is None for m in method.modulation(drive.signals(t_emb)))
    for mean, (gamma, beta) in zip(seen, expected, strict=True):  # the captions' mean at the call's timestep
        torch.testing.assert_close(mean, torch.stack([gamma.mean(0), beta.mean(0)]))
    for edit in (lambda site, gamma, beta, mean: (mean[0].expand_as(gamma), beta),
                 lambda site, gamma, beta, mean: (torch.ones_like(gamma), beta),
                 lambda site, gamma, beta, mean: (gamma, torch.zeros_like(beta))):
        with edited_modulation(denoiser, drive, edit):
            assert (call(denoiser) - plain).abs().max() > 1e-3
    torch.testing.assert_close(call(denoiser), plain, rtol=0, atol=0)  # the edits are gone
    assert "modulation" not in vars(method)


@pytest.mark.parametrize("backbone, method", CASES)
def test_under_guidance_only_the_caption_half_is_edited(backbone, method):
    """The pipeline's guided batch is [null, caption]: the null rows keep their trained (gamma, beta), so guidance
    still starts from the model's own unconditional prediction."""
    denoiser = tiny_dit(method, backbone)
    g = torch.Generator().manual_seed(3)
    condition = Condition(tokens=torch.randn(4, 4, 5, generator=g), pooled=torch.randn(4, 6, generator=g))
    x = torch.randn(4, 3, 8, 8, generator=g)

    def guided_call():
        with torch.no_grad():
            return denoiser(x, torch.tensor([300] * 4), condition).sample

    plain = guided_call()
    for guided, changed in ((True, [False, False, True, True]), (False, [True] * 4)):
        with edited_modulation(denoiser, Drive(denoiser), lambda site, gamma, beta, mean: (mean[0].expand_as(gamma),
                                                                                          beta), guided):
            edited = guided_call()
        difference = (edited - plain).flatten(1).abs().amax(1)
        assert [bool(d > 1e-4) for d in difference] == changed, difference
        assert all(d == 0 for d, c in zip(difference, changed, strict=True) if not c)


@pytest.mark.parametrize("backbone, method", CASES)
def test_gamma_and_beta_are_the_scale_and_shift_a_site_applies(backbone, method):
    """Setting gamma to 1 and beta to 0 everywhere equals a model whose generator emits the identity."""
    denoiser = tiny_dit(method, backbone)
    modulating = the_method(denoiser)
    drive = Drive(denoiser)
    identity = lambda site, gamma, beta, mean: (torch.ones_like(gamma), torch.zeros_like(beta))  # noqa: E731
    with edited_modulation(denoiser, drive, identity):
        edited = call(denoiser)
    signals = drive.signals(denoiser.t_embedder(torch.tensor([300])))
    affine_sites = [i for i, m in enumerate(modulating.modulation(signals)) if m.gate is None]
    generator = modulating.generator
    with torch.no_grad():  # the same by the method's own parameters: delta / scale and beta / shift all 0
        for i in affine_sites:
            start = sum(generator.sizes[:i])
            rows = slice(start, start + generator.sizes[i])
            generator.out.weight[rows] = 0
            generator.out.bias[rows] = 0
            if getattr(modulating, "gamma_offset", 1.0) == 0:  # FiLM's raw gamma: 1 is a bias of 1
                generator.out.bias[start:start + generator.sizes[i] // 2] = 1
    torch.testing.assert_close(call(denoiser), edited, rtol=0, atol=1e-6)


def test_attribute_share_is_one_for_perfect_clusters_and_small_for_none():
    g = torch.Generator().manual_seed(0)
    labels = ["a", "b"] * 50
    clustered = torch.tensor([[0.0, 5.0] if lab == "a" else [5.0, 0.0] for lab in labels])
    assert attribute_share(clustered, labels) == pytest.approx(1.0)
    assert attribute_share(torch.randn(100, 4, generator=g), labels) < 0.1


def grid_rows(path, count: int) -> list[Image.Image]:
    """The image part of each row of a ``labelled_grid`` of ``count`` rows (labels cut off)."""
    grid = Image.open(path)
    height = (grid.height - PAD) // count
    return [grid.crop((LABEL_WIDTH, PAD + r * height, grid.width, (r + 1) * height)) for r in range(count)]


def test_analyze_a_trained_film_model(tmp_path):
    run = tiny_run(tmp_path / "run", "train.max_steps=3", "data.resolution=32", "model.dit.patch_size=8")
    assert main(["analyze", str(run), "--scenes", "8", "--noise", "0.5"]) == 0
    out = run / "analysis"
    result = json.loads((out / "analysis.json").read_text())
    scores = result["ablations"]
    assert list(scores) == ["as trained", "own values", "gamma := mean", "beta := mean", "gamma := 1", "beta := 0",
                            "gamma + N(0, 0.5^2)", "beta + N(0, 0.5^2)"]
    for key in ("color", "shape", "size", "position", "all"):
        assert scores["own values"][key] == scores["as trained"][key], key
    assert scores["own values"]["fid"] == pytest.approx(scores["as trained"]["fid"], rel=1e-4)
    assert scores["gamma + N(0, 0.5^2)"]["fid"] != scores["as trained"]["fid"]
    sites = result["sites"]["film"]
    assert sites == ["blocks.0.attn_norm", "blocks.0.mlp_norm", "blocks.1.attn_norm", "blocks.1.mlp_norm",
                     "final.norm"]
    assert len(result["clustering"]["film"]) == len(sites) and all(
        0 <= share[a] <= 1 + 1e-9 for share in result["clustering"]["film"] for a in share)
    for name in ("histograms.png", "pca_maps.png", "ablations.png"):
        assert (out / name).stat().st_size > 0
    rows = grid_rows(out / "ablation_samples.png", len(scores))
    assert rows[1].tobytes() == rows[0].tobytes()  # own values draw the trained model's images, pixel for pixel
    assert rows[6].tobytes() != rows[0].tobytes()  # noise on gamma changes them
    table = (out / "analysis.md").read_text()
    assert "| gamma := mean |" in table and "| film | blocks.0.attn_norm |" in table


def test_analyze_refuses_a_model_without_film_or_adaln(tmp_path, capsys):
    run = tiny_run(tmp_path / "run", "train.max_steps=1", "model.conditioning=[cross_attention]")
    assert main(["analyze", str(run)]) == 2
    assert "analyze needs a model whose condition enters through film or adaln_zero" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path)]) == 2
    assert "is not a finished run folder" in capsys.readouterr().err
