"""A 2-process CPU run (torchrun, gloo) trains, and its losses match a 1-process run with the same global batch."""

import json
import socket
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


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hf", "webdataset"])
def test_two_processes_read_sharded_data_as_one_does(tmp_path, kind):
    """Parquet or tar shards with a broken sample, random crops and flips, 2 loader workers per process: the
    same samples, augmentations and losses as one process."""
    from shards import samples, write_parquet, write_tars

    rows = samples(30, broken=(11,))
    root = write_parquet(tmp_path / "data", rows) if kind == "hf" else write_tars(tmp_path / "data", rows)
    data = [f"data.name={kind}", f"data.root={root}", "data.random_flip=true", "data.center_crop=false",
            "data.num_workers=2", "data.shuffle_window=12", "train.max_steps=6"]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "film_diffusion.cli", "train", str(config), *TINY, *STEPS, *data, f"output_dir={tmp_path / 'two'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipping sample 11" in result.stderr
    two = losses(tmp_path / "two")
    assert len(two) == 6 and two == pytest.approx(losses(tiny_run(tmp_path / "one", *STEPS, *data)), rel=1e-4)


@pytest.mark.slow
def test_two_nodes_of_one_process_each_match_one_process(tmp_path):
    """``torchrun --nnodes 2 --nproc_per_node 1`` on this machine: two nodes sharing the run folder (as on a shared
    file system), each with its own local main process; it checkpoints and its losses match a 1-process run."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
         str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "film_diffusion.cli", "train",
         str(config), *TINY, *STEPS, "train.checkpoint_every=2", f"output_dir={tmp_path / 'nodes'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    run = tmp_path / "nodes"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    one = tiny_run(tmp_path / "one", *STEPS)
    assert losses(run) == pytest.approx(losses(one), rel=1e-4)
