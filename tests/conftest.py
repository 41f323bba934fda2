"""Shared test setup. Tests never reach the network: the Hugging Face libraries run offline, any
connection to another machine fails the test, and tiny CLIP models are built and saved locally."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import gzip
import json
import socket
from pathlib import Path

import open_clip
import pytest
import torch
from accelerate.state import AcceleratorState
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from film_diffusion.data.vocabulary import CELLS, COLORS, SHAPES, SIZES

TINY_OPEN_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state (mixed precision included); each training run in a test starts
    anew, as a `film-diffusion train` process does."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that tries to reach another machine (loopback stays allowed)."""
    local = {"localhost", "127.0.0.1", "::1"}
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self: socket.socket, address):
        if isinstance(address, tuple) and address[0] not in local:
            raise AssertionError(f"a test tried to reach the network: {address}")
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in local and host is not None:
            raise AssertionError(f"a test tried to resolve a host name: {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


def write_clip_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt of the real CLIP tokenizer, from the BPE file open_clip ships
    (the same construction as open_clip's SimpleTokenizer)."""
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.fixture(scope="session")
def tiny_transformers_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like a hub CLIP repo: config, safetensors weights, tokenizer files."""
    folder = tmp_path_factory.mktemp("tiny-transformers-clip")
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=24,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    write_clip_tokenizer_files(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A custom open_clip architecture registered by name, and a safetensors state dict for it."""
    folder = tmp_path_factory.mktemp("tiny-open-clip")
    (folder / "film-test-tiny-clip.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(folder / "film-test-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("film-test-tiny-clip")
    save_file(model.state_dict(), folder / "weights.safetensors")
    return "film-test-tiny-clip", folder / "weights.safetensors"


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like a hub T5 repo: a 2-layer ``T5EncoderModel`` and a word-level fast tokenizer over the
    built-in scenes' words, ending each caption with ``</s>`` as T5's does."""
    folder = tmp_path_factory.mktemp("tiny-t5")
    words = sorted({w for phrase in [*COLORS, *SHAPES, *SIZES, *CELLS, "a at the on in of and"]
                    for w in phrase.split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(config).save_pretrained(folder)
    return folder
