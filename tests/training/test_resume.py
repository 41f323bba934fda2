"""Resume is exact: a run killed after a checkpoint and resumed ends identical to one that never stopped."""

import json
import shutil

import pytest
import torch
from runs import metric_rows, tiny_run
from safetensors.torch import load_file

from film_diffusion.errors import UserError
from film_diffusion.training import hooks
from film_diffusion.training.checkpoints import save_checkpoint

# 6 optimizer steps of 2 accumulated micro-batches over 24 scenes: epochs end mid-step-run, so the resume
# at step 3 lands mid-epoch (micro-batch 6 of 12) with a log window in progress (log_every=2).
RUN = ["train.max_steps=6", "train.gradient_accumulation_steps=2", "train.checkpoint_every=3", "train.log_every=2",
       "train.checkpoints_total_limit=null", "train.null_condition=learned", "train.caption_dropout=0.5"]


class Killed(Exception):
    pass


def kill_after_checkpoint(monkeypatch, step: int) -> None:
    """The process dies right after checkpoint ``step`` is complete, as a kill would leave it."""

    def save_then_die(accelerator, run, saved_step, keep, state, sharded=None):
        path = save_checkpoint(accelerator, run, saved_step, keep, state, sharded)
        if saved_step == step:
            raise Killed
        return path

    monkeypatch.setattr(hooks, "save_checkpoint", save_then_die)


def states(run):
    checkpoint = run / "checkpoints" / "checkpoint-6"
    return {
        "model": load_file(checkpoint / "model.safetensors"),
        "optimizer": torch.load(checkpoint / "optimizer.bin", weights_only=True),
        "run_state": load_file(checkpoint / "run_state.safetensors"),  # EMA weights, generator state
        "run_values": run_values(checkpoint),  # step, lr schedule, EMA counters
        # every logged number but the wall-clock ones
        "metrics": metric_rows(run),
        "pipeline": load_file(run / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors"),
    }


def run_values(checkpoint):
    """The checkpoint's JSON state but the training seconds (the clock is not the same in two runs)."""
    values = json.loads((checkpoint / "run_state.json").read_text())
    assert values["progress"].pop("seconds") > 0
    return values


def assert_equal(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    whole = tiny_run(tmp_path / "whole", *RUN)
    kill_after_checkpoint(monkeypatch, 3)
    with pytest.raises(Killed):
        tiny_run(tmp_path / "killed", *RUN)
    monkeypatch.undo()
    assert not (tmp_path / "killed" / "pipeline").exists()
    resumed = tiny_run(tmp_path / "killed", *RUN, resume="latest")
    a, b = states(whole), states(resumed)
    assert_equal(a, b)  # weights, optimizer, lr schedule, EMA, generator, step, log rows, final EMA pipeline
    assert [row["step"] for row in a["metrics"]] == [2, 4, 6]
    seconds = [json.loads(line)["train_seconds"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert 0 < seconds[0] < seconds[1] < seconds[2]  # the clock goes on from the checkpoint's
    assert a["run_values"]["ema"]["optimization_step"] == 6 and a["run_values"]["progress"]["step"] == 6
    assert not list((resumed / "checkpoints" / "checkpoint-6").glob("custom_checkpoint_*"))  # no pickled state


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """The same twelve 20x20 captioned images as a folder, Hugging Face parquet and WebDataset tars (these two
    with a thirteenth sample, broken, in the middle)."""
    from shards import samples, write_folder, write_parquet, write_tars

    root = tmp_path_factory.mktemp("image_data")
    rows = samples(13, broken=(6,))
    return {"folder": ["data.name=folder", f"data.root={write_folder(root / 'folder', samples(12))}"],
            "hf": ["data.name=hf", f"data.root={write_parquet(root / 'hf', rows, row_group=4)}"],
            "webdataset": ["data.name=webdataset", f"data.root={write_tars(root / 'wds', rows, per_shard=5)}",
                           "data.shuffle_window=5"]}


@pytest.mark.parametrize("kind", ["folder", "hf", "webdataset"])
def test_random_flips_and_crops_resume_exactly_from_every_kind_of_data(tmp_path, monkeypatch, image_data, kind,
                                                                       caplog):
    data = [*image_data[kind], "data.random_flip=true", "data.center_crop=false"]
    whole = tiny_run(tmp_path / "whole", *RUN, *data)
    kill_after_checkpoint(monkeypatch, 3)
    with pytest.raises(Killed):
        tiny_run(tmp_path / "killed", *RUN, *data)
    monkeypatch.undo()
    assert_equal(states(whole), states(tiny_run(tmp_path / "killed", *RUN, *data, resume="latest")))
    if kind != "folder":  # the broken sample was drawn (6 steps of 8 from 13 samples) and skipped with a warning
        assert "Skipping sample 6 (" in caplog.text and "1 of 13 samples skipped so far" in caplog.text


def test_seeded_items_repeat_an_augmentation_by_stream_position(tiny_image_folder):
    from film_diffusion.data.folder import ImageFolderDataset
    from film_diffusion.training.streams import SeededItems

    items = SeededItems(ImageFolderDataset(tiny_image_folder, 16, center_crop=False, random_flip=True), seed=0)
    torch.manual_seed(123)  # the global RNG's state does not matter
    first = items[(3, 40)]["image"]
    torch.manual_seed(456)
    assert torch.equal(items[(3, 40)]["image"], first)
    assert any(not torch.equal(items[(3, p)]["image"], first) for p in range(41, 45))  # other positions differ


def test_resume_latest_skips_a_half_written_checkpoint_and_refuses_a_finished_folder(tmp_path, monkeypatch, capsys):
    kill_after_checkpoint(monkeypatch, 3)
    with pytest.raises(Killed):
        tiny_run(tmp_path / "run", *RUN)
    monkeypatch.undo()
    partial = tmp_path / "run" / "checkpoints" / "checkpoint-6.partial"  # a save cut short by a kill
    shutil.copytree(tmp_path / "run" / "checkpoints" / "checkpoint-3", partial)
    (partial / "model.safetensors").write_bytes(b"truncated")
    tiny_run(tmp_path / "run", *RUN, resume="latest")
    out = capsys.readouterr().out
    assert "Resuming from" in out and "checkpoint-3 at step 3" in out
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-6").is_dir() and not partial.exists()
    with pytest.raises(UserError, match="already holds a run; pass --resume latest"):
        tiny_run(tmp_path / "run", *RUN)
    damaged = tmp_path / "run" / "checkpoints" / "checkpoint-6"
    (damaged / "run_state.json").unlink()
    with pytest.raises(UserError, match="run_state.json' is missing from .*checkpoint-6'; the folder is incomplete"):
        tiny_run(tmp_path / "run", *RUN, "train.max_steps=8", resume=str(damaged))
    (damaged / "checksums.json").unlink()  # copied without its manifest: the loader itself still refuses it
    with pytest.raises(UserError, match="has no run_state.safetensors / run_state.json; it was not written by"):
        tiny_run(tmp_path / "run", *RUN, "train.max_steps=8", resume=str(damaged))


def test_the_lr_schedule_counts_optimizer_steps_whatever_the_accumulation(tmp_path):
    def lrs(run):
        return [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    one = tiny_run(tmp_path / "one", "train.max_steps=4", "train.warmup_steps=4", "train.lr=0.004")
    four = tiny_run(tmp_path / "four", "train.max_steps=4", "train.warmup_steps=4", "train.lr=0.004",
                    "train.gradient_accumulation_steps=4")
    assert lrs(one) == lrs(four) == pytest.approx([0.0, 0.001, 0.002, 0.003])  # the rate each step used
