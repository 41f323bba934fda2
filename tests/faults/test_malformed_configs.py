"""A config mistake is one line naming the key, exit status 2, and nothing written."""

import pytest
import yaml

from film_diffusion.cli import main

CASES = [
    ({"train": {"max_step": 10}}, "Unknown config key 'train.max_step'", "did you mean 'train.max_steps'"),
    ({"modle": {"backbone": "dit"}}, "Unknown config key 'modle'", "did you mean 'model'"),
    ({"model": {"conditoning": ["film"]}}, "'model.conditoning'", "did you mean 'model.conditioning'"),
    ({"train": {"batch_size": "thirty-two"}}, "'train.batch_size' must be of type int", ""),
    ({"train": {"lr": "fast"}}, "'train.lr'", ""),
    ({"model": {"backbone": "vit"}}, "'model.backbone' is 'vit'; choose one of 'dit', 'unet'", ""),
    ({"train": {"mixed_precision": "fp8"}}, "'train.mixed_precision' is 'fp8'", "'bf16'"),
    ({"train": {"max_steps": -5}}, "'train.max_steps' is -5; it must be at least 1", ""),
    ({"train": {"batch_size": 6, "gradient_accumulation_steps": 4}}, "'train.batch_size' is 6", "multiple of 4"),
    ({"model": {"conditioning": ["filmm"]}}, "Unknown conditioning method 'filmm'", "model"),
    ({"model": {"dit": {"hidden_size": 100, "num_heads": 6}}}, "hidden_size=100 is not divisible by num_heads=6",
     "model"),
    ({"model": {"backbone": "dit", "dit": {"patch_size": 5}}}, "sample_size=32 is not divisible by patch_size=5",
     "model"),
    ({"condition": {"source": "class_labels"}}, "'condition.num_classes' is required", ""),
    ({"condition": {"source": "transformers"}}, "'condition.name' is required", ""),
    ({"data": {"name": "folder"}}, "'data.root' is required", ""),
    ({"model": {"backbone": "unet", "learn_sigma": True}}, "'model.learn_sigma' is true, but only the DiT", ""),
    ({"objective": {"prediction": "flow", "min_snr_gamma": 5}}, "'objective.min_snr_gamma'", "not flow"),
    ({"train": {"null_condition": "nothing"}}, "'train.null_condition' is 'nothing'", ""),
    ({"data": {"resolution": 8}}, "Config section 'data': Resolution 8 is out of range", ""),
    ({"model": {"preset": "DiT-M/2"}}, "'model.preset' is 'DiT-M/2'", "DiT-S/2"),
    ({"train": {"caption_dropout": 1.5}}, "'train.caption_dropout' is 1.5", ""),
    ({"sample": {"scheduler": "warp"}}, "Config key 'sample.scheduler': Unknown scheduler 'warp'", ""),
    ({"train": {"checkpoints_total_limit": -1}}, "'train.checkpoints_total_limit' is -1; keep at least 1", ""),
    ({"train": {"max_grad_norm": -1.0}}, "'train.max_grad_norm' is -1.0; use a positive value", ""),
    ({"train": {"adam_beta2": 1.5}}, "'train.adam_beta2' is 1.5", ""),
    ({"objective": {"logit_std": 0}}, "'objective.logit_std' is 0.0; it must be positive", ""),
    ({"model": {"backbone": "unet", "token_mixer": "ffnified"}}, "'model.token_mixer' is 'ffnified', but only the DiT",
     ""),
    ({"model": {"token_mixer": "ffnified", "mixer_kernel_size": 6}}, "'model.mixer_kernel_size' is 6", "odd"),
    ({"model": {"backbone": "unet", "conv_head": True}}, "'model.conv_head' adds a convolution", "remove it"),
    ({"model": {"token_mixer": "mamba"}}, "'model.token_mixer' is 'mamba'", "'ffnified'"),
    ({"condition": {"source": "class_labels", "num_classes": 32}, "sample": {"class_labels": [40]}},
     "'sample.class_labels' is [40]; use class ids from 0 to 31", ""),
    ({"train": {"ema_decay": 1.0}}, "'train.ema_decay' is 1.0; choose a value in [0, 1)", ""),
    ({"train": {"lr": -0.1}}, "'train.lr' is -0.1; it must be positive", ""),
    ({"train": {"warmup_steps": -1}}, "'train.warmup_steps' is -1; use 0 or more", ""),
    ({"sample": {"steps": 0}}, "'sample.steps' is 0; it must be at least 1", ""),
    ({"eval": {"scenes": 1}}, "'eval.scenes' (1)", "must be at least 2"),
    ({"train": {"lr_scheduler": "exponential"}}, "'train.lr_scheduler' is 'exponential'", "'cosine'"),
    ({"objective": {"prediction": "x0"}}, "'objective.prediction' is 'x0'", "'flow'"),
    ({"train": {"max_steps": 1.5}}, "'train.max_steps' must be of type int, got 1.5", ""),
    ({"train": {"max_steps": None}}, "'train.max_steps' must be of type int, got None", ""),
    ({"seed": "zero"}, "'seed' must be of type int, got 'zero'", ""),
    ({"model": {"conditioning": "film"}}, "'model.conditioning' must be a list", ""),
    ({"condition": {"source": "bert"}}, "'condition.source' is 'bert'", "'builtin_clip'"),
    ({"data": {"num_workers": -1}}, "'data.num_workers' is -1; use 0 or more", ""),
    ({"data": {"name": "folder", "root": "/no/such/folder"}}, "'data.root' is '/no/such/folder', which is not a "
     "folder", ""),
    ({"condition": {"embeddings": "/no/such/embeddings.safetensors"}}, "'condition.embeddings' is "
     "'/no/such/embeddings.safetensors'", ""),
    ({"train": "fast"}, "'train' must be a mapping of keys to values, got 'fast'", ""),
    ({"train": {"sharding": "fsdp"}}, "'train.sharding' is 'fsdp', which shards the model over processes, but this "
     "run has one", "torchrun"),
    ({"data": {"name": "webdataset", "root": "/no/such/shards-{000..009}.tar"}}, "'data.root' is "
     "'/no/such/shards-{000..009}.tar', which matches no .tar file", ""),
    ({"data": {"name": "hf"}}, "'data.root' is required with data.name=hf", ""),
    ({"train": {"repa_weight": -1.0}}, "'train.repa_weight' is -1.0; use 0 (off) or a positive weight", ""),
    ({"train": {"repa_weight": 0.5, "compile": True}}, "'train.compile' is not supported with train.repa_weight",
     "set train.repa_weight to 0"),
    ({"data": {"name": "folder", "root": ".", "cache": True}}, "'data.cache' keeps drawn built-in scenes; "
     "data.name=folder reads its images from files", "data.cache: false"),
]


@pytest.mark.parametrize("raw, message, also", CASES, ids=[c[1][:40] for c in CASES])
def test_malformed_config_is_one_line_and_writes_nothing(raw, message, also, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["train", str(config), f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("film-diffusion train: error: "), err
    assert message in err[0] and also in err[0], err[0]
    assert not out.exists()


def test_a_missing_column_is_one_line_and_writes_nothing(tmp_path, capsys):
    from shards import samples, write_parquet

    write_parquet(tmp_path / "data", samples(4))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"name": "hf", "root": str(tmp_path / "data"),
                                               "caption_column": "caption"}}))
    assert main(["train", str(config), f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Config key 'data.caption_column' is 'caption', but" in err[0], err
    assert "has no such column (it has image, text, label)" in err[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [
    (b"train: [1, 2\n", "is not valid YAML (expected ',' or ']', but got '<stream end>' at line 2, column 1)"),
    (b"- 1\n- 2\n", "must hold a mapping of keys to values at the top level"),
    (b"seed: 1\xff\n", "is not UTF-8 text (byte 7); save it as UTF-8"),
    (b"\tseed: 1\n", "is not valid YAML (found character '\\t' that cannot start any token at line 1, column 1)"),
], ids=["syntax", "a list", "not UTF-8", "a tab"])
def test_an_unreadable_config_file_is_one_line(text, message, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_bytes(text)
    assert main(["train", str(config), f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"film-diffusion train: error: Config file '{config}' {message}."] or (
        len(err) == 1 and message in err[0]), err
    assert not (tmp_path / "run").exists()


def test_a_batch_that_does_not_split_over_the_processes(tmp_path):
    from film_diffusion.config import ConfigError
    from film_diffusion.training.config import check_config, load_experiment

    config = load_experiment({}, ["train.batch_size=32"])
    check_config(config, num_processes=2)  # 16 each
    with pytest.raises(ConfigError, match=r"'train.batch_size' is 32, which does not split into 3 process\(es\) x 1 "
                                          r"accumulation step\(s\); choose a multiple of 3"):
        check_config(config, num_processes=3)


def test_a_missing_config_file_and_a_bad_override(tmp_path, capsys):
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("seed: 1\n")
    assert main(["train", str(tmp_path / "c.yaml"), "train.max_steps"]) == 2
    assert "must look like key=value" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "c.yaml"), "train.lr=[1,"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Override 'train.lr=[1,': the value is not valid YAML" in err[0], err
