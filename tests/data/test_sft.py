"""Your own SFT, chat and text files for causal LMs: format detection, labels, packing, bad rows, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sparselora.cli import main
from sparselora.config import build_config
from sparselora.data import get_task
from sparselora.data.files import DataFileError
from sparselora.data.preprocess import prepare
from sparselora.models import load_tokenizer, resolve_model

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}[SEP]{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHATS = [
    {"messages": [{"role": "user", "content": "two plus two"}, {"role": "assistant", "content": "it is 4"}]},
    {
        "messages": [
            {"role": "system", "content": "answer in one word"},
            {"role": "user", "content": "name a colour"},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "another"},
            {"role": "assistant", "content": "blue"},
        ]
    },
]


@pytest.fixture(scope="module")
def chat_llama(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny LLaMA with a chat template."""
    folder = tmp_path_factory.mktemp("chat-llama")
    shutil.copytree(tiny_llama_dir, folder, dirs_exist_ok=True)
    tokenizer = load_tokenizer(resolve_model(str(folder)))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _config(train: Path, evaluation: Path | None = None, **keys):
    return build_config({"task": "jsonl", "train_file": str(train), "eval_file": str(evaluation or train)} | keys)


def _prepared(model: Path, config):
    tokenizer = load_tokenizer(resolve_model(str(model)))
    raw = get_task(config.task).load(config)
    data = prepare(
        raw.kind,
        raw.train,
        raw.eval,
        tokenizer,
        causal=True,
        max_length=config.max_length,
        max_train_samples=None,
        max_eval_samples=None,
        packing=config.packing,
        bad_rows=config.bad_rows,
    )
    return raw, data, tokenizer


def _trained_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100])


@pytest.mark.parametrize(
    ("rows", "keys", "expected"),
    [
        (CHATS, {}, "messages"),
        ([{"conversation": CHATS[0]["messages"]}], {"text_column": "conversation"}, "messages"),
        ([{"prompt": "q", "completion": "a"}], {}, "prompt_completion"),
        ([{"text": "plain text"}], {}, "text"),
        ([{"text": "good", "label": 1}], {}, "classification"),
        (
            [{"question": "q", "reply": "a"}],
            {"prompt_column": "question", "completion_column": "reply"},
            "prompt_completion",
        ),
    ],
)
def test_the_format_follows_the_columns(tmp_path, rows, keys, expected):
    raw = get_task("jsonl").load(_config(_jsonl(tmp_path / "d.jsonl", rows), **keys))
    assert (raw.data_format or "classification") == expected


def test_columns_of_no_known_format_are_named_in_the_error(tmp_path):
    with pytest.raises(DataFileError, match=r"cannot tell the data.s format.*question, reply"):
        get_task("jsonl").load(_config(_jsonl(tmp_path / "d.jsonl", [{"question": "q", "reply": "a"}])))


def test_chat_rows_train_only_the_assistant_turns(tmp_path, chat_llama):
    _raw, data, tokenizer = _prepared(chat_llama, _config(_jsonl(tmp_path / "c.jsonl", CHATS)))
    first, second = data.train[0], data.train[1]
    assert tokenizer.decode(first["input_ids"]).startswith("< | user | > two plus two")
    assert _trained_text(tokenizer, first) == "it is 4 [SEP]"
    # both assistant turns of the multi-turn row, with their end-of-turn markers; the second user turn is context
    assert _trained_text(tokenizer, second) == "red [SEP] blue [SEP]"
    assert "another" in tokenizer.decode(second["input_ids"])
    # exact match generates from the context of the last trained turn
    assert data.eval_prompts[1].endswith("<|user|>another[SEP]<|assistant|>")


def test_prompt_completion_trains_the_completion_and_eos(tmp_path, tiny_llama_dir, chat_llama):
    plain = _jsonl(tmp_path / "p.jsonl", [{"prompt": "the sky is", "completion": " blue"}])
    _raw, data, tokenizer = _prepared(tiny_llama_dir, _config(plain))
    assert _trained_text(tokenizer, data.train[0]) == "blue [SEP]"
    turns = [{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}]}]
    _raw, data, tokenizer = _prepared(chat_llama, _config(_jsonl(tmp_path / "t.jsonl", turns)))
    assert _trained_text(tokenizer, data.train[0]) == "hello [SEP]"


def test_packing_keeps_attention_within_each_example(tmp_path, chat_llama):
    config = _config(_jsonl(tmp_path / "c.jsonl", CHATS * 3), packing=True, max_length=128)
    _raw, data, _tokenizer = _prepared(chat_llama, config)
    assert len(data.train) < 6  # six examples share fewer rows
    batch = data.train_collator([data.train[0]])
    assert "attention_mask" not in batch
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) >= 2 and all(batch["labels"][0, s] == -100 for s in starts)
    model = AutoModelForCausalLM.from_pretrained(chat_llama)
    model.config.use_cache = False  # as training with packing sets it
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        second = batch["input_ids"][:, starts[1] : starts[2] if len(starts) > 2 else None]
        alone = model(input_ids=second).logits[0]
    torch.testing.assert_close(packed[starts[1] : starts[1] + second.shape[1]], alone, atol=1e-5, rtol=1e-4)


BAD_ROWS = [
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "hello"}]}, "data row 2: a turn has no 'role'"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
        "data row 2: an assistant turn is empty",
    ),
    ({"messages": [{"role": "narrator", "content": "hi"}]}, "data row 2: role 'narrator' is not one of"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "data row 2: no assistant turn"),
    (
        {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]},
        "data row 2: its prompt is",
    ),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ROWS)
def test_a_bad_row_is_named_with_its_row_number(tmp_path, chat_llama, bad, message):
    config = _config(_jsonl(tmp_path / "c.jsonl", [CHATS[0], bad]), max_length=64)
    with pytest.raises(DataFileError, match=message.replace("(", r"\(")):
        _prepared(chat_llama, config)


def test_bad_rows_skip_counts_and_goes_on(tmp_path, chat_llama, caplog):
    rows = [CHATS[0], BAD_ROWS[0][0], CHATS[1], BAD_ROWS[4][0]]
    _raw, data, _tokenizer = _prepared(
        chat_llama, _config(_jsonl(tmp_path / "c.jsonl", rows), bad_rows="skip", max_length=64)
    )
    assert len(data.train) == 2
    assert "skipped 1 of 4 rows" in caplog.text and "skipped 1 rows longer than max_length" in caplog.text


def test_chat_rows_without_a_chat_template_say_what_to_do(tmp_path, tiny_llama_dir):
    with pytest.raises(DataFileError, match="need a tokenizer with a chat template"):
        _prepared(tiny_llama_dir, _config(_jsonl(tmp_path / "c.jsonl", CHATS)))


def test_the_cli_trains_and_evaluates_on_a_chat_file(tmp_path, chat_llama):
    """`--set task=jsonl --set train_file=chat.jsonl --set text_column=messages`: trains, reports perplexity."""
    chat = _jsonl(tmp_path / "chat.jsonl", CHATS * 4)
    args = ["train", "--set", f"model={chat_llama}", "--set", "task=jsonl", "--set", f"train_file={chat}"]
    args += ["--set", f"eval_file={chat}", "--set", "text_column=messages", "--set", "max_steps=2"]
    args += ["--set", "batch_size=4", "--set", "progress=false", "--set", "packing=true", "--output-dir", str(tmp_path)]
    assert main([*args, "--set", "name=chat"]) == 0
    metrics = json.loads((tmp_path / "chat" / "metrics.json").read_text())
    assert metrics["task_metrics"]["perplexity"] > 1


def test_an_sft_file_on_an_encoder_is_refused_with_exit_2(tmp_path, tiny_bert_dir, capsys):
    chat = _jsonl(tmp_path / "chat.jsonl", CHATS)
    args = ["train", "--set", f"model={tiny_bert_dir}", "--set", "task=jsonl", "--set", f"train_file={chat}"]
    assert main([*args, "--set", f"eval_file={chat}", "--output-dir", str(tmp_path)]) == 2
    assert "needs a decoder model" in capsys.readouterr().err
