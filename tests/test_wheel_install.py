"""The built wheel installs into an environment that already has torch and the Hugging Face stack, and runs.

The "user's environment" is a fresh venv that sees this repository's venv (torch, transformers, … already
installed) through ``PYTHONPATH``; nothing is downloaded (``--no-index``) and the repository's own venv is
never written to.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the source tree (the build writes nothing into the repository)."""
    tree = tmp_path_factory.mktemp("tree")
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    dist = tree / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(tree)])
    (built,) = dist.glob("sparselora-*.whl")
    return built


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv and an environment in which it also sees the packages of the running interpreter."""
    root = tmp_path_factory.mktemp("user-env")
    venv.create(root, with_pip=True)
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "PIP_NO_INDEX": "1"}
    return root, env


def test_the_wheel_holds_every_subpackage_and_its_extras(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    source = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "sparselora").rglob("*.py")}
    assert source <= set(names), sorted(source - set(names))
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    extras = {"qlora", "gguf", "plots", "sweeps"}
    assert {f"Provides-Extra: {extra}" for extra in extras} <= set(text.splitlines())
    assert not any(name.startswith("tests/") for name in names)


def test_installing_it_where_torch_is_installed_installs_only_sparselora(wheel, user_env):
    root, env = user_env
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--report", "-", "--quiet"]
    report = json.loads(_run([*pip, f"sparselora[plots,gguf] @ {wheel.as_uri()}"], env=env).stdout)
    assert [item["metadata"]["name"] for item in report["install"]] == ["sparselora"]


def test_the_installed_wheel_runs_its_command_line(wheel, user_env, tmp_path):
    root, env = user_env
    _run([str(root / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], env=env)
    code = "import sparselora.sparse.engine as engine; print(engine.__file__)"
    where = _run([str(root / "bin" / "python"), "-c", code], env=env)
    assert Path(where.stdout.strip()).is_relative_to(root)
    listed = _run([str(root / "bin" / "sparselora"), "methods"], env=env, cwd=tmp_path)
    assert "sparselora" in listed.stdout and "lora" in listed.stdout
