"""Tokenising your own SFT and chat rows (data/sft.py's standard columns), and packing them.

Each row becomes ``input_ids`` and ``labels`` with every context token at -100: a chat row is rendered turn
by turn with the tokenizer's chat template (the text before each trained assistant turn, with the
generation prompt, is context; the turn up to its end-of-turn marker is trained), a plain prompt/completion
row is the prompt then the completion and EOS. ``packing`` puts several examples in one row of at most
``max_length`` tokens with position ids restarting per example: with no attention mask, transformers'
masking (sdpa, eager) then keeps each token's attention within its own example.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset

from sparselora.data.readers import DataFileError

logger = logging.getLogger(__name__)

Segments = list[tuple[str, bool]]  # (text, trained) in order


def _render(tokenizer, turns: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(turns, add_generation_prompt=generation_prompt, tokenize=False)


def chat_segments(messages: list[dict], trained_from: int, tokenizer) -> Segments:
    """Context and trained pieces of a conversation: assistant turns from index ``trained_from`` are trained."""
    segments: Segments = []
    done = ""
    for index, turn in enumerate(messages):
        if turn["role"] != "assistant" or index < trained_from:
            continue
        prefix = _render(tokenizer, messages[:index], generation_prompt=True) if index else ""
        upto = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not (prefix.startswith(done) and upto.startswith(prefix)):
            raise ValueError(
                "the tokenizer's chat template does not render a conversation's start as a prefix of the whole "
                "(it rewrites earlier turns), so the assistant turns cannot be located; use prompt/completion "
                "columns with plain strings, or a tokenizer whose template renders turns in order"
            )
        segments += [(prefix[len(done) :], False), (upto[len(prefix) :], True)]
        done = upto
    return [(text, trained) for text, trained in segments if text]


def row_segments(row: dict, tokenizer) -> Segments:
    """The pieces of one standard row (``messages``/``trained_from`` or plain ``prompt``/``completion``)."""
    if row.get("messages") is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise DataFileError(
                "chat rows need a tokenizer with a chat template, and this model's has none; give the data as "
                "plain prompt/completion strings, or use a model with a chat template"
            )
        return chat_segments(row["messages"], row["trained_from"], tokenizer)
    return [(row["prompt"], False), (row["completion"], True)]


def encode_row(row: dict, tokenizer, max_length: int) -> tuple[dict | None, str | None]:
    """Token ids and labels (context -100), truncated to ``max_length``; or why the row cannot train."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in row_segments(row, tokenizer):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    if row.get("messages") is None and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)  # a plain completion ends where the model learns to stop
        labels.append(tokenizer.eos_token_id)
    first_trained = next((i for i, label in enumerate(labels) if label != -100), len(labels))
    if first_trained >= max_length:
        return None, f"its prompt is {first_trained} tokens, not shorter than max_length {max_length}"
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}, None


def encode_rows(ds: Dataset, tokenizer, max_length: int, bad_rows: str, where: str) -> tuple[Dataset, list[dict]]:
    """Every row encoded, and the source rows kept; a row that leaves nothing to train stops the run or is
    skipped (``bad_rows``)."""
    encoded, kept, skipped = [], [], 0
    for row in ds:
        example, problem = encode_row(row, tokenizer, max_length)
        if example is not None:
            encoded.append(example | {"attention_mask": [1] * len(example["input_ids"])})
            kept.append(row)
            continue
        if bad_rows == "error":
            raise DataFileError(
                f"{where}, data row {row['row']}: {problem}. Raise max_length, shorten the row, or set "
                "`bad_rows: skip` to count and skip such rows."
            )
        skipped += 1
    if skipped:
        logger.warning("%s: skipped %d rows longer than max_length (bad_rows: skip)", where, skipped)
    if not encoded:
        raise DataFileError(f"{where}: no row fits max_length {max_length} ({skipped} skipped)")
    return Dataset.from_list(encoded), kept


def pack(ds: Dataset, max_length: int) -> Dataset:
    """First-fit packing of examples into rows of at most ``max_length`` tokens, position ids per example.

    Each example's first label is -100: the model predicts it from the previous example's last token.
    """
    rows: list[dict[str, list[int]]] = []
    for example in ds:
        ids, labels = example["input_ids"], [-100, *example["labels"][1:]]
        row = next((r for r in rows if len(r["input_ids"]) + len(ids) <= max_length), None)
        if row is None:
            row = {"input_ids": [], "labels": [], "position_ids": []}
            rows.append(row)
        row["input_ids"] += ids
        row["labels"] += labels
        row["position_ids"] += list(range(len(ids)))
    return Dataset.from_list(rows)


@dataclass
class PackedCollator:
    """Pads packed rows (input ids with the pad id, labels -100, positions restarting) with no attention mask."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        gaps = [width - len(row["input_ids"]) for row in rows]
        return {
            "input_ids": torch.tensor(
                [r["input_ids"] + [self.pad_token_id] * g for r, g in zip(rows, gaps, strict=True)]
            ),
            "labels": torch.tensor([r["labels"] + [-100] * g for r, g in zip(rows, gaps, strict=True)]),
            "position_ids": torch.tensor([r["position_ids"] + list(range(g)) for r, g in zip(rows, gaps, strict=True)]),
        }
