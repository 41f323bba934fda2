"""A poisoned batch stops the run naming its step, or (train.skip_nonfinite) skips that step's update and logs
it; a checkpoint write that runs out of disk leaves the previous checkpoint intact and says the disk is full.
Either way the last good checkpoint survives and the run continues from it exactly."""

import errno
import json
import resource
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from runs import tiny_config, tiny_run
from safetensors.torch import load_file

from film_diffusion.cli import main
from film_diffusion.config import config_to_dict
from film_diffusion.errors import UserError
from film_diffusion.integrity import verify
from film_diffusion.training import checkpoints, progress, trainer

RUN = ["train.max_steps=6", "train.checkpoint_every=1", "train.checkpoints_total_limit=null"]


def poison(monkeypatch, steps: set[int]) -> None:
    """The images of the batches of ``steps`` become NaN (one micro-batch per step)."""
    original, calls = trainer.clean_latents, [0]

    def poisoned(vae, batch, random, device):
        calls[0] += 1
        x0 = original(vae, batch, random, device)
        return torch.full_like(x0, float("nan")) if calls[0] in steps else x0

    monkeypatch.setattr(trainer, "clean_latents", poisoned)


def weights(run, step):
    return load_file(run / "checkpoints" / f"checkpoint-{step}" / "model.safetensors")


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_nan_batch_stops_the_run_naming_the_step_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    poison(monkeypatch, {3})
    with pytest.raises(UserError, match=r"The loss became nan at step 3; the run stopped and its checkpoints are "
                                        r"untouched\. .*train\.skip_nonfinite: true"):
        tiny_run(tmp_path / "run", *RUN)
    run = tmp_path / "run"
    assert [p.name for p in checkpoints.checkpoint_dirs(run)] == ["checkpoint-1", "checkpoint-2"]
    verify(run / "checkpoints" / "checkpoint-2")
    assert [row["step"] for row in rows(run)] == [1, 2]


def test_with_skip_nonfinite_the_poisoned_step_changes_nothing_and_is_logged(tmp_path, monkeypatch, capsys):
    poison(monkeypatch, {3})
    run = tiny_run(tmp_path / "run", *RUN, "train.skip_nonfinite=true")
    assert "step 3: the loss became nan; its update was skipped (train.skip_nonfinite)." in capsys.readouterr().out
    before, after = weights(run, 2), weights(run, 3)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update from the NaN batch
    ema = [load_file(run / "checkpoints" / f"checkpoint-{s}" / "run_state.safetensors") for s in (2, 3)]
    assert all(torch.equal(ema[0][k], ema[1][k]) for k in ema[0] if k.startswith("ema."))
    assert not torch.equal(weights(run, 4)["final_layer.linear.weight"], after["final_layer.linear.weight"])
    logged = rows(run)
    assert [row["step"] for row in logged] == [1, 2, 3, 4, 5, 6]
    assert logged[2]["loss"] is None and [row["skipped_steps"] for row in logged] == [0, 0, 1, 1, 1, 1]
    assert all(torch.isfinite(t).all() for t in weights(run, 6).values())


def test_a_full_disk_keeps_the_previous_checkpoint_and_the_run_resumes_exactly(tmp_path, monkeypatch):
    whole = tiny_run(tmp_path / "whole", *RUN)
    save_run_state = checkpoints.save_run_state

    def disk_full_at_step_4(folder, state):
        if folder.name.startswith("checkpoint-4"):
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "run_state.safetensors"))
        save_run_state(folder, state)

    monkeypatch.setattr(checkpoints, "save_run_state", disk_full_at_step_4)
    run = tmp_path / "run"
    with pytest.raises(UserError) as caught:
        tiny_run(run, *RUN)
    assert str(caught.value) == (
        f"The disk is full: writing checkpoint '{run}/checkpoints/checkpoint-4' failed ([Errno 28] No space left on "
        f"device: '{run}/checkpoints/checkpoint-4.partial/run_state.safetensors') and was removed; the newest intact "
        f"checkpoint, '{run}/checkpoints/checkpoint-3', is untouched. Free some space, then continue with --resume "
        "latest.")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    verify(run / "checkpoints" / "checkpoint-3")
    monkeypatch.undo()
    tiny_run(run, *RUN, resume="latest")
    a, b = weights(whole, 6), weights(run, 6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [row["step"] for row in rows(run)] == [1, 2, 3, 4, 5, 6]


def test_a_file_size_limit_stops_the_first_checkpoint_with_one_line(tmp_path):
    """The operating system's own refusal (RLIMIT_FSIZE, as a full disk would), in a real process."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(tiny_config(tmp_path / "run", *RUN))))

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (48_000, 48_000))  # above config and logs, below the weights

    done = subprocess.run([sys.executable, "-m", "film_diffusion.cli", "train", str(config)], capture_output=True,
                          text=True, preexec_fn=limit_file_size, timeout=300)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert err[-1].startswith(f"film-diffusion train: error: The disk is full: writing checkpoint '{tmp_path}/run/"
                              "checkpoints/checkpoint-1' failed (") and "no earlier checkpoint" in err[-1]
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # no partial folder left
    assert main(["train", str(config), "--resume", "latest"]) == 0  # with room again, the same run starts over


def test_what_counts_as_non_finite():
    """Outside fp16 an infinite gradient norm stops (or skips) a step; under fp16 it is the gradient scaler's to
    handle (it skips that step and lowers the scale), so only the loss counts there."""
    inf = torch.tensor(float("inf"))
    assert progress.nonfinite(0.5, torch.tensor(1.0), scaled=False) is None
    assert progress.nonfinite(float("nan"), None, scaled=True) == "loss became nan"
    assert progress.nonfinite(0.5, inf, scaled=False) == "gradient norm became inf"
    assert progress.nonfinite(0.5, inf, scaled=True) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 training needs a GPU")
def test_fp16_on_a_gpu_trains_through_the_gradient_scaler(tmp_path, monkeypatch):
    scalers = []
    prepare = trainer.Accelerator.prepare

    def record(self, *args):
        scalers.append(self.scaler)
        return prepare(self, *args)

    monkeypatch.setattr(trainer.Accelerator, "prepare", record)
    run = tiny_run(tmp_path / "run", *RUN, "train.mixed_precision=fp16")
    assert isinstance(scalers[0], torch.amp.GradScaler)
    assert all(torch.isfinite(t).all() for t in weights(run, 6).values())
