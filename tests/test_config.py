from dataclasses import dataclass, field
from typing import Literal

import pytest

from film_diffusion.config import ConfigError, load_config


@dataclass
class Optim:
    lr: float = 1e-3
    steps: int = 10
    schedule: Literal["constant", "cosine"] = "constant"


@dataclass
class Experiment:
    optim: Optim = field(default_factory=Optim)
    conditioning: list[str] = field(default_factory=list)
    seed: int | None = None


def test_yaml_and_overrides_become_typed_values(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("optim:\n  lr: 1e-4\nconditioning: [film]\n")
    cfg = load_config(path, Experiment, ["optim.steps=5", "conditioning=[film,cross_attention]", "seed=3"])
    assert cfg == Experiment(Optim(lr=1e-4, steps=5), ["film", "cross_attention"], 3)


@pytest.mark.parametrize(("raw", "message"), [
    ({"optim": {"lf": 1}}, r"Unknown config key 'optim.lf' in section 'optim'; valid keys are: lr, schedule, steps"),
    ({"optim": {"steps": "ten"}}, r"Config key 'optim.steps' must be of type int, got 'ten'"),
    ({"optim": {"schedule": "linear"}}, r"Config key 'optim.schedule' is 'linear'; choose one of 'constant', 'cosine'"),
    ({"conditioning": "film"}, r"Config key 'conditioning' must be a list"),
])
def test_bad_values_name_the_key_and_the_fix(raw, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw, Experiment)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", Experiment)
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config({}, Experiment, ["optim.lr"])


def test_an_unquoted_no_reaches_a_choice_named_no():
    @dataclass
    class Train:
        mixed_precision: Literal["no", "bf16"] = "bf16"
        schedule: Literal["constant", "cosine"] = "constant"

    assert load_config({}, Train, ["mixed_precision=no"]).mixed_precision == "no"  # YAML reads it as False
    with pytest.raises(ConfigError, match="'schedule' is False; choose one of 'constant', 'cosine'"):
        load_config({}, Train, ["schedule=no"])
