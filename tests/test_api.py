"""The top-level API: every exported name resolves to the object the docs describe."""

import importlib

import sparselora


def test_every_exported_name_resolves():
    assert set(sparselora.__all__) == {"__version__", *sparselora._EXPORTS}
    for name, module in sparselora._EXPORTS.items():
        assert getattr(sparselora, name) is getattr(importlib.import_module(module), name), name


def test_the_front_door_trains_and_attaches(tiny_bert_dir, data_env, tmp_path):
    from tests.helpers import tiny_run

    config = sparselora.build_config(tiny_run(tiny_bert_dir, tmp_path, max_steps=1))
    run_dir = sparselora.train(config)
    recorded, measured = sparselora.evaluate_run(run_dir)
    assert measured["accuracy"] == recorded["accuracy"]
    assert "sparselora" in sparselora.method_names()
