"""Damaged checkpoints and model folders: each is refused with one sentence naming the file and what is wrong;
``--resume latest`` passes over damaged checkpoints to the newest intact one and says so; nothing good is
written over."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from runs import metric_rows, one_error_line, tiny_config
from safetensors.torch import load_file, save_file

from film_diffusion.cli import main
from film_diffusion.config import config_to_dict
from film_diffusion.training.build import build_denoiser

RUN = ["train.max_steps=6", "train.checkpoint_every=2", "train.checkpoints_total_limit=null", "train.log_every=2"]
WEIGHTS = "model.safetensors"
PIPELINE_WEIGHTS = Path("denoiser") / "diffusion_pytorch_model.safetensors"


def write_config(folder: Path, *overrides: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(tiny_config(folder / "run", *RUN, *overrides))))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (checkpoints at steps 2, 4 and 6, and its pipeline) and the config that made it."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder)
    assert main(["train", str(config)]) == 0
    return folder / "run", config


@pytest.fixture
def stopped(finished, tmp_path):
    """A copy of the finished run as a kill after its step-6 checkpoint leaves it: no pipeline yet, and the config
    file that trains it."""
    run = shutil.copytree(finished[0], tmp_path / "run")
    shutil.rmtree(run / "pipeline")
    return run, write_config(tmp_path)


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # a weight, past the header: safetensors itself would load it without a word
    path.write_bytes(bytes(data))


def pickle_in_place(path: Path) -> None:
    """The same tensors, as a pickle under the safetensors name (copied first: load_file maps the file)."""
    tensors = {k: v.clone() for k, v in load_file(path).items()}
    path.unlink()
    torch.save(tensors, path)


DAMAGE = {
    "truncated": (truncate, "has {found} bytes where {size} were written"),
    "flipped byte": (flip_last_byte, "does not match the checksum it was written with"),
    "missing file": (Path.unlink, "is missing from"),
    "pickle as safetensors": (pickle_in_place, "were written"),  # a different size: the manifest names it first
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_latest_passes_over_a_damaged_newest_checkpoint(damage, stopped, finished, capsys):
    run, config = stopped
    target = run / "checkpoints" / "checkpoint-6" / WEIGHTS
    size = target.stat().st_size
    harm, message = DAMAGE[damage]
    found = size // 2 if damage == "truncated" else None
    harm(target)
    assert main(["train", str(config), "--resume", "latest"]) == 0
    out = capsys.readouterr().out
    assert f"Passing over a damaged checkpoint: '{target}'" in out
    assert message.format(found=found, size=size) in out
    assert f"Resuming from {run / 'checkpoints' / 'checkpoint-4'} at step 4." in out
    # the fallback retrains steps 5 and 6 into exactly what the uninterrupted run saved
    whole = finished[0] / "checkpoints" / "checkpoint-6" / WEIGHTS
    assert all(torch.equal(a, b) for a, b in zip(load_file(whole).values(), load_file(target).values(), strict=True))


def test_a_pickle_without_a_manifest_is_refused_by_its_header(stopped, capsys):
    run, config = stopped
    checkpoint = run / "checkpoints" / "checkpoint-6"
    (checkpoint / "checksums.json").unlink()  # as a checkpoint copied without its manifest
    pickle_in_place(checkpoint / WEIGHTS)
    before = digests(run)
    assert main(["train", str(config), "--resume", str(checkpoint)]) == 2
    line = one_error_line(capsys, "train")
    assert f"'{checkpoint / WEIGHTS}' is not a readable safetensors file" in line and "another format" in line
    assert digests(run) == before


def test_every_checkpoint_damaged_is_refused_and_nothing_is_written(stopped, capsys):
    run, config = stopped
    for step in (2, 4, 6):
        flip_last_byte(run / "checkpoints" / f"checkpoint-{step}" / WEIGHTS)
    before = digests(run)
    assert main(["train", str(config), "--resume", "latest"]) == 2
    line = one_error_line(capsys, "train")
    assert f"No checkpoint of '{run}' is intact (3 damaged; the newest: '{run}/checkpoints/checkpoint-6/" in line
    assert digests(run) == before


def test_an_explicit_damaged_checkpoint_is_refused_not_replaced(stopped, capsys):
    run, config = stopped
    checkpoint = run / "checkpoints" / "checkpoint-4"
    (checkpoint / "optimizer.bin").unlink()
    before = digests(run)
    assert main(["train", str(config), "--resume", str(checkpoint)]) == 2
    assert f"'{checkpoint / 'optimizer.bin'}' is missing from '{checkpoint}'" in one_error_line(capsys, "train")
    assert digests(run) == before


@pytest.mark.parametrize("other", [["model.dit.hidden_size=64"], ["model.backbone=unet"]],
                         ids=["another width", "another backbone"])
def test_a_checkpoint_of_another_model_is_refused(other, stopped, tmp_path, capsys):
    run, _ = stopped
    config = write_config(tmp_path, *other)
    before = digests(run)
    assert main(["train", str(config), "--resume", "latest"]) == 2
    line = one_error_line(capsys, "train")
    assert f"Checkpoint '{run / 'checkpoints' / 'checkpoint-6'}' does not fit this run" in line
    assert "resume with the config it was trained with" in line
    assert digests(run) == before


def test_a_kill_before_the_first_checkpoint_restarts_the_same_run_but_not_another(finished, tmp_path, capsys):
    run = tmp_path / "run"
    config = write_config(tmp_path)
    run.mkdir()
    (run / "config.yaml").write_text(config.read_text())  # as the killed attempt wrote it
    (run / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "lo')  # a row cut short by the kill
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config_to_dict(tiny_config(run, *RUN, "train.lr=0.01"))))
    assert main(["train", str(other), "--resume", "latest"]) == 2
    line = one_error_line(capsys, "train")
    assert "holds a run with no complete checkpoint yet, started with another config" in line
    assert main(["train", str(config), "--resume", "latest"]) == 0
    assert "starting it over from step 0" in capsys.readouterr().out
    assert metric_rows(run) == metric_rows(finished[0])


def test_a_config_torn_by_a_kill_restarts_the_run(finished, tmp_path, capsys):
    run = tmp_path / "run"
    config = write_config(tmp_path)
    run.mkdir()
    (run / "config.yaml").write_text(config.read_text()[:100])  # as an older version could leave it
    assert main(["train", str(config), "--resume", "latest"]) == 0
    assert "starting it over from step 0" in capsys.readouterr().out
    assert metric_rows(run) == metric_rows(finished[0])


# Model folders, as `film-diffusion sample` reads them.

@pytest.fixture
def pipeline(finished, tmp_path):
    return shutil.copytree(finished[0] / "pipeline", tmp_path / "pipeline")


def sample(folder: Path, tmp_path: Path) -> int:
    return main(["sample", str(folder), "--prompt", "a red circle", "--steps", "1", "--num-per-prompt", "1",
                 "--out", str(tmp_path / "grid.png")])


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_pipeline_is_refused_naming_the_file(damage, pipeline, tmp_path, capsys):
    target = pipeline / PIPELINE_WEIGHTS
    size = target.stat().st_size
    harm, message = DAMAGE[damage]
    harm(target)
    assert sample(pipeline, tmp_path) == 2
    line = one_error_line(capsys, "sample")
    assert f"'{target}'" in line and message.format(found=size // 2, size=size) in line
    assert not (tmp_path / "grid.png").exists()


def test_a_pipeline_saved_without_a_manifest_still_refuses_wrong_files(pipeline, finished, tmp_path, capsys):
    (pipeline / "checksums.json").unlink()
    weights = pipeline / PIPELINE_WEIGHTS
    pickle_in_place(weights)
    assert sample(pipeline, tmp_path) == 2
    assert f"'{weights}' is not a readable safetensors file" in one_error_line(capsys, "sample")
    # another model's weights (other shapes), as valid safetensors
    save_file({k: torch.zeros(3, 3) for k in load_file(finished[0] / "pipeline" / PIPELINE_WEIGHTS)}, weights)
    assert sample(pipeline, tmp_path) == 2
    assert f"Could not load the pipeline in '{pipeline}'" in one_error_line(capsys, "sample")
    # a pickle beside no safetensors file: never loaded
    weights.unlink()
    torch.save({}, weights.with_suffix(".bin"))
    assert sample(pipeline, tmp_path) == 2
    assert f"Could not load the pipeline in '{pipeline}'" in one_error_line(capsys, "sample")
    assert not (tmp_path / "grid.png").exists()


def test_a_pipeline_with_another_backbones_config_is_refused(pipeline, tmp_path, capsys):
    config = pipeline / "denoiser" / "config.json"
    unet = tiny_config(tmp_path / "u", "model.backbone=unet")
    build_denoiser(unet, 3, 16, 32, 32, 16).save_config(tmp_path / "unet")
    shutil.copy(tmp_path / "unet" / "config.json", config)
    assert sample(pipeline, tmp_path) == 2
    line = one_error_line(capsys, "sample")
    assert line.startswith(f"film-diffusion sample: error: '{config}' has ") and "the file is damaged" in line
    (pipeline / "checksums.json").unlink()
    assert sample(pipeline, tmp_path) == 2
    assert f"Could not load the pipeline in '{pipeline}'" in one_error_line(capsys, "sample")
    assert not (tmp_path / "grid.png").exists()


class Payload:
    """A pickle that would run code when loaded: it must never be loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_booby_trapped_pickle_in_a_checkpoint_is_never_run(stopped, tmp_path, capsys):
    """Accelerate's own files in a checkpoint (optimizer state, RNG states) are pickles; it reads them with
    torch.load(weights_only=True), so a copied checkpoint cannot run code, even without its manifest. A trapped
    optimizer file is refused; a trapped RNG file Accelerate passes over (the run's own randomness is in
    run_state.safetensors, so the resumed run is still exact)."""
    run, config = stopped
    checkpoint = run / "checkpoints" / "checkpoint-6"
    (checkpoint / "checksums.json").unlink()
    marker = tmp_path / "the payload ran"
    optimizer = (checkpoint / "optimizer.bin").read_bytes()
    torch.save({"payload": Payload(marker)}, checkpoint / "optimizer.bin")
    assert main(["train", str(config), "--resume", "latest"]) == 2
    line = one_error_line(capsys, "train")
    assert line.endswith(f"Checkpoint '{checkpoint}' holds a pickle that is not plain tensors (Accelerate's "
                         "optimizer or RNG state replaced or tampered with); it was refused, not run. Resume from a "
                         "checkpoint you trust, or train into a new output_dir.")
    assert not marker.exists()
    (checkpoint / "optimizer.bin").write_bytes(optimizer)
    torch.save({"payload": Payload(marker)}, checkpoint / "random_states_0.pkl")
    assert main(["train", str(config), "--resume", "latest"]) == 0
    assert not marker.exists()
