"""WikiText-2: causal LM for decoders, masked LM for encoders; metric perplexity."""

from __future__ import annotations

from datasets import DatasetDict

from sparselora.data.readers import read_lines
from sparselora.data.registry import TaskData, TaskSpec, register_task
from sparselora.data.sources import load_local_or_hub


def load_wikitext2(config) -> TaskData:
    splits = load_local_or_hub(
        config,
        "wikitext2",
        ["train.txt", "valid.txt"],
        lambda folder: DatasetDict(train=read_lines(folder / "train.txt"), validation=read_lines(folder / "valid.txt")),
        ("Salesforce/wikitext", "wikitext-2-v1"),
    )
    # Blocks are cut after tokenisation, so max_*_samples count blocks (see preprocess).
    return TaskData(train=splits["train"], eval=splits["validation"])


register_task(
    TaskSpec(
        name="wikitext2",
        kind="language_modeling",
        dataset_id="Salesforce/wikitext",
        dataset_config="wikitext-2-v1",
        load=load_wikitext2,
    )
)
