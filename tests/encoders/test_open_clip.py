"""OpenCLIP against open_clip's own outputs, on a tiny custom architecture saved locally."""

from __future__ import annotations

import json
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from film_diffusion.data.captions import caption_words
from film_diffusion.encoders import OpenCLIP, builtin_clip
from film_diffusion.errors import UserError

CAPTIONS = ["a large red cube at the top left", "", "two small blue spheres!"]


def run_text_transformer(model, ids: torch.Tensor, blocks: int) -> torch.Tensor:
    """The text tower by hand: embeddings, the first ``blocks`` residual blocks."""
    x = model.token_embedding(ids) + model.positional_embedding
    for block in model.transformer.resblocks[:blocks]:
        x = block(x, attn_mask=model.attn_mask)
    return x


def test_loads_a_local_checkpoint_and_pooled_is_encode_text(tiny_open_clip):
    name, checkpoint = tiny_open_clip
    encoder = OpenCLIP(name, pretrained=checkpoint)
    model = encoder.model
    for key, value in load_file(checkpoint).items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    ids = open_clip.get_tokenizer(name)(CAPTIONS)
    condition = encoder.encode(CAPTIONS)
    assert (encoder.token_dim, encoder.pooled_dim, encoder.max_length) == (32, 24, 16)
    assert condition.tokens.shape == (3, 16, 32) and condition.pooled.shape == (3, 24)
    with torch.no_grad():
        torch.testing.assert_close(condition.pooled, model.encode_text(ids), rtol=0, atol=0)
        last = model.ln_final(run_text_transformer(model, ids, blocks=3))
    torch.testing.assert_close(condition.tokens, last, rtol=1e-5, atol=1e-6)


def test_penultimate_layer_is_the_second_to_last_block_without_final_norm(tiny_open_clip):
    name, checkpoint = tiny_open_clip
    encoder = OpenCLIP(name, pretrained=checkpoint, layer="penultimate")
    with torch.no_grad():
        expected = run_text_transformer(encoder.model, open_clip.get_tokenizer(name)(CAPTIONS), blocks=2)
    torch.testing.assert_close(encoder.encode(CAPTIONS).tokens, expected, rtol=1e-5, atol=1e-6)


def test_mask_marks_start_words_and_end_of_text(tiny_open_clip):
    encoder = OpenCLIP(*tiny_open_clip)
    mask = encoder.encode(CAPTIONS).mask
    lengths = [len(encoder.tokenizer.encode(c)) + 2 for c in CAPTIONS]
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == lengths
    assert all(m[:n].all() and not m[n:].any() for m, n in zip(mask, lengths, strict=True))


def test_overlong_captions_are_truncated_with_one_warning(tiny_open_clip):
    encoder = OpenCLIP(*tiny_open_clip)
    with pytest.warns(UserWarning, match="1 of 2 captions were longer than the encoder's 16-token") as record:
        condition = encoder.encode(["red " * 30, "a cube"])
    assert len(record) == 1 and condition.mask[0].all()


def test_local_dir_folder_in_open_clips_own_format(tiny_open_clip, tmp_path):
    name, checkpoint = tiny_open_clip
    config = {
        "model_cfg": open_clip.get_model_config(name),
        "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    (tmp_path / "open_clip_model.safetensors").write_bytes(checkpoint.read_bytes())
    from_folder = OpenCLIP(f"local-dir:{tmp_path}").encode(CAPTIONS)
    torch.testing.assert_close(from_folder.pooled, OpenCLIP(name, checkpoint).encode(CAPTIONS).pooled)
    with pytest.raises(UserError, match="local-dir:"):
        OpenCLIP(name, pretrained=tmp_path)


def test_encode_images_are_normalised_and_in_the_pooled_text_space(tiny_open_clip):
    name, checkpoint = tiny_open_clip
    encoder = OpenCLIP(name, pretrained=checkpoint)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    embeddings = encoder.encode_images(images)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = F.normalize(encoder.model.encode_image(((images + 1) / 2 - mean) / std), dim=-1)
    torch.testing.assert_close(embeddings, expected)
    assert embeddings.shape == (2, encoder.pooled_dim)
    assert encoder.encode_images(torch.zeros(1, 3, 40, 32)).shape == (
        1,
        24,
    )  # resized and cropped like open_clip


def test_frozen_by_default_trainable_on_request(tiny_open_clip):
    frozen = OpenCLIP(*tiny_open_clip)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.train().training
    trainable = OpenCLIP(*tiny_open_clip, trainable=True).train()
    loss = trainable.encode(["a cube"]).pooled.sum() + trainable.encode_images(torch.zeros(1, 3, 16, 16)).sum()
    loss.backward()
    assert trainable.model.text_projection.grad is not None and trainable.model.visual.proj.grad is not None


def test_unknown_checkpoint_is_a_user_error(tiny_open_clip, tmp_path):
    with pytest.raises(UserError, match="Could not load open_clip model"):
        OpenCLIP(tiny_open_clip[0], pretrained=tmp_path / "missing.safetensors")


def test_weights_change_the_identity(tiny_open_clip, tmp_path):
    name, checkpoint = tiny_open_clip
    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_file(open_clip.create_model(name).state_dict(), other)
    assert OpenCLIP(name, checkpoint).identity == OpenCLIP(name, checkpoint).identity
    assert OpenCLIP(name, checkpoint).identity != OpenCLIP(name, other).identity
    assert OpenCLIP(name, checkpoint).identity != OpenCLIP(name, checkpoint, layer="penultimate").identity


def test_the_builtin_clip_warns_once_about_a_word_its_captions_never_held(tmp_path):
    """"big" is not in the built-in captions' vocabulary ("large" is): one warning per unknown word, however often
    it comes, none for known words; a pipeline folder carries the word list with the encoder."""
    encoder = builtin_clip()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["a large red circle at the top left", "two small blue squares", ""])
    with pytest.warns(UserWarning) as record:
        encoder.encode(["a big red circle in the centre", "a big blue star"])
        encoder.encode(["a big green circle"])
    assert [str(w.message).split(" in training")[0] for w in record] == [
        "The text encoder never read the word 'big'", "The text encoder never read the word 'centre'"]
    encoder.save_pretrained(tmp_path / "encoder")
    assert OpenCLIP.from_pretrained(tmp_path / "encoder").known_words == encoder.known_words
    assert encoder.known_words == caption_words(4) and "large" in encoder.known_words


def test_an_open_vocabulary_clip_does_not_warn(tiny_open_clip):
    encoder = OpenCLIP(*tiny_open_clip)
    assert encoder.known_words is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["a big cube"])
