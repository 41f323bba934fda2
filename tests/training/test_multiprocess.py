"""A 2-process CPU run (torchrun, gloo) trains, and its losses match a 1-process run with the same global batch."""

import json
import subprocess
import sys

import pytest
import yaml
from runs import TINY, tiny_run

STEPS = ["train.max_steps=4", "train.batch_size=8", "train.caption_dropout=0.25", "train.null_condition=learned",
         "model.conditioning=[film, cross_attention]"]


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "film_diffusion.cli", "train", str(config), *TINY, *STEPS, f"output_dir={tmp_path / 'two'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one = tiny_run(tmp_path / "one", *STEPS)
    two = losses(tmp_path / "two")
    assert len(two) == 4 and (tmp_path / "two" / "pipeline" / "model_index.json").is_file()
    # The same images, noise, timesteps and dropout reach the model; only the order of float sums differs.
    assert two == pytest.approx(losses(one), rel=1e-4)
