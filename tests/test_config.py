from pathlib import Path

import pytest

from sparselora.config import ConfigError, build_config, describe_keys, load_config, parse_overrides


def test_defaults_and_seed_vocabulary():
    config = build_config(
        {
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.1,
            "target_modules": ["query", "value"],
            "epochs": 3,
            "batch_size": 16,
            "learning_rate": "3e-4",
            "weight_decay": 0.01,
            "warmup_steps": 100,
        }
    )
    assert config.option("lora_r") == 16
    assert config.learning_rate == pytest.approx(3e-4)  # YAML reads 3e-4 as a string: coerced
    assert config.run_name == "sst2_minilm_lora_s0"
    flat = config.to_flat_dict()
    assert flat["lora_alpha"] == 32 and flat["warmup_steps"] == 100


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"'lerning_rate'.*Did you mean 'learning_rate'"):
        build_config({"lerning_rate": 1e-3})


def test_method_key_for_another_method_is_rejected():
    with pytest.raises(ConfigError, match=r"method 'full': 'lora_r' \(a key of method\(s\) .*\blora\b"):
        build_config({"method": "full", "lora_r": 8})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"lora_r": 0}, "lora_r"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"batch_size": "many"}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"lr_scheduler": "triangle"}, "lr_scheduler"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=rf"\b{key}\b"):
        build_config(raw)


def test_unknown_method_lists_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown method 'lorra'.*lora"):
        build_config({"method": "lorra"})


def test_yaml_file_and_overrides(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("task: mrpc\nlora_r: 4\nlearning_rate: 5e-4\n")
    config = load_config(path, ["lora_r=16", "target_modules=[query, key]", "max_train_samples=100"])
    assert config.task == "mrpc" and config.option("lora_r") == 16
    assert config.option("target_modules") == ["query", "key"]
    assert config.max_train_samples == 100


def test_missing_file_and_non_mapping(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lora_r"])


def test_describe_keys_documents_every_method():
    text = describe_keys()
    assert "learning_rate" in text and "Method 'lora'" in text and "lora_r" in text
