"""Training the oracle: its scenes, its command, and (slow) the accuracy a full run reaches."""

import pytest
import torch

from film_diffusion.cli import main
from film_diffusion.evaluation.oracle import ShapesOracle, encode_objects
from film_diffusion.evaluation.oracle_training import OracleScenes, evaluate_oracle, train_oracle


def test_training_scenes_cover_every_count_with_exact_labels():
    scenes = OracleScenes(resolution=16, seed=0, length=200)
    counts = set()
    for i in range(len(scenes)):
        image, truth = scenes[i]
        assert image.shape == (3, 16, 16) and truth.shape == (9, 4)
        present = truth[:, 0] == 1
        assert (truth[~present, 1:] == -1).all() and (truth[present, 1:] >= 0).all()
        counts.add(int(present.sum()))
    assert counts == set(range(10))  # empty boards and full ones too
    assert torch.equal(scenes[5][0], OracleScenes(resolution=16, seed=0, length=200)[5][0])


def test_encode_objects():
    table = encode_objects([{"color": "blue", "shape": "star", "size": "large", "cell": "bottom right"}])
    assert table[8].tolist() == [1, 5, 3, 1] and (table[:8, 0] == 0).all() and (table[:8, 1:] == -1).all()


def test_train_oracle_command_writes_loadable_weights(tmp_path, capsys):
    output = tmp_path / "oracle.safetensors"
    argv = ["train-oracle", "--resolution", "16", "--steps", "2", "--batch-size", "8", "--workers", "0",
            "--eval-images", "16", "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    assert f"saved {output}; accuracy on 16 fresh test scenes: count " in capsys.readouterr().out
    assert ShapesOracle.from_file(output).resolution == 16
    assert main(["train-oracle", "--resolution", "300"]) == 2
    assert "error: Resolution 300 is out of range; choose a value from 16 to 256." in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("resolution", [32, 64])
def test_oracle_trained_from_scratch_reads_fresh_scenes(resolution):
    oracle = train_oracle(resolution, progress=False)
    scores = evaluate_oracle(oracle, num_images=2000, seed=21)
    assert min(v for k, v in scores.items() if k != "all") >= 0.99 and scores["all"] >= 0.97
