"""`pip install sparselora` without its extras: the core trains; what needs an extra says which one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXTRAS = ("matplotlib", "bitsandbytes", "gguf")  # the plots, qlora and gguf extras
BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None  # as if not installed\n"


def _without_extras(code: str, cwd: Path) -> subprocess.CompletedProcess:
    script = BLOCK.format(names=EXTRAS) + code
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_lora_run_trains_without_the_extras(tiny_bert_dir, data_env, tmp_path):
    code = (
        "from sparselora.cli import main\n"
        f"raise SystemExit(main(['train', '--set', 'model={tiny_bert_dir}', '--set', 'max_steps=2',"
        f" '--set', 'max_train_samples=32', '--set', 'max_eval_samples=16', '--set', 'progress=false',"
        f" '--set', 'name=plain', '--output-dir', '{tmp_path}']))\n"
    )
    done = _without_extras(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gemm_4bit" not in done.stderr
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["task_metrics"]["accuracy"] >= 0


@pytest.mark.parametrize(
    ("code", "extra"),
    [
        ("from sparselora.files.figures import plt", "sparselora[plots]"),
        ("from sparselora.methods.qlora import require_bitsandbytes; require_bitsandbytes()", "sparselora[qlora]"),
        ("from sparselora.models.loading import require_gguf; require_gguf()", "sparselora[gguf]"),
    ],
)
def test_what_needs_an_extra_names_it(code, extra, tmp_path):
    done = _without_extras(code, tmp_path)
    assert done.returncode != 0 and extra in done.stderr


def test_importing_sparselora_prints_no_bitsandbytes_kernel_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import sparselora, peft; from sparselora.training import loop"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "gemm_4bit" not in done.stderr
