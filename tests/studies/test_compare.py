"""``film-diffusion compare``: a small matrix runs through the real trainer and writes every file; a kill between
runs and a rerun train nothing twice; an interrupted run resumes; the table's sizes are the hand-computed ones."""

import fcntl
import json
import subprocess
import sys
import threading
import time

import pytest
import yaml
from runs import CONFIGS

from film_diffusion.cli import main
from film_diffusion.encoders.builtin import builtin_clip
from film_diffusion.errors import UserError
from film_diffusion.studies import compare as compare_module

H, DEPTH, HEADS, PATCH, MLP, RES, C, FREQ = 16, 1, 2, 8, 2.0, 32, 3, 256
EXPERIMENT = {
    "model": {"dit": {"hidden_size": H, "depth": DEPTH, "num_heads": HEADS, "patch_size": PATCH, "mlp_ratio": MLP}},
    "data": {"resolution": RES, "length": 16},
    "objective": {"min_snr_gamma": None},
    "train": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "log_every": 1, "sample_every": 0,
              "warmup_steps": 1, "checkpoint_every": 2, "mixed_precision": "no"},
    "eval": {"scenes": 8, "batch_size": 8},
    "sample": {"steps": 2, "captions": ["a large red circle at the top left", "a small blue square in the center"]},
}
MATRIX = {"model.conditioning": [["film"], ["adaln_zero"]], "seed": [0, 1]}


def hand_sizes(method: str, pooled: int) -> tuple[int, int, int]:
    """(parameters, conditioning parameters, forward FLOPs at batch 1) of the tiny DiT, counted by hand.

    A Linear(i, o) has i*o + o parameters and costs 2*i*o FLOPs per row (bias adds are not counted); the
    attention's two products cost 2*T*T*H each over all heads."""
    tokens, mlp, out_pixels = (RES // PATCH) ** 2, int(H * MLP), PATCH * PATCH * C

    def linear(i, o):
        return i * o + o

    adaln_out = DEPTH * (2 * H + H + 2 * H + H) + 2 * H  # per block: two (shift, scale) and two gates; final norm
    film_out = (2 * DEPTH + 1) * 2 * H  # (gamma, beta) after every norm
    backbone = (C * PATCH * PATCH * H + H) + linear(FREQ, H) + linear(H, H) + DEPTH * (
        linear(H, 3 * H) + linear(H, H) + linear(H, mlp) + linear(mlp, H)) + linear(H, out_pixels)
    pooled_proj = linear(pooled, H)
    timestep_adaln = linear(H, adaln_out)  # the DiT's own adaLN-Zero carries the timestep
    if method == "film":
        conditioning = pooled_proj + linear(H, film_out)
        params = backbone + conditioning + timestep_adaln
        generators = 2 * H * (film_out + adaln_out)
    else:  # adaLN-Zero carries the caption and the timestep
        conditioning = pooled_proj + timestep_adaln
        params = backbone + conditioning
        generators = 2 * H * adaln_out
    flops = (2 * tokens * H * C * PATCH * PATCH + 2 * (FREQ * H + H * H) + 2 * pooled * H + generators
             + DEPTH * (2 * tokens * H * 3 * H + 2 * 2 * tokens * tokens * H + 2 * tokens * H * H
                        + 2 * 2 * tokens * H * mlp) + 2 * tokens * H * out_pixels)
    return params, conditioning, flops


def write_config(tmp_path, **extra):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "experiment": EXPERIMENT,
                                    "matrix": MATRIX, **extra}))
    return path


def test_a_small_comparison_writes_everything_resumes_and_never_trains_twice(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    real_launch, launched = compare_module.launch, []

    def killed_after_first_run(command, name, lock):
        if launched:
            raise KeyboardInterrupt  # the kill lands between runs
        launched.append(command)
        real_launch(command, name, lock)

    monkeypatch.setattr(compare_module, "launch", killed_after_first_run)
    with pytest.raises(KeyboardInterrupt):
        main(["compare", str(config)])
    runs = tmp_path / "out" / "runs"
    first = runs / "conditioning=film_seed=0"
    finished_at = (first / "pipeline" / "model_index.json").stat().st_mtime_ns

    def counted(command, name, lock):
        launched.append(command)
        real_launch(command, name, lock)

    launched.clear()
    monkeypatch.setattr(compare_module, "launch", counted)
    assert main(["compare", str(config)]) == 0
    assert len(launched) == 3 and not any("--resume" in c for c in launched)  # the first run is not trained again
    assert (first / "pipeline" / "model_index.json").stat().st_mtime_ns == finished_at

    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    rows = {row["run"]: row for row in results["runs"]}
    assert sorted(rows) == sorted(p.name for p in runs.iterdir()) and len(rows) == 4
    pooled = builtin_clip().pooled_dim
    for name, row in rows.items():
        method = "film" if "film" in name else "adaln_zero"
        assert (row["params"], row["params_conditioning"], row["flops"]) == hand_sizes(method, pooled), name
        assert row["steps"] == 4 and row["final_loss"] > 0 and row["images_per_s"] > 0 and row["peak_memory_mb"] > 0
        assert 0 <= row["eval/all"] <= 1 and row["eval/fid"] >= 0 and row["eval/clip_score"] >= 0
    groups = {g["model.conditioning"]: g for g in results["groups"]}
    assert sorted(groups) == ["adaln_zero", "film"] and all(g["n"] == 2 for g in groups.values())
    pair = [rows[f"conditioning=film_seed={s}"]["final_loss"] for s in (0, 1)]
    assert groups["film"]["final_loss"] == pytest.approx(sum(pair) / 2)
    assert groups["film"]["final_loss_std"] == pytest.approx(abs(pair[0] - pair[1]) / 2 ** 0.5)
    for name in ("results.md", "loss.png", "eval_all.png", "eval_color.png", "eval_clip_score.png", "samples.png"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "results.md").read_text()
    assert all(name in table for name in rows) and "Mean and standard deviation over seeds" in table
    assert all(len(list((runs / name / "compare_samples").glob("*.png"))) == 2 for name in rows)

    # A run killed after its last checkpoint, before its pipeline was written, resumes and is alone retrained.
    last = runs / "conditioning=adaln_zero_seed=1"
    for leftover in ("pipeline", "compare_measures.json", "record.json"):
        path = last / leftover
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    launched.clear()
    assert main(["compare", str(config)]) == 0
    assert len(launched) == 1 and launched[0][-2:] == ["--resume", "latest"] and str(last) in " ".join(launched[0])
    assert json.loads((out / "results.json").read_text())["runs"][3]["flops"] == rows[last.name]["flops"]

    # Another grid seed: nothing trains, every run samples its grid row again from the new noise.
    before = (first / "compare_samples" / "00.png").read_bytes()
    launched.clear()
    assert main(["compare", str(config), "grid_seed=1"]) == 0
    assert not launched and json.loads((first / "compare_measures.json").read_text())["grid_seed"] == 1
    assert (first / "compare_samples" / "00.png").read_bytes() != before


def test_a_changed_experiment_does_not_reuse_old_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_module, "launch", lambda command, name, lock: None)
    run = tmp_path / "out" / "runs" / "conditioning=film_seed=0"
    run.mkdir(parents=True)
    config = compare_module.load_compare(write_config(tmp_path))
    planned = compare_module.plan_runs(config)[0]
    saved = yaml.safe_load(yaml.safe_dump(compare_module.config_to_dict(planned.config)))
    saved["train"]["lr"] = 0.5
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match=r"trained with another config \(train.lr was 0.5, now 0.001\)"):
        compare_module.run_all([planned], config, tmp_path / "experiment.yaml")


def test_a_key_added_since_a_run_was_trained_counts_at_its_default(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(compare_module, "launch", lambda command, name, lock: launched.append(name))
    config = write_config(tmp_path)
    planned = compare_module.plan_runs(compare_module.load_compare(config))[0]
    planned.folder.mkdir(parents=True)
    saved = yaml.safe_load(yaml.safe_dump(compare_module.config_to_dict(planned.config)))
    del saved["train"]["trainable"]  # a run trained before the key existed
    (planned.folder / "config.yaml").write_text(yaml.safe_dump(saved))
    compare_module.check_same_experiment(planned, planned.folder)
    planned.config.train.trainable = "new"  # but the key set to something else is another experiment
    with pytest.raises(UserError, match=r"another config \(train.trainable was None, now 'new'\)"):
        compare_module.check_same_experiment(planned, planned.folder)


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(compare_module, "launch", lambda command, name, lock: launched.append(command))
    planned = compare_module.plan_runs(compare_module.load_compare(write_config(tmp_path)))[0]
    planned.folder.mkdir(parents=True)
    (planned.folder / "config.yaml").write_text("seed: 0\nmodel: {backb")  # torn by the kill
    (planned.folder / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    compare_module.train(planned, tmp_path / "experiment.yaml", [])
    # the trainer restarts a run folder with no checkpoint (tests/faults/test_damaged_files.py)
    assert len(launched) == 1 and launched[0][-2:] == ["--resume", "latest"]


def test_a_run_another_process_holds_is_passed_over_then_taken_over_when_let_go(tmp_path, monkeypatch):
    config = compare_module.load_compare(write_config(tmp_path))
    runs = compare_module.plan_runs(config)
    lock = compare_module.run_lock(runs[0], config)
    lock.parent.mkdir(parents=True)
    other_process = open(lock, "a")  # another open file: flock holds it against this one as against a process
    fcntl.flock(other_process, fcntl.LOCK_EX)
    completed = []

    def complete(run, config, source_file, counter, lock):
        completed.append(run.name)
        if len(completed) == len(runs) - 1:
            other_process.close()  # it stops with the first run unfinished: the lock goes with it

    monkeypatch.setattr(compare_module, "complete", complete)
    compare_module.run_all(runs, config, tmp_path / "experiment.yaml")
    assert completed == [r.name for r in runs[1:]] + [runs[0].name]


def test_a_training_process_keeps_its_run_held_when_the_compare_process_dies_first(tmp_path):
    lock = tmp_path / "run.lock"
    compare_process = open(lock, "a")
    fcntl.flock(compare_process, fcntl.LOCK_EX)
    sleeper = [sys.executable, "-c", "import time; time.sleep(3)"]
    training = threading.Thread(target=compare_module.launch, args=(sleeper, "run", compare_process.fileno()))
    training.start()
    time.sleep(0.5)
    compare_process.close()  # killed: its descriptor closes without an unlock; the child still has the lock's
    other = open(lock, "a")
    with pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    training.join()
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the training ended: the lock is free
    other.close()


@pytest.mark.slow
def test_two_processes_of_one_comparison_train_each_run_once(tmp_path):
    config = write_config(tmp_path)
    command = [sys.executable, "-m", "film_diffusion.cli", "compare", str(config)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    outputs = [p.communicate()[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    trained = [line for out in outputs for line in out.splitlines() if line.endswith(": training")]
    assert len(trained) == 4 == len({line.split("] ")[1] for line in trained})  # each run trained once, by one
    assert all(": training" in out for out in outputs)  # and both did some
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert len(rows) == 4 and all(row["steps"] == 4 for row in rows)


@pytest.mark.parametrize("matrix, message", [
    ({}, "'matrix' is empty"),
    ({"seed": 3}, "'matrix.seed' must be a non-empty list"),
    ({"model.conditioning": [["film"], ["telepathy"]]}, "Run 'conditioning=telepathy' of the matrix: .*telepathy"),
    ({"train.lr": [0.1, -1]}, "Run 'lr=-1' of the matrix: Config key 'train.lr' is -1"),
])
def test_a_bad_matrix_is_one_sentence_before_anything_trains(tmp_path, capsys, matrix, message):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "experiment": EXPERIMENT, "matrix": matrix}))
    with pytest.raises(UserError, match=message):
        compare_module.prepare(compare_module.load_compare(path))
    assert main(["compare", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("study, runs, matched", [("compare_methods", 12, False), ("dit_paper_blocks", 9, False),
                                                  ("film_paper_placement", 12, False), ("ffnified_mixer", 12, True),
                                                  ("unet_text_paths", 8, False), ("unet_xattn_position", 4, False),
                                                  ("conditioning_methods", 51, True),
                                                  ("conditioning_methods_pilot", 2, True)])
def test_the_shipped_studies_plan_and_build(tmp_path, study, runs, matched):
    config = compare_module.load_compare(CONFIGS / f"{study}.yaml", [f"output_dir={tmp_path}"])
    planned, sizing = compare_module.prepare(config)
    assert len(planned) == runs == len({r.name for r in planned}) and bool(sizing) == matched
    assert all(r.folder.parent == tmp_path / "runs" for r in planned)
    if matched:  # every run within 12% of its target's parameters (a U-Net's channel lists grow by 8s)
        assert all(abs(s["size"] / s["target"] - 1) < 0.12 for s in sizing.values()), sizing
