"""A non-editable install carries every module, film_diffusion.pipelines included, to any directory."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_EVERYTHING = """
import pkgutil, importlib, sys, film_diffusion, film_diffusion.pipelines as p
names = [m.name for m in pkgutil.walk_packages(film_diffusion.__path__, "film_diffusion.")]
for name in names:
    importlib.import_module(name)
missing = set(sys.argv[1:]) - set(names)
assert not missing, f"not installed: {sorted(missing)}"
print(p.__file__)
"""


def source_modules() -> list[str]:
    """Every module of the source tree, by the name it must have once installed."""
    names = []
    for top, package in ((ROOT / "film_diffusion", "film_diffusion"), (ROOT / "pipelines", "film_diffusion.pipelines")):
        for file in top.rglob("*.py"):
            parts = file.relative_to(top).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            if parts and "__pycache__" not in parts:
                names.append(".".join((package, *parts)))
    return names


def test_wheel_install_imports_the_pipelines_from_any_directory(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("film_diffusion", "pipelines"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    shutil.rmtree(source)  # nothing may point back at the source tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    expected = source_modules()
    assert "film_diffusion.pipelines.schedulers" in expected and "film_diffusion.encoders.null" in expected
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING, *expected], cwd=elsewhere, capture_output=True,
                            text=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(target / "film_diffusion" / "pipelines" / "__init__.py")
