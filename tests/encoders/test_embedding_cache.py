"""EmbeddingCache: a caption is encoded once per run, and a precomputed file is bound to its encoder."""

from __future__ import annotations

import pytest
import torch

from film_diffusion.data.shapes import ShapesDataset
from film_diffusion.encoders import EmbeddingCache, OpenCLIP, TransformersCLIP, save_embeddings
from film_diffusion.errors import UserError

CAPTIONS = [
    f"{n} {colour} cubes"
    for n in range(100)
    for colour in ("red", "green", "blue", "cyan", "pink", "gray", "brown", "purple", "yellow", "black")
]


def count_encoder_calls(encoder, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the captions of every call that reaches the model (padding included)."""
    calls: list[list[str]] = []
    encode = encoder._encode
    monkeypatch.setattr(encoder, "_encode", lambda captions: calls.append(list(captions)) or encode(captions))
    return calls


def test_the_same_thousand_captions_twice_cost_one_encoder_pass(tiny_open_clip, monkeypatch):
    encoder = OpenCLIP(*tiny_open_clip)
    calls = count_encoder_calls(encoder, monkeypatch)
    cache = EmbeddingCache(encoder, batch_size=1000)
    assert len(set(CAPTIONS)) == 1000
    first = cache.encode(CAPTIONS)
    second = cache.encode(CAPTIONS)
    assert [len(c) for c in calls] == [1000]  # one pass over the model, none for the repeat
    torch.testing.assert_close(first.tokens, second.tokens, rtol=0, atol=0)
    direct = encoder.encode(CAPTIONS[:5])
    torch.testing.assert_close(first[:5].tokens, direct.tokens)
    torch.testing.assert_close(first[:5].pooled, direct.pooled)
    assert torch.equal(first[:5].mask, direct.mask)


def test_only_new_captions_are_encoded_and_duplicates_once(tiny_open_clip, monkeypatch):
    encoder = OpenCLIP(*tiny_open_clip)
    calls = count_encoder_calls(encoder, monkeypatch)
    cache = EmbeddingCache(encoder, batch_size=2)
    cache.encode(["a", "b", "a", ""])
    condition = cache.encode(["b", "c", "", "c"])
    assert calls == [["a", "b"], ["", ""], ["c", ""]]  # each batch padded to 2 rows with the empty caption
    assert condition.tokens.shape[0] == 4
    torch.testing.assert_close(condition.tokens[1], condition.tokens[3], rtol=0, atol=0)


def test_a_bounded_memo_keeps_the_most_recently_used_captions_and_says_it_is_full(tiny_open_clip, monkeypatch):
    encoder = OpenCLIP(*tiny_open_clip)
    calls = count_encoder_calls(encoder, monkeypatch)
    cache = EmbeddingCache(encoder, capacity=2)
    with pytest.warns(UserWarning, match=r"capacity=2\) is full, so captions it drops will be encoded again"):
        cache.encode(["a", "b", "c"])  # more than the capacity in one batch still works
    cache.encode(["c"])
    cache.encode(["a"])
    assert [[c for c in call if c] for call in calls] == [["a", "b", "c"], ["a"]]


@pytest.mark.filterwarnings("ignore:.*were truncated")  # the tiny test CLIP's context is 16 tokens
def test_two_shuffled_epochs_of_the_builtin_scenes_encode_each_distinct_caption_once(tiny_open_clip, monkeypatch):
    """15,000 built-in scenes hold 11,033 distinct captions: more than a 10,000-caption memo would keep."""
    scenes = ShapesDataset(length=15_000)
    captions = [scenes.scene(i)[1] for i in range(15_000)]
    distinct = len(set(captions))
    assert distinct > 10_000
    encoder = OpenCLIP(*tiny_open_clip)
    calls = count_encoder_calls(encoder, monkeypatch)
    cache = EmbeddingCache(encoder, batch_size=4096)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = torch.randperm(len(captions), generator=g).tolist()
        for start in range(0, len(order), 1024):
            cache.encode([captions[i] for i in order[start : start + 1024]])
    encoded = [c for call in calls for c in call if c]
    assert len(encoded) == len(set(encoded)) == distinct


def test_precomputed_file_serves_captions_without_the_model(tiny_open_clip, monkeypatch, tmp_path):
    encoder = OpenCLIP(*tiny_open_clip)
    path = save_embeddings(encoder, CAPTIONS[:300] + CAPTIONS[:10], tmp_path / "captions.safetensors", batch_size=128)
    expected = encoder.encode(CAPTIONS[:3])
    calls = count_encoder_calls(encoder, monkeypatch)
    cache = EmbeddingCache(encoder, file=path)
    served = cache.encode(CAPTIONS[:3])
    assert calls == []
    torch.testing.assert_close(served.pooled, expected.pooled)
    assert torch.equal(served.mask, expected.mask)
    cache.encode([""])  # a caption outside the file (the null prompt) falls back to the model
    assert [len(c) for c in calls] == [16]  # one batch, padded to the cache's 16 rows


def test_file_built_by_another_encoder_is_refused(tiny_open_clip, tiny_transformers_clip, tmp_path):
    path = save_embeddings(OpenCLIP(*tiny_open_clip), ["a cube"], tmp_path / "captions.safetensors")
    with pytest.raises(UserError, match="built by a different encoder"):
        EmbeddingCache(OpenCLIP(*tiny_open_clip, layer="penultimate"), file=path)
    with pytest.raises(UserError, match=r"OpenCLIP\(layer=last.*TransformersCLIP\(layer=last"):
        EmbeddingCache(TransformersCLIP(tiny_transformers_clip), file=path)


def test_trainable_encoders_and_missing_files_are_user_errors(tiny_open_clip, tmp_path):
    with pytest.raises(UserError, match="cannot be cached"):
        EmbeddingCache(OpenCLIP(*tiny_open_clip, trainable=True))
    with pytest.raises(UserError, match="does not exist"):
        EmbeddingCache(OpenCLIP(*tiny_open_clip), file=tmp_path / "missing.safetensors")


def test_a_captions_embedding_is_the_same_bits_whatever_arrives_with_it():
    """A CPU matmul rounds differently for another number of rows (the built-in CLIP shows it): the cache pads
    every batch to one size, so a resumed run, which meets its captions in other groups, sees the same bits."""
    from film_diffusion.encoders.builtin import builtin_clip

    encoder = builtin_clip()
    caption = "a large red circle at the top left"
    others = ["a small blue square in the center", "a large green star at the bottom right", "a small pink star"]
    alone = EmbeddingCache(encoder).encode([caption])
    for n in range(1, 4):
        grouped = EmbeddingCache(encoder).encode(others[:n] + [caption])
        assert torch.equal(grouped.tokens[-1], alone.tokens[0]) and torch.equal(grouped.pooled[-1], alone.pooled[0])
    direct = [encoder.encode(others[:n] + [caption]) for n in range(3)]  # the encoder alone does not promise it
    assert not all(torch.equal(d.pooled[-1], direct[0].pooled[0]) for d in direct)
