"""GSM8K grade-school maths: SFT on the answer tokens, exact match of the final number."""

from __future__ import annotations

import re

from datasets import DatasetDict

from sparselora.config import ConfigError
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


def solved_examples(shots) -> str:
    """k solved problems in the prompt's own format, each followed by a blank line."""
    return "".join(f"{prompt_for(row['question'])} {row['answer'].strip()}\n\n" for row in shots)


def _standard(split, shots: str = ""):
    """SFT rows: the plain-text prompt and target, the raw turns for a chat template, the reference number.

    ``shots`` (solved examples) open the prompt and the user turn alike; the trained target is unchanged.
    """
    return split.map(
        lambda row: {
            "prompt": shots + prompt_for(row["question"]),
            "target": " " + row["answer"].strip(),
            "user": shots + prompt_for(row["question"]) if shots else row["question"].strip(),
            "assistant": row["answer"].strip(),
            "answer": final_answer(row["answer"]),
        },
        remove_columns=split.column_names,
    )


def few_shot_examples(train, k: int, max_train_samples: int | None) -> str:
    """The last k training problems, solved: never among the first ``max_train_samples`` that are trained on."""
    if k == 0:
        return ""
    if max_train_samples is None or max_train_samples > len(train) - k:
        raise ConfigError(
            f"few_shot={k} takes the last {k} of the {len(train)} training problems, which training also uses; "
            f"set max_train_samples <= {len(train) - k}"
        )
    return solved_examples(train.select(range(len(train) - k, len(train))))


def load_gsm8k(config) -> TaskData:
    splits = load_local_or_hub(
        config,
        "gsm8k",
        ["train.jsonl", "test.jsonl"],
        lambda folder: DatasetDict(train=read_table(folder / "train.jsonl"), test=read_table(folder / "test.jsonl")),
        ("openai/gsm8k", "main"),
    )
    shots = few_shot_examples(splits["train"], config.few_shot, config.max_train_samples)
    return TaskData(
        train=_standard(first_n(splits["train"], config.max_train_samples), shots),
        eval=_standard(first_n(splits["test"], config.max_eval_samples), shots),
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
