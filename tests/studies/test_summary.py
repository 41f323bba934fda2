"""``film-diffusion summary``: the seed-averaged table is the mean and sample standard deviation of the runs'
own numbers, in the columns asked for, and a wrong column or folder is one sentence naming the choices."""

import json

import pytest

from film_diffusion.cli import main
from film_diffusion.studies.report import group_rows

ROWS = [
    {"run": "a0", "model.conditioning": "film", "seed": "0", "images_per_s": 100.0, "eval/position": 0.5,
     "eval/fid": 80.0},
    {"run": "a1", "model.conditioning": "film", "seed": "1", "images_per_s": 110.0, "eval/position": 0.7,
     "eval/fid": 90.0},
    {"run": "b0", "model.conditioning": "concat", "seed": "0", "images_per_s": 120.0, "eval/position": 0.25,
     "eval/fid": 100.0},
    {"run": "b1", "model.conditioning": "concat", "seed": "1", "images_per_s": 120.0, "eval/position": 0.25,
     "eval/fid": 104.0},
]


@pytest.fixture
def study(tmp_path):
    matrix = {"model.conditioning": ["film", "concat"], "seed": [0, 1]}
    results = {"matrix": matrix, "runs": ROWS, "groups": group_rows(ROWS, list(matrix))}
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path


def test_the_table_is_mean_and_sample_std_of_each_group(study, capsys):
    assert main(["summary", str(study), "position", "fid", "images_per_s"]) == 0
    # film: position mean 0.6, stdev sqrt(0.02) = 0.1414; FID 85 ± 7.071; img/s 105 ± 7.071
    assert capsys.readouterr().out.splitlines() == [
        "| conditioning | n | position | FID | img/s |",
        "| --- | ---: | ---: | ---: | ---: |",
        "| film | 2 | 0.600 ± 0.141 | 85.00 ± 7.071 | 105.00 ± 7.071 |",
        "| concat | 2 | 0.250 ± 0.000 | 102.00 ± 2.828 | 120.00 ± 0.000 |",
    ]


def test_a_single_seed_shows_its_value_without_a_spread(tmp_path, capsys):
    matrix = {"model.conditioning": ["film", "concat"]}
    rows = [dict(ROWS[0], seed=None), dict(ROWS[2], seed=None)]
    results = {"matrix": matrix, "runs": rows, "groups": group_rows(rows, list(matrix))}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["summary", str(tmp_path), "position", "fid"]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == ["| film | 1 | 0.500 | 80.00 |",
                                                        "| concat | 1 | 0.250 | 100.00 |"]


@pytest.mark.parametrize(("args", "message"), [
    (["colour"], "This comparison has no column 'colour'; choose from position, fid, images_per_s."),
    (["cogent/all"], "no column 'cogent/all'"),
])
def test_an_unknown_column_names_the_choices(study, capsys, args, message):
    assert main(["summary", str(study), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_folder_without_results_is_one_sentence(tmp_path, capsys):
    assert main(["summary", str(tmp_path), "position"]) == 2
    assert "holds no results.json" in capsys.readouterr().err


def test_suite_columns_by_category_and_check(tmp_path, capsys):
    rows = [dict(ROWS[0], **{"suite/binding/right": 0.25, "suite/binding/colors": 0.5}),
            dict(ROWS[1], **{"suite/binding/right": 0.75, "suite/binding/colors": 0.5})]
    matrix = {"model.conditioning": ["film"], "seed": [0, 1]}
    (tmp_path / "results.json").write_text(json.dumps({"matrix": matrix, "runs": rows,
                                                       "groups": group_rows(rows, list(matrix))}))
    assert main(["summary", str(tmp_path), "binding", "binding/colors"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| conditioning | n | binding | binding/colors |",
        "| --- | ---: | ---: | ---: |",
        "| film | 2 | 0.500 ± 0.354 | 0.500 ± 0.000 |",
    ]
