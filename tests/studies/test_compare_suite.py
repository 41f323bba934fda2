"""``compare`` with the benchmark suite (``evaluate``), matrix cells left out (``exclude``) and one size for every
run (``match_to``): a small comparison through the real trainer and the real ``evaluate``."""

import json
import shutil

import pytest
import yaml

from film_diffusion.cli import main
from film_diffusion.errors import UserError
from film_diffusion.evaluation.metrics import wilson_interval
from film_diffusion.studies import compare as compare_module
from film_diffusion.studies import records, suite_report

EXPERIMENT = {
    "model": {"dit": {"hidden_size": 16, "depth": 1, "num_heads": 2, "patch_size": 8, "mlp_ratio": 2.0}},
    "data": {"resolution": 32, "length": 16, "max_objects": 2},
    "train": {"max_steps": 2, "batch_size": 4, "log_every": 1, "sample_every": 0, "warmup_steps": 1,
              "checkpoint_every": 2, "mixed_precision": "no"},
    "sample": {"steps": 2, "captions": ["a large red circle at the top left"]},
}
MATRIX = {"model.conditioning": [["film"], ["cross_attention"]], "seed": [0, 1]}
EXCLUDE = [{"model.conditioning": ["cross_attention"], "seed": 1}]
SCORING = {"suite": "full", "split": "test", "samples": 2, "batch_size": 8}


def write_config(tmp_path, **extra):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "experiment": EXPERIMENT, "matrix": MATRIX,
                                    **extra}))
    return path


def test_a_comparison_scored_by_the_suite_pools_its_seeds_and_scores_each_run_once(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, exclude=EXCLUDE, evaluate=SCORING)
    assert main(["compare", str(config)]) == 0
    out, runs = tmp_path / "out", tmp_path / "out" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["conditioning=cross_attention_seed=0",
                                                       "conditioning=film_seed=0", "conditioning=film_seed=1"]
    scored = {p.name: json.loads((p / "evaluation" / "full-test" / "results.json").read_text())
              for p in runs.iterdir()}
    assert all(r["settings"]["samples_per_category"] == 2 and r["settings"]["split"] == "test" for r in scored.values())
    categories = list(scored["conditioning=film_seed=0"]["summary"]["categories"])
    assert "binding" in categories and "compositional" not in categories  # no pairs held out

    results = json.loads((out / "results.json").read_text())
    assert results["exclude"] == EXCLUDE
    film = next(g for g in results["groups"] if g["model.conditioning"] == "film")
    seeds = [scored[f"conditioning=film_seed={s}"]["summary"] for s in (0, 1)]
    for category in categories:
        accuracies = [s["categories"][category]["right"]["accuracy"] for s in seeds]
        assert film[f"suite/{category}/right"] == pytest.approx(sum(accuracies) / 2)
        assert suite_report.pooled(film, category) == (sum(s["categories"][category]["right"]["right"] for s in seeds),
                                                       4)
    table = (out / "results.md").read_text()
    assert "## The benchmark suite, test split" in table and "### binding" in table
    assert "| n | right | 95% interval (pooled) | count |" in table  # two_objects' own check, beside the counts
    assert "with no scoring during training (`train.eval_every: 0`)" in table
    right, count = suite_report.pooled(film, "overall")
    low, high = wilson_interval(right, count)
    assert f"{low:.3f}-{high:.3f} ({right}/{count})" in table and count == 2 * 2 * len(categories)
    for name in ("suite_right.png", "suite_single.png", "suite_binding.png"):
        assert (out / name).stat().st_size > 0, name
    assert "![binding](suite_binding.png)" in table

    def never(*args, **kwargs):
        raise AssertionError("a scored run was scored again")

    monkeypatch.setattr(suite_report, "run_evaluate", never)
    assert main(["compare", str(config)]) == 0
    capsys.readouterr()
    assert main(["compare", str(config), "evaluate.samples=3"]) == 2
    err = capsys.readouterr().err
    assert "was scored with samples_per_category=2, not 3" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    ({"exclude": [{"model.backbone": "unet"}]}, r"'exclude\[0\]' names 'model.backbone', which is not a matrix key"),
    ({"exclude": [{"seed": 7}]}, r"'exclude\[0\].seed' is 7, which the matrix does not list"),
    ({"exclude": [{}]}, r"'exclude\[0\]' must be a mapping of matrix keys"),
    ({"match_to": 1000}, "'match_to' is 1000; it is a positive count of the 'match' measure"),
    ({"evaluate": {"split": "train"}}, "'evaluate.split' is 'train'; choose one of 'val', 'test'"),
])
def test_bad_exclude_match_to_and_evaluate_are_one_sentence(tmp_path, capsys, extra, message):
    path = write_config(tmp_path, **extra)
    with pytest.raises(UserError, match=message):
        compare_module.load_compare(path)
    assert main(["compare", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_match_to_sizes_every_run_to_one_count(tmp_path):
    config = compare_module.load_compare(write_config(tmp_path, match="params", match_to=100_000))
    runs, sizing = compare_module.prepare(config)
    assert len(runs) == 4 and {s["target"] for s in sizing.values()} == {100_000}
    assert all(abs(s["size"] / 100_000 - 1) < 0.15 for s in sizing.values()), sizing  # widths move in steps of 8
    widths = {r.name.split("_seed")[0]: sizing[r.name]["width"] for r in runs}
    assert widths["conditioning=cross_attention"] > widths["conditioning=film"]  # FiLM's generator is larger
    assert {s["reference"] for s in sizing.values()} == {"match_to: 100000"}


def test_a_study_whose_output_folder_is_lost_reports_again_from_its_kept_records(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(records, "GRID_COLUMNS", 1)  # a record keeps the first image of each category of 2
    report = tmp_path / "report"
    config = write_config(tmp_path, exclude=[{"model.conditioning": ["cross_attention"]}], evaluate=SCORING,
                          report_dir=str(report))
    assert main(["compare", str(config)]) == 0
    before = json.loads((report / "results.json").read_text())
    kept = report / "runs" / "conditioning=film_seed=0"
    assert (kept / "record.json").is_file() and not list(kept.rglob("*.safetensors"))  # no weights: small
    scores = kept / "evaluation" / "full-test"
    assert [p.name for p in (scores / "images" / "binding").glob("*.png")] == ["0000.png"]
    whole = json.loads((tmp_path / "out" / "runs" / kept.name / scores.relative_to(kept) / "results.json").read_text())
    record = json.loads((scores / "results.json").read_text())
    assert record["summary"] == whole["summary"] and record["settings"] == whole["settings"]
    assert record["rows"] == [r for r in whole["rows"] if r["image"].endswith("/0000.png")]  # the ones shown

    def never(*args, **kwargs):
        raise AssertionError("a kept run was trained or scored again")

    monkeypatch.setattr(suite_report, "run_evaluate", never)
    # A kill while the second record was assembled: the run folder is whole, its record is not.
    second = report / "runs" / "conditioning=film_seed=1"
    shutil.rmtree(second)
    (report / "runs" / ".conditioning=film_seed=1.partial").mkdir()
    monkeypatch.setattr(compare_module, "launch", never)
    assert main(["compare", str(config)]) == 0
    assert (second / "record.json").is_file() and not (report / "runs" / ".conditioning=film_seed=1.partial").exists()

    shutil.rmtree(tmp_path / "out")  # checkpoints and pipelines gone with the machine; the report folder kept
    (report / "results.json").unlink()
    assert main(["compare", str(config)]) == 0
    assert json.loads((report / "results.json").read_text()) == before

    capsys.readouterr()
    assert main(["compare", str(config), "experiment.train.lr=0.002"]) == 2  # a record of another experiment
    assert "holds run 'conditioning=film_seed=0' trained with another config (train.lr" in capsys.readouterr().err
