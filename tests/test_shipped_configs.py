"""Every config shipped in configs/ loads and validates, so a typo there fails CI, not a user's run."""

from pathlib import Path

import pytest

from sparselora.compare.plan import load_compare_config, plan_cells
from sparselora.config import build_config, load_config
from sparselora.methods import get_method

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    if path.name.startswith("compare_"):
        comparison = load_compare_config(path)
        for cell in plan_cells(comparison):
            config = build_config(cell.run_keys(comparison), source=f"{path.name}: {cell.run_name}")
            get_method(config.method)
    else:
        get_method(load_config(path).method)
