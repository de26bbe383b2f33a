"""Tokenisation per task kind, and the collators that pad each batch dynamically."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

from datasets import Dataset, concatenate_datasets
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    default_data_collator,
)

from sparselora.data.gsm8k import final_answer
from sparselora.data.registry import TaskKind, first_n
from sparselora.data.sft_tokens import PackedCollator, encode_rows, pack, row_segments

# Evaluation masks must not change between `train` and `eval`: fixed seed for the MLM eval collator.
MLM_EVAL_SEED = 1234


@dataclass
class Prepared:
    """Tokenised splits and the collators to batch them."""

    train: Dataset
    eval: Dataset
    train_collator: Any
    eval_collator: Any
    # generation tasks keep prompts and reference answers for exact-match evaluation
    eval_prompts: list[str] | None = None
    eval_answers: list[str | None] | None = None


def _classification(ds: Dataset, tokenizer, max_length: int) -> Dataset:
    has_pair = "text_pair" in ds.column_names

    def encode(batch):
        pair = batch["text_pair"] if has_pair else None
        return tokenizer(batch["text"], pair, truncation=True, max_length=max_length)

    return ds.map(encode, batched=True, remove_columns=[c for c in ds.column_names if c != "label"]).rename_column(
        "label", "labels"
    )


BLOCK_CHUNK_LINES = 2000  # blocks are cut within chunks of this many lines; a chunk's remainder is dropped


def _blocks(ds: Dataset, tokenizer, block_size: int, limit: int | None = None) -> Dataset:
    """Concatenate tokens and cut fixed-size blocks (the standard LM recipe, run_clm), chunk by chunk.

    Chunks are tokenised in order until ``limit`` blocks exist: a run that uses the first 32
    blocks of WikiText-2 does not tokenise all 36,000 lines, and gets the same blocks as if it had.
    """

    def encode(batch):
        return tokenizer(batch["text"], add_special_tokens=False)

    def group(batch):
        ids = list(chain.from_iterable(batch["input_ids"]))
        usable = (len(ids) // block_size) * block_size
        blocks = [ids[i : i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks]}

    chunks, count = [], 0
    for start in range(0, len(ds), BLOCK_CHUNK_LINES):
        lines = ds.select(range(start, min(start + BLOCK_CHUNK_LINES, len(ds))))
        tokens = lines.map(encode, batched=True, remove_columns=lines.column_names)
        chunks.append(tokens.map(group, batched=True, batch_size=BLOCK_CHUNK_LINES, remove_columns=tokens.column_names))
        count += len(chunks[-1])
        if limit is not None and count >= limit:
            break
    return first_n(concatenate_datasets(chunks), limit) if chunks else ds.select([])


def uses_chat_template(tokenizer, chat_template: bool) -> bool:
    return chat_template and bool(getattr(tokenizer, "chat_template", None))


def sft_texts(row: dict, tokenizer, chat: bool) -> tuple[str, str]:
    """(prompt, target) text of one SFT row: plain, or the two chat turns rendered by the tokenizer's template.

    With a template the target is what the template adds after the generation prompt: the answer and the
    end-of-turn marker the model must learn to emit (SmolLM2: ``<|im_end|>``).
    """
    if not chat:
        return row["prompt"], row["target"]
    user = [{"role": "user", "content": row["user"]}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": row["assistant"]}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the tokenizer's chat template does not render the prompt as a prefix of the whole conversation; "
            "set `chat_template: false` to train on plain 'Question: ... Answer:' prompts"
        )
    return prompt, full[len(prompt) :]


def _sft(ds: Dataset, tokenizer, max_length: int, chat: bool) -> Dataset:
    """Prompt + target; the loss sees only target tokens (prompt labels are -100)."""

    def encode(row):
        prompt_text, target_text = sft_texts(row, tokenizer, chat)
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        target = tokenizer(target_text, add_special_tokens=False)["input_ids"]
        if not chat:  # the template's end-of-turn already ends a chat target
            target.append(tokenizer.eos_token_id)
        ids = (prompt + target)[:max_length]
        labels = ([-100] * len(prompt) + target)[:max_length]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    return ds.map(encode, remove_columns=ds.column_names)


def _context_and_answer(row: dict, tokenizer) -> tuple[str, str | None]:
    """The text before a row's last trained piece (the generation prompt) and that piece's final answer."""
    segments = row_segments(row, tokenizer)
    last = max(i for i, (_text, trained) in enumerate(segments) if trained)
    return "".join(text for text, _ in segments[:last]), final_answer(segments[last][0])


def _own_sft(train: Dataset, evaluation: Dataset, tokenizer, max_length: int, packing: bool, bad_rows: str) -> Prepared:
    """Your own chat / prompt-completion rows; packed training rows if asked (evaluation stays one per row)."""
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    train_rows = encode_rows(train, tokenizer, max_length, bad_rows, "training data")[0] if len(train) else train
    eval_rows, kept = encode_rows(evaluation, tokenizer, max_length, bad_rows, "evaluation data")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    contexts = [_context_and_answer(row, tokenizer) for row in kept]
    return Prepared(
        pack(train_rows, max_length) if packing and len(train) else train_rows,
        eval_rows,
        PackedCollator(pad_id) if packing else collator,
        collator,
        eval_prompts=[context for context, _ in contexts],
        eval_answers=[answer for _, answer in contexts],
    )


def prepare(
    kind: TaskKind,
    train: Dataset,
    evaluation: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    causal: bool,
    max_length: int,
    max_train_samples: int | None,
    max_eval_samples: int | None,
    chat_template: bool = False,
    packing: bool = False,
    bad_rows: str = "error",
) -> Prepared:
    """Tokenised splits and collators; ``chat_template``: SFT prompts through the tokenizer's template if any.

    ``packing`` and ``bad_rows`` apply to your own SFT data (kind ``sft``, data/sft_tokens.py).
    """
    if kind == "sft":
        return _own_sft(train, evaluation, tokenizer, max_length, packing, bad_rows)
    if kind == "classification":
        padding = DataCollatorWithPadding(tokenizer)
        return Prepared(
            _classification(train, tokenizer, max_length),
            _classification(evaluation, tokenizer, max_length),
            padding,
            padding,
        )
    if kind == "language_modeling":
        train_blocks = _blocks(train, tokenizer, max_length, max_train_samples)
        eval_blocks = _blocks(evaluation, tokenizer, max_length, max_eval_samples)
        if causal:
            # labels = input_ids; the model shifts them. No padding needed: blocks are equal length.
            with_labels = lambda ds: ds.map(lambda b: {"labels": b["input_ids"]}, batched=True)  # noqa: E731
            return Prepared(
                with_labels(train_blocks), with_labels(eval_blocks), default_data_collator, default_data_collator
            )
        return Prepared(
            train_blocks,
            eval_blocks,
            DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15),
            DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15, seed=MLM_EVAL_SEED),
        )
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    chat = uses_chat_template(tokenizer, chat_template)
    return Prepared(
        _sft(train, tokenizer, max_length, chat),
        _sft(evaluation, tokenizer, max_length, chat),
        collator,
        collator,
        eval_prompts=[sft_texts(row, tokenizer, chat)[0] for row in evaluation],
        eval_answers=list(evaluation["answer"]),
    )
