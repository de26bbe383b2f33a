"""The Trainer's arguments from a run config, and the optimiser steps a run takes."""

import pytest

from sparselora.config import ConfigError, build_config
from sparselora.training.arguments import check_training_length, planned_steps, training_arguments
from tests.helpers import tiny_run


def test_training_args_pass_through_and_refuse_what_sparselora_sets(tiny_bert_dir, tmp_path):
    config = build_config(tiny_run(tiny_bert_dir, tmp_path, training_args={"optim": "adafactor", "tf32": None}))
    assert training_arguments(config, str(tmp_path / "ckpt"), distributed=False).optim == "adafactor"
    with pytest.raises(ConfigError, match=r"'optimizer' is not a field .* did you mean 'optim'"):
        build_config({"training_args": {"optimizer": "adamw_torch"}})
    with pytest.raises(ConfigError, match="'per_device_train_batch_size' is the run key `batch_size`"):
        build_config({"training_args": {"per_device_train_batch_size": 8}})
    with pytest.raises(ConfigError, match="'bf16' is set by sparselora: set `precision: bf16`"):
        build_config({"training_args": {"bf16": True}})
    with pytest.raises(ConfigError, match="write it under `training_args:`"):
        build_config({"optim": "adafactor"})
    with pytest.raises(ConfigError, match="transformers refused them"):
        bad = build_config(tiny_run(tiny_bert_dir, tmp_path, training_args={"optim": "no-such-optimizer"}))
        training_arguments(bad, str(tmp_path / "ckpt"), distributed=False)


def test_planned_steps_follow_the_trainers_arithmetic():
    config = build_config({"batch_size": 8, "gradient_accumulation_steps": 2, "epochs": 3})
    assert planned_steps(config, 100) == 3 * (13 // 2)  # 13 batches per epoch, 6 optimiser steps
    assert planned_steps(build_config({"max_steps": 7}), 100) == 7


def test_less_than_one_step_or_no_data_is_refused():
    with pytest.raises(ConfigError, match="less than one optimiser step"):
        check_training_length(build_config({"batch_size": 8, "epochs": 0.1}), 16)
    with pytest.raises(ConfigError, match=r"training split .* is empty"):
        check_training_length(build_config({}), 0)
