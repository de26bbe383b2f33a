"""One evaluation loop for every task, used after training and by `sparselora eval`.

Own loop rather than ``Trainer.evaluate`` so that the same code times each batch (inference
latency), counts tokens, and runs greedy generation for GSM8K.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from sparselora.data.preprocess import Prepared
from sparselora.evaluation.metrics import (
    DEFAULTS,
    classification_metrics,
    exact_match,
    perplexity,
    regression_metrics,
)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    latency_ms_median: float
    eval_tokens_per_s: float
    num_examples: int


def _token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[float, int]:
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    loss = F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")
    return float(loss), int(mask.sum())


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: Prepared,
    *,
    kind: str,  # a task kind, or "regression" (a classification task's one-output head)
    causal: bool,
    num_labels: int | None,
    batch_size: int,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int = 256,
    progress: bool = True,
    metrics: tuple[str, ...] | None = None,
) -> EvalResult:
    """``metrics``: names to report besides eval_loss (default: the task kind's defaults)."""
    names = metrics or DEFAULTS[kind]
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(data.eval, batch_size=batch_size, shuffle=False, collate_fn=data.eval_collator)
    latencies, tokens, loss_sum, loss_count = [], 0, 0.0, 0
    predictions, references = [], []
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        start = time.perf_counter()
        logits = model(**batch).logits
        latencies.append(time.perf_counter() - start)
        tokens += int(batch["attention_mask"].sum())
        if kind == "classification":
            loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            loss_count += len(labels)
            predictions.append(logits.argmax(-1).cpu().numpy())
            references.append(labels.cpu().numpy())
        elif kind == "regression":  # one output per example, MSE as the model's own loss
            scores_out = logits.float().squeeze(-1)
            loss_sum += float(F.mse_loss(scores_out, labels.float(), reduction="sum"))
            loss_count += len(labels)
            predictions.append(scores_out.cpu().numpy())
            references.append(labels.float().cpu().numpy())
        else:
            batch_loss, count = _token_loss_sum(logits, labels, causal)
            loss_sum, loss_count = loss_sum + batch_loss, loss_count + count
    loss = loss_sum / max(loss_count, 1)
    scores: dict[str, float] = {"eval_loss": loss}
    if kind == "classification":
        predicted, expected = np.concatenate(predictions), np.concatenate(references)
        scores |= classification_metrics(predicted, expected, num_labels or 2, names)
    if kind == "regression":
        scores |= regression_metrics(np.concatenate(predictions), np.concatenate(references), names)
    if "perplexity" in names:
        scores["perplexity"] = perplexity(loss)
    if "exact_match" in names:
        generations = generate(model, tokenizer, data.eval_prompts or [], batch_size, max_new_tokens, progress)
        scores["exact_match"] = exact_match(generations, data.eval_answers or [])
    total = sum(latencies)
    return EvalResult(
        metrics=scores,
        latency_ms_median=1000 * statistics.median(latencies) if latencies else 0.0,
        eval_tokens_per_s=tokens / total if total else 0.0,
        num_examples=len(data.eval),
    )


def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int,
    progress: bool = True,
) -> list[str]:
    """Greedy decoding, left-padded batches; returns only the generated continuations."""
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs = []
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
            # tokenised as in training (no special tokens added: a chat template writes its own)
            batch = prompts[i : i + batch_size]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,  # packed training turns the model's cache off
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            outputs += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return outputs
