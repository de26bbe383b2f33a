from pathlib import Path

import pytest

from sparselora.models import ModelNotFoundError, is_decoder, load_model_config, resolve_model
from sparselora.models.loading import cache_dir


def test_minilm_alias_points_at_the_packaged_folder():
    source = resolve_model("minilm")
    assert (Path(source.path) / "config.json").is_file()
    config = load_model_config(source)
    assert config.model_type == "bert" and config.num_hidden_layers == 6 and config.hidden_size == 384
    assert not is_decoder(config)


def test_local_folder_and_missing_model(tiny_llama_dir, tmp_path):
    assert is_decoder(load_model_config(resolve_model(str(tiny_llama_dir))))
    with pytest.raises(ModelNotFoundError, match="local folder"):
        load_model_config(resolve_model(str(tmp_path / "no-such-model")))


@pytest.mark.slow
def test_smollm2_converts_once_and_loads_as_llama():
    source = resolve_model("smollm2")
    assert Path(source.path).is_relative_to(cache_dir())
    config = load_model_config(source)
    assert config.model_type == "llama" and config.num_hidden_layers == 30 and config.intermediate_size == 1536
    assert is_decoder(config)
