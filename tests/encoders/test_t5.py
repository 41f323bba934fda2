"""TransformersT5 against transformers' own outputs, on a tiny T5 saved locally; a T5 model, and one on T5 tokens
with CLIP's pooled vector (SD3's pairing), trains and samples."""

from __future__ import annotations

import pytest
import torch
from runs import tiny_config, tiny_run
from transformers import T5EncoderModel

from film_diffusion.config import ConfigError
from film_diffusion.encoders import PairedEncoder, TextEncoder, TransformersT5, builtin_clip
from film_diffusion.errors import UserError
from film_diffusion.pipelines import FilmDiffusionPipeline

CAPTIONS = ["a large red circle at the top left", "", "a small blue star"]


def test_tokens_are_t5s_last_layer_with_the_mask_and_pooled_is_their_masked_mean(tiny_t5):
    encoder = TransformersT5(tiny_t5, max_length=12)
    condition = encoder.encode(CAPTIONS)
    ids = encoder.tokenizer(CAPTIONS, padding="max_length", max_length=12, return_tensors="pt")
    assert ids.input_ids[0].tolist()[:9][-1] == encoder.tokenizer.eos_token_id  # 8 words, then </s>
    model = T5EncoderModel.from_pretrained(tiny_t5).eval()
    with torch.no_grad():
        out = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
    assert (encoder.token_dim, encoder.pooled_dim) == (32, 32) and condition.tokens.shape == (3, 12, 32)
    torch.testing.assert_close(condition.tokens, out.last_hidden_state, rtol=0, atol=0)
    assert condition.mask.sum(1).tolist() == [9, 1, 5]  # the words and </s>; the empty caption is </s> alone
    for row, count in enumerate([9, 1, 5]):  # the mean of the real tokens only
        torch.testing.assert_close(condition.pooled[row], out.last_hidden_state[row, :count].mean(0))


def test_padding_does_not_change_a_captions_states(tiny_t5):
    short, long = TransformersT5(tiny_t5, max_length=10), TransformersT5(tiny_t5, max_length=16)
    a, b = short.encode(CAPTIONS[:1]), long.encode(CAPTIONS[:1])
    torch.testing.assert_close(a.tokens[:, :9], b.tokens[:, :9], rtol=0, atol=1e-6)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=1e-6)


def test_penultimate_layer_and_the_saved_folder(tiny_t5, tmp_path):
    encoder = TransformersT5(tiny_t5, layer="penultimate", max_length=12)
    model = T5EncoderModel.from_pretrained(tiny_t5).eval()
    ids = encoder.tokenizer(CAPTIONS, padding="max_length", max_length=12, return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, output_hidden_states=True)
    torch.testing.assert_close(encoder.encode(CAPTIONS).tokens, out.hidden_states[-2], rtol=0, atol=0)
    encoder.save_pretrained(tmp_path / "enc")
    loaded = TransformersT5.from_pretrained(tmp_path / "enc")
    assert loaded.identity == encoder.identity and loaded.max_length == 12
    torch.testing.assert_close(loaded.encode(CAPTIONS).tokens, encoder.encode(CAPTIONS).tokens, rtol=0, atol=0)


def test_a_folder_that_is_not_t5_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="Could not load a T5 encoder from"):
        TransformersT5(tmp_path)


def test_a_t5_model_trains_and_its_pipeline_samples(tiny_t5, tmp_path):
    run = tiny_run(tmp_path / "run", "condition.source=t5", f"condition.name={tiny_t5}", "condition.max_length=12",
                   "model.conditioning=[adaln_zero,cross_attention]", "train.max_steps=2")
    pipe = FilmDiffusionPipeline.from_pretrained(run / "pipeline")
    assert isinstance(pipe.text_encoder, TextEncoder) and type(pipe.text_encoder).__name__ == "TransformersT5"
    images = pipe(prompt=["a red circle"], num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 3, 16, 16)


def test_a_pair_takes_t5s_tokens_and_clips_pooled_vector_and_round_trips(tiny_t5, tmp_path):
    t5, clip = TransformersT5(tiny_t5, max_length=12), builtin_clip()
    pair = PairedEncoder(t5, clip)
    got, tokens, pooled = pair.encode(CAPTIONS), t5.encode(CAPTIONS), clip.encode(CAPTIONS)
    assert (pair.token_dim, pair.pooled_dim, pair.max_length) == (32, clip.pooled_dim, 12)
    assert torch.equal(got.tokens, tokens.tokens) and torch.equal(got.mask, tokens.mask)
    assert torch.equal(got.pooled, pooled.pooled)
    pair.save_pretrained(tmp_path / "pair")
    loaded = PairedEncoder.from_pretrained(tmp_path / "pair")
    assert loaded.identity == pair.identity and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.encode(CAPTIONS).pooled, got.pooled)


def test_a_model_on_t5_tokens_with_clips_pooled_vector_trains_and_samples(tiny_t5, tmp_path):
    run = tiny_run(tmp_path / "run", "condition.source=t5", f"condition.name={tiny_t5}", "condition.max_length=12",
                   "condition.pooled_from={source: builtin_clip}", "model.conditioning=[adaln_zero,cross_attention]",
                   "train.max_steps=2")
    pipe = FilmDiffusionPipeline.from_pretrained(run / "pipeline")
    assert type(pipe.text_encoder).__name__ == "PairedEncoder"
    assert pipe.denoiser.config.cond_pooled_dim == builtin_clip().pooled_dim != 32
    assert pipe(prompt=["a red circle"], num_inference_steps=2, output_type="pt").images.shape == (1, 3, 16, 16)


def test_pooled_from_needs_a_text_model_and_a_name(tmp_path):
    with pytest.raises(ConfigError, match="'condition.pooled_from' pairs two text encoders"):
        tiny_config(tmp_path, "condition.source=class_labels", "condition.num_classes=32",
                    "condition.pooled_from={source: builtin_clip}")
    with pytest.raises(ConfigError, match="'condition.pooled_from.name' is required"):
        tiny_config(tmp_path, "condition.pooled_from={source: transformers}")
