"""The package's layers stand: no module imports one from a higher layer (docs/architecture.md).

Every import counts, at the top of a file or inside a function, except those only type checkers read
(``if TYPE_CHECKING:``). A module's layer is that of its most specific entry below.
"""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO

SOURCE = REPO / "src" / "sparselora"
LAYERS = {
    "files": 1,
    "models": 1,
    "methods.registry": 1,  # the registration record the run config validates method keys against
    "trainer_args": 1,
    "config": 1,
    "data": 2,
    "methods": 2,
    "sparse": 2,
    "flops": 2,
    "training": 3,
    "evaluation": 3,
    "run_folder": 3,
    "export": 3,
    "hub": 3,
    "compare": 4,
    "report": 4,
    "study": 4,
    "cli": 5,
    "__init__": 5,
}
# Upward imports by design, each with its reason.
ALLOWED = {
    ("methods.registry", "sparselora.methods"): "the registry loads the built-in methods on first lookup, as plugins",
}


def layer_of(module: str) -> int:
    """``module`` without the ``sparselora.`` prefix, e.g. ``methods.lora``: its most specific entry's layer."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    raise KeyError(f"no layer for sparselora.{module}: add it to tests/test_layers.py and docs/architecture.md")


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside ``if TYPE_CHECKING:`` blocks."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            lines |= {child.lineno for stmt in node.body for child in ast.walk(stmt) if hasattr(child, "lineno")}
    return lines


def imports_of(path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sparselora."):
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("sparselora.")]
    return found


MODULES = sorted(SOURCE.rglob("*.py"))


def _name(path) -> str:
    return ".".join(path.relative_to(SOURCE).with_suffix("").parts).removesuffix(".__init__") or "__init__"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_imports_from_a_higher_layer(path):
    mine = layer_of(_name(path))
    upward = []
    for line, imported in imports_of(path):
        target = imported.removeprefix("sparselora.")
        try:
            theirs = layer_of(target)
        except KeyError:
            continue  # a name imported from a module, not a module (the module itself is checked)
        if theirs > mine and (_name(path), imported) not in ALLOWED:
            upward.append(f"line {line}: {imported} (layer {theirs})")
    assert not upward, f"{_name(path)} (layer {mine}) imports upward:\n" + "\n".join(upward)


def test_every_package_and_module_has_a_layer():
    for path in MODULES:
        layer_of(_name(path))


# Method names spelled outside methods/, sparse/ and study/ (the SVD study of LoRA and SparseLoRA), each
# with its reason. "sparselora" is also the package's and the program's name.
NAMED_METHODS = {
    ("config", "lora"): "the default method",
    ("compare.plan", "lora"): "the default reference of a comparison",
    ("flops", "lora"): "the FLOPs term of the adapter branches",
    ("run_folder.model_card", "lora"): "the Hub tag of a PEFT LoRA adapter",
    ("run_folder.model_card", "sparselora"): "the library's Hub tag",
    ("cli.core", "sparselora"): "the program name",
    ("compare.runner", "sparselora"): "the program name in each cell's command",
    ("models.loading", "sparselora"): "the cache folder's name",
    ("training.environment", "sparselora"): "the package name whose version is recorded",
}


def test_no_module_outside_the_methods_names_a_method():
    from sparselora.methods.registry import method_names

    names = set(method_names())
    named = []
    for path in MODULES:
        module = _name(path)
        if module.split(".")[0] in ("methods", "sparse", "study"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names and (module, node.value) not in NAMED_METHODS:
                named.append(f"{module} line {node.lineno}: {node.value!r}")
    assert not named, "use the method's registration record (e.g. methods.sparselora.METHOD):\n" + "\n".join(named)
