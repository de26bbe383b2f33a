"""Your own SFT, chat and text data for causal LMs, in the three formats TRL's ``SFTTrainer`` reads.

- **messages**: a column of conversations, each a list of ``{"role", "content"}`` turns, rendered with
  the tokenizer's chat template; every assistant turn is trained, every other token is context.
- **prompt_completion**: a ``prompt`` and a ``completion`` column, plain strings (joined as written, EOS
  appended) or lists of turns (rendered with the chat template); only the completion is trained.
- **text**: a ``text`` column, language modelling on every token.

``data_format: auto`` picks by columns, in this order: the label column → classification (data/files.py),
a column of conversations → messages, prompt + completion columns → prompt_completion, the text column alone →
text (beside other columns it is read as classification, whose error names the label column; set
``data_format: text`` to train a language model on it).
Rows are checked here (roles, empty turns); a prompt longer than ``max_length`` is found when tokenising.
``bad_rows: skip`` counts and skips the rows that fail instead of stopping at the first.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from sparselora.data.readers import DataFileError
from sparselora.data.registry import TaskData, first_n

if TYPE_CHECKING:
    from sparselora.config import DataFormat

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(turn, dict) for turn in value)


def _first_value(split: Dataset, column: str) -> Any:
    return split[0][column] if len(split) else None


def messages_column(config, split: Dataset) -> str | None:
    """The column of conversations: ``messages_column``, or the text column when it holds them."""
    for column in (config.messages_column, config.text_column):
        if column in split.column_names and _is_conversation(_first_value(split, column)):
            return column
    return None


def detect_format(config, split: Dataset, where: str) -> DataFormat:
    """The format ``data_format`` names, or the one the columns show (the module docstring's order)."""
    if config.data_format != "auto":
        return config.data_format
    columns = split.column_names
    if config.label_column in columns:
        return "classification"
    if messages_column(config, split):
        return "messages"
    if config.prompt_column in columns and config.completion_column in columns:
        return "prompt_completion"
    if config.text_column in columns:  # text alone; beside other columns they may be misnamed labels
        return "text" if columns == [config.text_column] else "classification"
    raise DataFileError(
        f"{where}: cannot tell the data's format from its columns ({', '.join(columns)}). A label column "
        f"('{config.label_column}') means classification; a column of chat turns ('{config.messages_column}') "
        f"means messages; '{config.prompt_column}' + '{config.completion_column}' means prompt_completion; "
        f"'{config.text_column}' means text. Name yours with label_column / messages_column / prompt_column, "
        "completion_column / text_column, or set data_format."
    )


def _turn_problem(turn: Any, allow_empty: bool) -> str | None:
    if not isinstance(turn, dict):
        return f"a turn is {type(turn).__name__}, not a {{'role', 'content'}} mapping"
    role, content = turn.get("role"), turn.get("content")
    if role is None:
        return "a turn has no 'role'"
    if role not in ROLES:
        return f"role {role!r} is not one of {list(ROLES)}"
    if not isinstance(content, str):
        return f"the {role} turn's 'content' is {type(content).__name__}, not text"
    if not allow_empty and role == "assistant" and not content.strip():
        return "an assistant turn is empty"
    return None


def _conversation_problem(turns: Any, needs_assistant: bool) -> str | None:
    if not _is_conversation(turns):
        return "not a list of {'role', 'content'} turns"
    for turn in turns:
        problem = _turn_problem(turn, allow_empty=False)
        if problem:
            return problem
    if needs_assistant and not any(turn["role"] == "assistant" for turn in turns):
        return "no assistant turn to train on"
    return None


def _clean(turns: list[dict]) -> list[dict]:
    return [{"role": turn["role"], "content": turn["content"]} for turn in turns]


def _standard_row(config, fmt: DataFormat, row: dict, column: str | None) -> tuple[dict | None, str | None]:
    """One row in the standard columns, or the reason it cannot be trained on."""
    if fmt == "text":
        text = row[config.text_column]
        if not isinstance(text, str) or not text.strip():
            return None, f"'{config.text_column}' is empty or not text"
        return {"text": text}, None
    if fmt == "messages":
        turns = row[column]
        problem = _conversation_problem(turns, needs_assistant=True)
        return (None, problem) if problem else ({"messages": _clean(turns), "trained_from": 0}, None)
    prompt, completion = row[config.prompt_column], row[config.completion_column]
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            return None, f"'{config.completion_column}' is empty"
        return {"prompt": prompt, "completion": completion}, None
    for turns, name in ((prompt, config.prompt_column), (completion, config.completion_column)):
        problem = _conversation_problem(turns, needs_assistant=name == config.completion_column)
        if problem:
            return None, f"'{name}': {problem}"
    return {"messages": _clean(prompt) + _clean(completion), "trained_from": len(prompt)}, None


def standard_rows(config, fmt: DataFormat, split: Dataset, where: str) -> Dataset:
    """A split in the standard columns (``text``; ``prompt``/``completion``; ``messages``/``trained_from``)."""
    column = messages_column(config, split) if fmt == "messages" else None
    if fmt == "messages" and column is None:
        raise DataFileError(
            f"{where}: data_format messages needs a column of chat turns; neither '{config.messages_column}' "
            f"(messages_column) nor '{config.text_column}' (text_column) holds them; its columns: "
            f"{', '.join(split.column_names)}"
        )
    needed = {"text": [config.text_column], "prompt_completion": [config.prompt_column, config.completion_column]}
    missing = [c for c in needed.get(fmt, []) if c not in split.column_names]
    if missing:
        raise DataFileError(
            f"{where}: data_format {fmt} needs column(s) {missing}; its columns: {', '.join(split.column_names)}"
        )
    rows, skipped = [], 0
    for number, row in enumerate(split, start=1):
        standard, problem = _standard_row(config, fmt, row, column)
        if problem is None:
            rows.append(standard | {"row": number})  # the file's row number, for errors found when tokenising
            continue
        if config.bad_rows == "error":
            raise DataFileError(
                f"{where}, data row {number}: {problem}. Fix the row, or set `bad_rows: skip` to count and "
                "skip such rows."
            )
        skipped += 1
    if skipped:
        logger.warning(
            "%s: skipped %d of %d rows that cannot be trained on (bad_rows: skip)", where, skipped, len(split)
        )
    if not rows:
        raise DataFileError(f"{where}: no row can be trained on ({skipped} skipped)")
    return Dataset.from_list(rows)


def sft_splits(config, fmt: DataFormat, train: Dataset | None, evaluation: Dataset, where: dict[str, str]) -> TaskData:
    """Both splits standardised and subset; ``kind`` tells preprocessing which tokenisation applies."""
    kind = "language_modeling" if fmt == "text" else "sft"
    splits = {
        name: first_n(standard_rows(config, fmt, split, where[name]), limit)
        for name, split, limit in (
            ("train", train, config.max_train_samples),
            ("eval", evaluation, config.max_eval_samples),
        )
        if split is not None
    }
    empty = Dataset.from_dict({"text": []})
    return TaskData(train=splits.get("train", empty), eval=splits["eval"], kind=kind, data_format=fmt)
