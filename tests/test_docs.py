"""Every command block in the README and docs runs as written, and every path they name exists.

Nothing is trained here: each ``sparselora`` command is parsed by the CLI itself and its config is built and
validated the way the command would build it (compare: every selected cell's run config); each benchmark
command is parsed by the script's own parser; ``make`` targets must exist. A run folder a command reads
(``eval runs/…``) must be one that a documented command writes, so a recipe cannot point at a folder its
training command never creates.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer

from sparselora.cli import app
from sparselora.compare import load_compare_config
from sparselora.compare.plan import parse_only, parse_seeds, plan_cells
from sparselora.config import load_config, parse_overrides
from sparselora.sparse.settings import SparseLoRAConfig
from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
REPO_PREFIXES = ("configs/", "docs/", "benchmarks/", "tests/", "src/", ".ci/")
OUTPUT_OPTIONS = {"--out", "--json", "--output-dir"}
UNCHECKED_PROGRAMS = {"rm", "git", "pip", "cd"}
COMPARE_CONFIG_BENCHMARKS = {"interleaved_timing", "sparselora_token_rule"}


@dataclass
class Command:
    doc: Path
    line: int
    words: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}: {shlex.join(self.words)}"


def bash_commands(doc: Path) -> list[Command]:
    """The commands of a doc's ```bash blocks: continuations joined, comments dropped, ``|``/``&&``/``;`` split."""
    commands, in_block, pending, start = [], False, "", 0
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            in_block = line.strip() == "```bash"
            continue
        if not in_block:
            continue
        pending, start = pending + line.rstrip().removesuffix("\\"), start or number
        if line.rstrip().endswith("\\"):
            continue
        words, current = shlex.split(pending, comments=True), []
        for word in [*words, ";"]:
            if word in {"|", "&&", ";"}:
                if current:
                    commands.append(_with_env(doc, start, current))
                current = []
            else:
                current.append(word)
        pending, start = "", 0
    return commands


def _with_env(doc: Path, line: int, words: list[str]) -> Command:
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S+", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return Command(doc, line, words, env)


ALL_COMMANDS = [command for doc in DOCS for command in bash_commands(doc)]


def cli_params(args: list[str]) -> tuple[str, dict]:
    """Parse ``args`` with the CLI (types, choices, required arguments) without running the command."""
    command = typer.main.get_command(app)
    context = command.make_context("sparselora", list(args))
    path = []
    while hasattr(command, "resolve_command"):  # a group: descend to the subcommand
        name, command, rest = command.resolve_command(context, [*context._protected_args, *context.args])
        context = command.make_context(name, rest, parent=context)
        path.append(name)
    return " ".join(path), context.params


def benchmark_parser(script: Path):
    spec = importlib.util.spec_from_file_location(f"docs_benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.build_parser()


@dataclass
class Checked:
    """What a command writes (run folders, result folders, files) and what it reads."""

    writes: set[str] = field(default_factory=set)
    reads: set[str] = field(default_factory=set)


def check_sparselora(args: list[str], env: dict[str, str]) -> Checked:
    name, params = cli_params(args)
    checked = Checked()
    if env:  # a plugin example: the method it names lives in the user's own package
        return checked
    overrides = params.get("overrides") or []
    if name == "train":
        run = load_config(params["config"], overrides)
        checked.writes.add(str(Path(run.output_dir) / run.run_name))
    elif name in {"calibrate", "flops", "sparse recall"}:
        load_config(params["config"], overrides)
    elif name == "compare":
        comparison = load_compare_config(params["config"])
        comparison.shared.update(parse_overrides(overrides))
        if params.get("seeds"):
            comparison.seeds = parse_seeds(params["seeds"])
        if params.get("output_dir"):
            comparison.output_dir = params["output_dir"]
        for cell in plan_cells(comparison, parse_only(params.get("only"))):
            cell.run_config(comparison)
        checked.writes.add(str(comparison.output_dir))
    elif name in {"eval", "export", "push", "report", "study report"}:
        checked.reads.add(next(word for word in args[len(name.split()) :] if not word.startswith("-")))
    elif name == "study svd-vs-random":
        checked.writes.add(str(params["out"]))
    return checked


def check_benchmark(args: list[str]) -> Checked:
    """Parsed by the script's parser; a results folder it reads must be written by a documented command."""
    script = REPO / args[0]
    assert script.is_file(), f"no benchmark script {args[0]}"
    parser = benchmark_parser(script)
    try:
        parsed = parser.parse_args(args[1:])
    except SystemExit as exit_:
        raise AssertionError(f"{args[0]} rejects these arguments (exit {exit_.code})") from None
    config = getattr(parsed, "config", None)
    if config is not None and script.stem in COMPARE_CONFIG_BENCHMARKS:
        load_compare_config(config)
    elif config is not None:
        load_config(config, getattr(parsed, "set", []))
    return Checked(reads={word for word in input_words(args) if word.startswith("runs/")})


def check_command(command: Command) -> Checked:
    program, *args = command.words
    if program == "make":
        targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
        assert set(args) <= targets, f"Makefile has no target {sorted(set(args) - targets)}"
        return Checked()
    if program == "sparselora":
        return check_sparselora(args, command.env)
    if program == "accelerate":
        assert "sparselora.cli" in args, "accelerate launch should run -m sparselora.cli"
        return check_sparselora(args[args.index("sparselora.cli") + 1 :], command.env)
    if program == "python":
        return check_benchmark(args)
    assert program in UNCHECKED_PROGRAMS, f"no check for '{program}': add one to tests/test_docs.py"
    return Checked()


def output_values(words: list[str]) -> set[str]:
    return {value for option, value in itertools.pairwise(words) if option in OUTPUT_OPTIONS}


def input_words(words: list[str]) -> list[str]:
    return [word for option, word in zip(["", *words], words, strict=False) if option not in OUTPUT_OPTIONS]


def test_the_docs_have_command_blocks():
    assert len(ALL_COMMANDS) > 40 and {c.words[0] for c in ALL_COMMANDS} >= {"make", "sparselora", "python"}


@pytest.fixture(scope="module")
def checked_commands(data_env) -> dict[str, Checked | Exception]:
    """Each command checked once; a failure is kept for that command's own test to report."""
    results = {}
    for command in ALL_COMMANDS:
        try:
            results[str(command)] = check_command(command)
        except Exception as err:  # reported by the command's own test
            results[str(command)] = err
    return results


@pytest.fixture(scope="module")
def data_env(shared_data_dir):
    """data_dir for configs that read local data (the module-scoped twin of conftest's fixture)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARSELORA_DATA_DIR", str(shared_data_dir))
        yield shared_data_dir


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_every_documented_command_parses_and_its_config_validates(command, checked_commands):
    result = checked_commands[str(command)]
    if isinstance(result, Exception):
        raise AssertionError(f"{command}\n  {type(result).__name__}: {result}") from result


def test_every_run_folder_a_command_reads_is_one_a_documented_command_writes(checked_commands):
    checked = [result for result in checked_commands.values() if isinstance(result, Checked)]
    written = {path for result in checked for path in result.writes}
    written |= {path for command in ALL_COMMANDS for path in output_values(command.words)}
    missing = {
        f"{name} reads {path}"
        for name, checked in checked_commands.items()
        if isinstance(checked, Checked)
        for path in checked.reads
        if path.rstrip("/") not in written
    }
    assert not missing, "\n".join(sorted(missing))


def file_parts(words: list[str]) -> set[str]:
    """Files named inside command words (``--point cell=a.json,b.json``), outputs and run folders aside."""
    parts = {part for word in input_words(words) for part in re.split(r"[=,]", word)}
    return {part for part in parts if part.endswith((".json", ".yaml", ".yml")) and not part.startswith("runs/")}


def repo_paths(doc: Path) -> set[str]:
    """Repository paths a doc names: its relative links, and code spans and command words that start like one."""
    text = doc.read_text(encoding="utf-8")
    names = {
        Path(os.path.relpath(doc.parent / target, REPO)).as_posix()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
        if not re.match(r"[a-z]+:", target)
    }
    commands = bash_commands(doc)
    spans = re.findall(r"`([^`\s]+)`", text) + [word for c in commands for word in c.words]
    names |= {span.rstrip(".,:") for span in spans if span.startswith(REPO_PREFIXES)}
    names |= {part for command in commands for part in file_parts(command.words)}
    outputs = {path for c in commands for path in output_values(c.words)}
    return {name for name in names - outputs if not re.search(r"[{}*<>]", name)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_every_path_a_doc_names_exists(doc):
    missing = sorted(name for name in repo_paths(doc) if not (REPO / name).exists())
    assert not missing, f"{doc.relative_to(REPO)} names paths that do not exist: {missing}"


def test_every_sparselora_key_is_in_the_docs_key_table():
    text = (REPO / "docs" / "sparselora.md").read_text(encoding="utf-8")
    missing = [key for key in SparseLoRAConfig.model_fields if f"| `{key}` |" not in text]
    assert not missing, f"docs/sparselora.md's key table lacks {missing}"
