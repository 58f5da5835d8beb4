"""The torch-free config: presets valid, bad fields refused by name with the allowed range."""
import subprocess
import sys

import pytest

from model.config import FIELD_NAMES, Config, ConfigError, build_config, parse_set
from model.presets import PRESETS


def test_config_module_imports_without_torch():
    code = "import sys, model.config, model.presets, model.genotypes; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid(name):
    cfg = build_config(name)
    assert cfg.validate() == {}


def test_paper_baseline_is_the_published_run_written_out():
    c = build_config("paper-baseline")
    assert (c.n_way, c.train_shots, c.inner_batch, c.k_shot, c.q_query, c.test_batch, c.meta_batch) == (20, 15, 20, 5, 1, 10, 5)
    assert (c.channels, c.layers, c.reductions, c.nodes, c.inner_steps, c.test_steps) == (28, 4, [1, 3], 3, 5, 50)
    assert (c.task_optimizer, c.adam_beta1, c.lr_theta_meta, c.lr_alpha_meta, c.split) == ("adam", 0.0, 1.0, 0.6, "vinyals")


def test_table1_has_nine_presets():
    table1 = [n for n in PRESETS if n.startswith("paper-") and n.split("-")[1] in ("baseline", "fnn", "lstm") and n != "paper-lstm-meta"]
    assert len(table1) == 9


@pytest.mark.parametrize("overrides, field, words", [
    ({"n_way": 1}, "n_way", "[2, 100]"),
    ({"n_way": "five"}, "n_way", "integer"),
    ({"lr_theta_task": -1.0}, "lr_theta_task", "[0.0, 10.0]"),
    ({"split": "random"}, "split", "vinyals, lake"),
    ({"ops": ["conv_3x3", "conv_9x9"]}, "ops", "unknown op 'conv_9x9'"),
    ({"rotations": "yes"}, "rotations", "true or false"),
    ({"reductions": [7]}, "reductions", "[0, 1]"),
    ({"k_shot": 15, "q_query": 6}, "q_query", "<= 20"),
    ({"bogus": 1}, "bogus", "unknown field"),
    ({"meta_learner": "maml", "maml_order": "second", "task_optimizer": "adam"}, "task_optimizer", "sgd"),
    ({"loss": "ce", "phi_update": "meta_gradient"}, "phi_update", "fnn or lstm"),
])
def test_bad_fields_are_refused_by_name(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        build_config("smoke", overrides)
    assert field in err.value.errors, err.value.errors
    assert words in err.value.errors[field]


def test_unknown_preset_is_refused():
    with pytest.raises(ConfigError) as err:
        build_config("nope")
    assert "preset" in err.value.errors


def test_set_values_parse_as_json_else_string():
    assert parse_set(["n_way=20", "ops=[\"conv_3x3\"]", "split=lake", "rotations=false", "lr_theta_task=1e-3"]) == {
        "n_way": 20, "ops": ["conv_3x3"], "split": "lake", "rotations": False, "lr_theta_task": 1e-3}


def test_integer_accepted_for_float_fields_and_round_trip():
    c = build_config("smoke", {"lr_theta_meta": 1})
    assert isinstance(c.lr_theta_meta, float)
    assert set(c.to_dict()) == set(FIELD_NAMES)
    assert Config(**c.to_dict()) == c
