"""The `film-diffusion` command as a user meets it: what --help says first, and the hint a finished run prints."""

import pytest
import yaml
from runs import tiny_config

from film_diffusion.cli import main
from film_diffusion.config import config_to_dict


def test_help_opens_with_what_the_tool_does(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    description = capsys.readouterr().out.split("\n\n")[1]
    assert description.startswith("film-diffusion: train diffusion models conditioned by FiLM")
    assert "subcommand" not in description.lower()


@pytest.mark.parametrize(("overrides", "hint"), [
    ([], '--prompt "a caption"'),
    (["condition.source=class_labels", "condition.num_classes=32", "model.conditioning=[adaln_zero]"],
     "--class-label K"),
], ids=["text", "class_labels"])
def test_a_finished_run_says_how_to_sample_it(tmp_path, capsys, overrides, hint):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(tiny_config(tmp_path / "run", "train.max_steps=1", *overrides))))
    assert main(["train", str(config)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        f"done: {tmp_path / 'run'} (sample with: film-diffusion sample {tmp_path / 'run'} {hint})"
