"""A non-editable install carries every module, film_diffusion.pipelines included, to any directory."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_EVERYTHING = """
import pkgutil, importlib, film_diffusion, film_diffusion.pipelines as p
names = [m.name for m in pkgutil.walk_packages(film_diffusion.__path__, "film_diffusion.")]
for name in names:
    importlib.import_module(name)
assert "film_diffusion.pipelines.schedulers" in names, names
print(p.__file__)
"""


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
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=elsewhere, capture_output=True, text=True,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(target / "film_diffusion" / "pipelines" / "__init__.py")
