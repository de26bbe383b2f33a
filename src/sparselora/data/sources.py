"""Find a task's files: a local data folder first, then the Hugging Face Hub."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import DatasetDict

if TYPE_CHECKING:
    from sparselora.config import RunConfig

DATA_DIR_ENV = "SPARSELORA_DATA_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[3]


class DataNotFoundError(FileNotFoundError):
    """No local copy and no Hub access: the message lists every place that was tried."""


def candidate_data_dirs(config: RunConfig) -> list[Path]:
    """Where local copies may live, in order: config/--data-dir, $SPARSELORA_DATA_DIR, ../shared/data."""
    candidates = []
    if config.data_dir is not None:
        candidates.append(Path(config.data_dir))
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]))
    candidates += [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data"]
    unique: list[Path] = []
    for path in candidates:
        if path.resolve() not in [p.resolve() for p in unique]:
            unique.append(path)
    return unique


def find_local(config: RunConfig, subdir: str, required: list[str]) -> Path | None:
    """The first data folder whose ``subdir`` holds all ``required`` files."""
    if config.data_dir is not None and not Path(config.data_dir).is_dir():
        raise DataNotFoundError(
            f"data_dir '{Path(config.data_dir).resolve()}' (from --data-dir or the config key `data_dir`) "
            "does not exist; point it at the folder that holds sst2/, mrpc/, ... (e.g. ../shared/data)."
        )
    for root in candidate_data_dirs(config):
        folder = root / subdir
        if all((folder / name).is_file() for name in required):
            return folder
    return None


def load_local_or_hub(
    config: RunConfig,
    subdir: str,
    required: list[str],
    read_local: Callable[[Path], DatasetDict],
    hub_args: tuple[str, ...],
) -> DatasetDict:
    """Read the local copy if one exists, else ask the Hub; fail with every path tried."""
    folder = find_local(config, subdir, required)
    if folder is not None:
        return read_local(folder)
    try:
        import datasets

        return datasets.load_dataset(*hub_args)
    except Exception as err:  # offline: connection, DatasetNotFound, ... all mean "not here"
        tried = "\n".join(f"  {root / subdir}/{{{','.join(required)}}}" for root in candidate_data_dirs(config))
        raise DataNotFoundError(
            f"no local copy of '{subdir}' and the Hub dataset {'/'.join(hub_args)} could not be loaded "
            f"({type(err).__name__}). Looked for:\n{tried}\n"
            f"Fix: pass --data-dir DIR (or set {DATA_DIR_ENV}, or `data_dir:` in the config) to a folder "
            f"containing {subdir}/, or run where the Hugging Face Hub is reachable."
        ) from err


def open_dataset(config: RunConfig) -> DatasetDict:
    """``task: dataset``: a local folder of data files or a Hub id, through ``datasets.load_dataset``."""
    import datasets

    from sparselora.data.readers import DataFileError

    if not config.dataset:
        raise DataFileError(
            "task 'dataset' needs the key `dataset`: a Hub id (e.g. nyu-mll/glue with dataset_config: cola) or a "
            "local folder of train/validation data files (csv, json/jsonl, parquet, arrow)"
        )
    folder = Path(config.dataset)
    if folder.is_file():
        raise DataFileError(
            f"config key 'dataset': '{folder}' is a file; for your own files use task csv/tsv/jsonl/parquet/arrow "
            "with train_file and eval_file, or give the folder that holds them"
        )
    try:
        return datasets.load_dataset(
            str(folder.resolve()) if folder.is_dir() else config.dataset, config.dataset_config
        )
    except Exception as err:  # offline, unknown id, unreadable folder: datasets' errors have no common base
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataNotFoundError(
            f"dataset '{config.dataset}'{f' ({config.dataset_config})' if config.dataset_config else ''} could not "
            f"be opened ({type(err).__name__}: {reason}). Tried: a local folder '{folder.resolve()}' "
            f"({'exists' if folder.is_dir() else 'not found'}) and the Hub id '{config.dataset}' (needs the network "
            "or the datasets cache). Fix: give an existing folder, or run where the Hub is reachable once."
        ) from err
