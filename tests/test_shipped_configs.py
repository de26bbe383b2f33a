"""Every config shipped in configs/ loads and validates, so a typo there fails CI, not a user's run."""

import hashlib
import json
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


DIGESTS = Path(__file__).with_name("shipped_config_digests.json")


def resolved_digests() -> dict[str, str]:
    """sha256 of every shipped run config's (and comparison cell's) fully resolved settings."""
    resolved = {}
    for path in CONFIGS:
        if path.name.startswith("compare_"):
            comparison = load_compare_config(path)
            for cell in plan_cells(comparison):
                resolved[f"{path.name}:{cell.run_name}"] = cell.run_config(comparison).to_flat_dict()
        else:
            resolved[path.name] = load_config(path).to_flat_dict()
    return {
        name: hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()
        for name, flat in resolved.items()
    }


def test_every_shipped_config_resolves_to_the_settings_it_had():
    """A refactor must not change what a shipped config trains. A deliberate change (a new key, a new cell)
    updates the record: python -m tests.test_shipped_configs."""
    recorded, now = json.loads(DIGESTS.read_text()), resolved_digests()
    changed = sorted(name for name in recorded.keys() & now.keys() if recorded[name] != now[name])
    assert not changed, f"these resolve to other settings than recorded: {changed}"
    added, gone = now.keys() - recorded.keys(), recorded.keys() - now.keys()
    assert not added and not gone, f"configs added {sorted(added)}, gone {sorted(gone)}"


if __name__ == "__main__":
    DIGESTS.write_text(json.dumps(resolved_digests(), indent=1, sort_keys=True) + "\n")
    print(f"recorded {DIGESTS}")
