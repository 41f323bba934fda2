"""Text encoders save into a folder of their own and load back to the same outputs."""

import json

import pytest
import torch

from film_diffusion.encoders import OpenCLIP, TransformersCLIP, builtin_clip
from film_diffusion.errors import UserError

CAPTIONS = ["a large red circle at the top left", "", "two small blue squares"]


def assert_same_outputs(a, b) -> None:
    x, y = a.encode(CAPTIONS), b.encode(CAPTIONS)
    assert torch.equal(x.tokens, y.tokens) and torch.equal(x.mask, y.mask) and torch.equal(x.pooled, y.pooled)
    assert a.identity == b.identity


def test_open_clip_round_trip(tmp_path, tiny_open_clip):
    name, weights = tiny_open_clip
    encoder = OpenCLIP(name, weights, layer="penultimate")
    encoder.save_pretrained(tmp_path / "enc")
    assert json.loads((tmp_path / "enc" / "text_encoder.json").read_text()) == {"class": "OpenCLIP",
                                                                                  "layer": "penultimate"}
    loaded = OpenCLIP.from_pretrained(tmp_path / "enc")
    assert loaded.layer == "penultimate" and not any(p.requires_grad for p in loaded.parameters())
    assert_same_outputs(encoder, loaded)


def test_builtin_clip_round_trip_and_dtype(tmp_path):
    encoder = builtin_clip()
    encoder.save_pretrained(tmp_path / "enc")
    assert_same_outputs(encoder, OpenCLIP.from_pretrained(tmp_path / "enc"))
    assert OpenCLIP.from_pretrained(tmp_path / "enc", torch_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_transformers_clip_round_trip(tmp_path, tiny_transformers_clip):
    encoder = TransformersCLIP(tiny_transformers_clip, layer="penultimate", use_projection=False, max_length=20)
    encoder.save_pretrained(tmp_path / "enc")
    loaded = TransformersCLIP.from_pretrained(tmp_path / "enc")
    assert (loaded.layer, loaded.use_projection, loaded.max_length) == ("penultimate", False, 20)
    assert_same_outputs(encoder, loaded)


def test_loading_the_wrong_folder_names_the_fix(tmp_path):
    builtin_clip().save_pretrained(tmp_path / "enc")
    with pytest.raises(UserError, match="holds a text encoder of class OpenCLIP, not TransformersCLIP; load it "
                                        "with OpenCLIP.from_pretrained"):
        TransformersCLIP.from_pretrained(tmp_path / "enc")
    with pytest.raises(UserError, match="holds no saved text encoder"):
        OpenCLIP.from_pretrained(tmp_path)
    (tmp_path / "enc" / "open_clip_model.safetensors").rename(tmp_path / "weights")  # open_clip would only warn
    with pytest.raises(UserError, match="has no open_clip_model.safetensors; save the encoder"):
        OpenCLIP.from_pretrained(tmp_path / "enc")
    (tmp_path / "enc" / "text_encoder.json").write_text("{oops")
    with pytest.raises(UserError, match="is not valid JSON"):
        OpenCLIP.from_pretrained(tmp_path / "enc")
