"""GSM8K grade-school maths: SFT on the answer tokens, exact match of the final number."""

from __future__ import annotations

import re

from datasets import DatasetDict

from sparselora.data.readers import read_table
from sparselora.data.registry import TaskData, TaskSpec, first_n, register_task
from sparselora.data.sources import load_local_or_hub

_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def prompt_for(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def final_answer(text: str) -> str | None:
    """The number after '####' (GSM8K's convention), else the last number in the text."""
    marked = text.split("####")
    candidates = _NUMBER.findall(marked[1] if len(marked) > 1 else text)
    if not candidates:
        return None
    number = candidates[0] if len(marked) > 1 else candidates[-1]
    number = number.replace(",", "").rstrip(".")
    return number[:-2] if number.endswith(".0") else number


def _standard(split):
    """SFT rows: the plain-text prompt and target, the raw turns for a chat template, the reference number."""
    return split.map(
        lambda row: {
            "prompt": prompt_for(row["question"]),
            "target": " " + row["answer"].strip(),
            "user": row["question"].strip(),
            "assistant": row["answer"].strip(),
            "answer": final_answer(row["answer"]),
        },
        remove_columns=split.column_names,
    )


def load_gsm8k(config) -> TaskData:
    splits = load_local_or_hub(
        config,
        "gsm8k",
        ["train.jsonl", "test.jsonl"],
        lambda folder: DatasetDict(train=read_table(folder / "train.jsonl"), test=read_table(folder / "test.jsonl")),
        ("openai/gsm8k", "main"),
    )
    return TaskData(
        train=_standard(first_n(splits["train"], config.max_train_samples)),
        eval=_standard(first_n(splits["test"], config.max_eval_samples)),
    )


register_task(
    TaskSpec(
        name="gsm8k",
        kind="generation",
        dataset_id="openai/gsm8k",
        dataset_config="main",
        load=load_gsm8k,
        eval_split="test",
    )
)
