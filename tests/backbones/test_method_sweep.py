"""Every method and listed combination, on both backbones, for both timestep routes."""

import pytest
import torch
from factories import BACKBONES, CASES, case_id, method_lists, noisy_batch, randomize_, text_condition, tiny_model

from film_diffusion.conditioning.sites import Signals


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_backward_and_round_trip(case, tmp_path):
    backbone, methods, route = case
    model = randomize_(tiny_model(backbone, methods, route))
    sample, t = noisy_batch()
    condition = text_condition()

    out = model(sample, t, condition=condition).sample
    assert out.shape == sample.shape
    assert torch.isfinite(out).all()

    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"

    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = type(model).from_pretrained(tmp_path)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(sample, t, condition=condition).sample, loaded(sample, t, condition=condition).sample)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("methods", [["adaln_zero"], ["film"], ["concat"], ["cross_attention"]])
def test_class_labels_with_learned_sigma(backbone, methods):
    kwargs = {"learn_sigma": True} if backbone.startswith("dit") else {"out_channels": 8}
    model = randomize_(tiny_model(backbone, methods, num_classes=5, cond_token_dim=None, cond_pooled_dim=None,
                                  **kwargs))
    sample, t = noisy_batch()
    labels = torch.tensor([1, model.null_class_label])
    out = model(sample, t, class_labels=labels).sample
    assert out.shape == (2, 8, 8, 8)
    assert model.null_class_label == 5
    # the label changes the prediction, the null label is a class like any other
    other = model(sample, t, class_labels=torch.tensor([2, 0])).sample
    assert not torch.allclose(out, other)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_condition_changes_the_prediction_for_every_method(backbone):
    for methods in method_lists(backbone):
        model = randomize_(tiny_model(backbone, methods)).eval()
        sample, t = noisy_batch()
        with torch.no_grad():
            a = model(sample, t, condition=text_condition(seed=0)).sample
            b = model(sample, t, condition=text_condition(seed=1)).sample
        assert not torch.allclose(a, b), methods


@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_class_label_cross_attention_reads_the_label_and_timestep_as_two_tokens(backbone):
    """The DiT paper's cross-attention block: keys and values from the (class, timestep) embeddings."""
    model = tiny_model(backbone, ["cross_attention"], timestep_route="with_condition", num_classes=5,
                       cond_token_dim=None, cond_pooled_dim=None)
    method = model.conditioner.methods["cross_attention"]
    embed_dim = method.time_token.in_features
    t_emb = torch.randn(2, embed_dim)
    labels = model.conditioner.label_embedder(torch.tensor([1, 3]))
    tokens, mask = method.context(Signals(t_emb=t_emb, pooled=labels, tokens=None, mask=None))
    assert tokens.shape == (2, 2, embed_dim) and mask is None
    torch.testing.assert_close(tokens[:, 0], labels)
    torch.testing.assert_close(tokens[:, 1], method.time_token(t_emb))


@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_a_null_mask_applies_the_learned_null_inside_the_forward(backbone):
    """What caption dropout with a learned null gives (the trainer passes the mask so that a sharded model reads
    the null's weights inside its forward) equals the null put into the condition by hand."""
    model = randomize_(tiny_model(backbone, ["film", "cross_attention"], learned_null_tokens=6))
    sample, t = noisy_batch()
    condition, drop = text_condition(), torch.tensor([True, False])
    by_hand = condition.where(drop, model.conditioner.learned_null(2))
    assert torch.equal(model(sample, t, condition=condition, null_mask=drop).sample,
                       model(sample, t, condition=by_hand).sample)
    model(sample, t, condition=condition, null_mask=drop).sample.square().mean().backward()
    assert model.conditioner.learned_null.tokens.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="null_mask needs a text condition and a model built with learned_null"):
        tiny_model(backbone, ["film"])(sample, t, condition=condition, null_mask=drop)
