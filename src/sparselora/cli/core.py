"""The command line's frame: the app, shared options, and one error mechanism (a paragraph and an exit code)."""

from __future__ import annotations

import errno
import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from transformers.utils import logging as transformers_logging

app = typer.Typer(
    help="Sparse fine-tuning of transformers, measured honestly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # errors are one paragraph; --debug shows the traceback
)
console = Console()
error_console = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set lora_r=16 (repeatable)."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Folder with local dataset copies (default: $SPARSELORA_DATA_DIR or ../shared/data)."
    ),
]


BAD_INPUT_EXIT_CODE = 2
UNEXPECTED_EXIT_CODE = 1
# What the user can fix: a config, a path, a data file, a run folder, a missing optional package, a disk.
# sparselora's own errors derive from these (ConfigError is a ValueError, RunFolderError a FileExistsError, ...).
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from sparselora.compare.runner import StaleCellError
    from sparselora.training.loop import TrainingDivergedError

    return (*BAD_INPUT_ERRORS, TrainingDivergedError, StaleCellError)


def _error_paragraph(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename and type(err).__module__ == "builtins":
        hint = " Free some disk space, or point `output_dir` at another disk." if err.errno == errno.ENOSPC else ""
        return f"{type(err).__name__}: {err.strerror}: '{err.filename}'.{hint}"
    return f"{type(err).__name__}: {err}"


_OPTIONS = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        libraries = ("torch", "transformers", "peft", "accelerate", "datasets")
        console.print(f"sparselora {version('sparselora')} ({', '.join(f'{n} {version(n)}' for n in libraries)})")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full Python traceback of an error.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the versions and exit.")
    ] = False,
) -> None:
    """Sparse fine-tuning of transformers, measured honestly."""
    _OPTIONS["debug"] = debug


def _reported(command: Callable) -> Callable:
    """A command whose errors end as one paragraph and the documented exit code (--debug: the traceback)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, *_usage_errors()):
            raise
        except Exception as err:
            if _OPTIONS["debug"]:
                raise
            raise typer.Exit(code=_report_error(err)) from err

    return run


def metrics_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    return table


def report_errors_of(group: typer.Typer) -> None:
    """Every command of ``group`` and its sub-groups reports errors through ``_reported``: one mechanism."""
    for info in group.registered_commands:
        info.callback = _reported(info.callback)
    for sub in group.registered_groups:
        report_errors_of(sub.typer_instance)


def main(argv: list[str] | None = None) -> int:
    """The console entry point: every error ends as one paragraph and a non-zero exit code."""
    import sys

    import click

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Fresh heads are reported in the run's model card; transformers' per-load report is noise here.
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    args = ["--debug"] * debug + [arg for arg in args if arg != "--debug"]  # accepted anywhere on the line
    try:
        code = app(args=args, prog_name="sparselora", standalone_mode=False)
    except _usage_errors() as err:  # unknown option, missing argument, value out of range
        err.show()
        return err.exit_code
    except (click.Abort, typer.Abort, KeyboardInterrupt):
        error_console.print("interrupted")
        return 130
    except Exception as err:
        if debug:
            raise
        return _report_error(err)
    return code if isinstance(code, int) else 0


def _usage_errors() -> tuple[type[Exception], ...]:
    """click's usage errors, and typer's own copies of them (typer >= 0.2x vendors click)."""
    import click

    vendored = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "ClickException")
    return (click.ClickException, vendored)


def _report_error(err: Exception) -> int:
    """One paragraph and the documented exit code: 2 bad input, 3 run busy, 1 anything unexpected."""
    from sparselora.files.locks import BUSY_EXIT_CODE, LockBusyError

    if isinstance(err, LockBusyError):
        code = BUSY_EXIT_CODE
    elif isinstance(err, _bad_input_errors()):
        code = BAD_INPUT_EXIT_CODE
    else:
        code = UNEXPECTED_EXIT_CODE
    error_console.print(
        f"[bold red]error:[/] {_error_paragraph(err)}\n(run with --debug for the Python traceback)",
        highlight=False,
        soft_wrap=True,
    )
    return code
