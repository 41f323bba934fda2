"""TransformersCLIP against transformers' own outputs, on a tiny CLIP saved locally."""

from __future__ import annotations

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from film_diffusion.encoders import TransformersCLIP
from film_diffusion.errors import UserError

CAPTIONS = ["a large red cube at the top left", "", "two small blue spheres!"]


def reference_ids(encoder: TransformersCLIP, captions: list[str]) -> torch.Tensor:
    return encoder.tokenizer(
        captions, padding="max_length", max_length=encoder.max_length, return_tensors="pt"
    ).input_ids


def test_tokenizer_made_from_open_clip_vocabulary_matches_open_clip(tiny_transformers_clip):
    encoder = TransformersCLIP(tiny_transformers_clip)
    ours = encoder.tokenizer(CAPTIONS).input_ids
    theirs = SimpleTokenizer()(CAPTIONS, context_length=77)
    for ids, row in zip(ours, theirs, strict=True):
        assert ids == row[: len(ids)].tolist()


def test_last_layer_and_projected_pooled_match_transformers(tiny_transformers_clip):
    encoder = TransformersCLIP(tiny_transformers_clip, max_length=20)
    condition = encoder.encode(CAPTIONS)
    model = CLIPTextModelWithProjection.from_pretrained(tiny_transformers_clip).eval()
    with torch.no_grad():
        out = model(input_ids=reference_ids(encoder, CAPTIONS))
    assert (encoder.token_dim, encoder.pooled_dim) == (32, 24)
    assert condition.tokens.shape == (3, 20, 32) and condition.pooled.shape == (3, 24)
    torch.testing.assert_close(condition.tokens, out.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(condition.pooled, out.text_embeds, rtol=0, atol=0)


def test_unprojected_pooled_is_pooler_output(tiny_transformers_clip):
    encoder = TransformersCLIP(tiny_transformers_clip, use_projection=False)
    model = CLIPTextModel.from_pretrained(tiny_transformers_clip).eval()
    with torch.no_grad():
        out = model(input_ids=reference_ids(encoder, CAPTIONS))
    assert encoder.pooled_dim == 32
    torch.testing.assert_close(encoder.encode(CAPTIONS).pooled, out.pooler_output, rtol=0, atol=0)


def test_penultimate_layer_is_hidden_states_minus_two_without_final_norm(tiny_transformers_clip):
    encoder = TransformersCLIP(tiny_transformers_clip, layer="penultimate")
    model = CLIPTextModelWithProjection.from_pretrained(tiny_transformers_clip).eval()
    with torch.no_grad():
        out = model(input_ids=reference_ids(encoder, CAPTIONS), output_hidden_states=True)
    tokens = encoder.encode(CAPTIONS).tokens
    torch.testing.assert_close(tokens, out.hidden_states[-2], rtol=0, atol=0)
    assert not torch.allclose(tokens, model.text_model.final_layer_norm(out.hidden_states[-2]))


def test_mask_marks_start_words_and_end_tokens(tiny_transformers_clip):
    encoder = TransformersCLIP(tiny_transformers_clip)
    mask = encoder.encode(CAPTIONS).mask
    lengths = [len(ids) for ids in encoder.tokenizer(CAPTIONS).input_ids]
    assert mask.dtype == torch.bool and mask.shape == (3, 77)
    assert mask.sum(1).tolist() == lengths
    assert mask[1].sum() == 2  # the empty caption: start and end of text
    assert all(m[:n].all() and not m[n:].any() for m, n in zip(mask, lengths, strict=True))


def test_overlong_captions_are_truncated_with_one_warning_naming_the_count(tiny_transformers_clip):
    encoder = TransformersCLIP(tiny_transformers_clip, max_length=8)
    with pytest.warns(UserWarning, match="2 of 3 captions") as record:
        condition = encoder.encode(["red " * 20, "a cube", "blue " * 7])
    assert len(record) == 1
    assert condition.mask.shape == (3, 8) and condition.mask[0].all()


def test_frozen_by_default_and_stays_frozen_inside_a_training_model(tiny_transformers_clip):
    encoder = TransformersCLIP(tiny_transformers_clip)
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    holder = nn.ModuleDict({"text": encoder}).train()
    assert not holder["text"].training and not encoder.model.training
    assert not encoder.encode(["a cube"]).pooled.requires_grad


def test_trainable_encoder_passes_gradients(tiny_transformers_clip):
    encoder = TransformersCLIP(tiny_transformers_clip, trainable=True).train()
    encoder.encode(["a cube", ""]).pooled.sum().backward()
    assert encoder.model.text_projection.weight.grad is not None


def test_bad_arguments_are_user_errors(tiny_transformers_clip, tmp_path):
    with pytest.raises(UserError, match="layer='middle'"):
        TransformersCLIP(tiny_transformers_clip, layer="middle")
    with pytest.raises(UserError, match="max_length=100"):
        TransformersCLIP(tiny_transformers_clip, max_length=100)
    with pytest.raises(UserError, match="Could not load"):
        TransformersCLIP(tmp_path / "missing")
    with pytest.raises(UserError, match="single string"):
        TransformersCLIP(tiny_transformers_clip).encode("a cube")
