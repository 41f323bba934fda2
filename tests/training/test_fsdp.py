"""``train.sharding: fsdp`` on the CPU (2 processes, gloo, torch's FSDP2): the losses of a 1-process run, an exact
resume from a sharded checkpoint after a kill, a pipeline gathered from the shards that samples; and the refusals."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from runs import TINY, tiny_config, tiny_run
from safetensors.torch import load_file

from film_diffusion.config import ConfigError
from film_diffusion.pipelines import FilmDiffusionPipeline

STEPS = ["train.max_steps=6", "train.batch_size=8", "train.caption_dropout=0.25", "train.null_condition=learned",
         "model.conditioning=[film, cross_attention]", "train.gradient_accumulation_steps=2", "train.ema_decay=0.5"]
FSDP = ["train.sharding=fsdp"]


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def pipeline_weights(run) -> dict[str, torch.Tensor]:
    return load_file(run / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors")


def torchrun(tmp_path, output: str, *overrides: str, resume: bool = False) -> subprocess.Popen:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "film_diffusion.cli", "train", str(config), *TINY, *STEPS, *FSDP, *overrides,
               f"output_dir={tmp_path / output}", *(["--resume", "latest"] if resume else [])]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen) -> None:
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_two_sharded_processes_match_one_process_and_leave_a_pipeline_that_samples(tmp_path, backbone):
    model = [f"model.backbone={backbone}", "train.sample_every=3"]  # a grid from the gathered weights
    finished(torchrun(tmp_path, "fsdp", *model))
    assert (tmp_path / "fsdp" / "samples" / "step-000003.png").is_file()
    one = tiny_run(tmp_path / "one", *STEPS, *model)
    # The same data, noise and dropout reach the model; the sums are reduced in another order.
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(one), rel=1e-4)
    sharded, whole = pipeline_weights(tmp_path / "fsdp"), pipeline_weights(one)  # gathered EMA weights
    assert sharded.keys() == whole.keys()
    assert all(torch.allclose(sharded[k], whole[k], rtol=1e-3, atol=1e-5) for k in whole)
    pipe = FilmDiffusionPipeline.from_pretrained(tmp_path / "fsdp" / "pipeline")
    image = pipe("a red circle", num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "checkpoint-6"
    assert (checkpoint / "sharded" / ".metadata").is_file() and not list(checkpoint.glob("*.bin"))  # no pickle


@pytest.mark.slow
def test_a_sharded_run_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    every = ["train.checkpoint_every=3", "train.checkpoints_total_limit=null"]
    finished(torchrun(tmp_path, "whole", *every))
    finished(torchrun(tmp_path, "killed", *every))
    # What a kill after the step-3 checkpoint leaves (a tiny step takes milliseconds: a real kill would race
    # the run's end): checkpoint-3, and log rows past it, which the resume drops.
    killed = tmp_path / "killed"
    shutil.rmtree(killed / "checkpoints" / "checkpoint-6")
    shutil.rmtree(killed / "pipeline")
    finished(torchrun(tmp_path, "killed", *every, resume=True))
    assert losses(killed) == losses(tmp_path / "whole")
    a, b = pipeline_weights(tmp_path / "whole"), pipeline_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the gathered EMA, exactly


@pytest.mark.parametrize("overrides, message", [
    (FSDP, "Config key 'train.sharding' is 'fsdp', which shards the model over processes, but this run has one; "
           "launch 2 or more"),
])
def test_sharding_on_one_process_is_one_sentence_and_writes_nothing(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_run(tmp_path / "run", *overrides)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["train.compile=true", "train.gradient_checkpointing=true"])
def test_what_sharding_does_not_support_yet_is_refused_when_the_config_loads(tmp_path, key):
    with pytest.raises(ConfigError, match=f"Config key '{key.split('=')[0]}' is not supported with "
                                          "train.sharding=fsdp yet"):
        tiny_config(tmp_path, *FSDP, key)
