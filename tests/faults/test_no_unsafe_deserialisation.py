"""No code path can run what a file says: weights are read as safetensors, the one ``.pt`` import (the
facebookresearch/DiT converter) goes through ``torch.load(weights_only=True)``, and nothing in the package
unpickles, evals or execs."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(REPO / "film_diffusion").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")])
FORBIDDEN = {
    "pickle": re.compile(r"\bpickle\.loads?\b|\bimport (c?pickle|dill|joblib|shelve)\b|\bUnpickler\b"),
    "eval(": re.compile(r"(?<![\w.])eval\("),
    "exec(": re.compile(r"(?<![\w.])exec\("),
    "__import__": re.compile(r"\b__import__\("),
}


def code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines without their comments (docstrings mention these names to say they are not used)."""
    return [(n, line.split("#")[0]) for n, line in enumerate(path.read_text().splitlines(), 1)]


def test_the_package_has_sources_to_check():
    assert len(SOURCES) > 40 and REPO / "film_diffusion" / "convert.py" in SOURCES


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_no_source_unpickles_evals_or_execs(name):
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in SOURCES for n, line in code_lines(p)
             if FORBIDDEN[name].search(line)]
    assert not found, found


def test_every_torch_load_is_weights_only():
    calls = []
    for path in SOURCES:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 1, match.end()
            while depth:  # the whole call, across lines
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            calls.append((path.relative_to(REPO).as_posix(), text[match.start():end]))
    assert {p for p, _ in calls} == {"film_diffusion/convert.py"}  # the upstream DiT checkpoints' format
    assert all("weights_only=True" in call for _, call in calls), calls


def test_the_grep_would_catch_what_it_forbids():
    bad = ["data = pickle.loads(blob)", "import pickle", "import dill", "pickle.Unpickler(f).load()",
           "x = eval(text)", "exec(code)", "m = __import__(name)"]
    good = ["model.eval()", "self.eval()", "evaluate(pipe)", "torch.load(p, weights_only=True)", "executor()",
            "from pickle import UnpicklingError"]
    assert all(any(r.search(line) for r in FORBIDDEN.values()) for line in bad)
    assert not any(r.search(line) for r in FORBIDDEN.values() for line in good)
