"""Recipe schema: shipped recipes validate, bad values are rejected with the field named, overrides win."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mgm2fp.errors import ConfigError
from mgm2fp.training.recipe import RECIPES_DIR, Recipe, load_recipe, recipe_to_yaml

SHIPPED = sorted(RECIPES_DIR.glob("*.yaml"))


def test_shipped_recipes_exist():
    names = {path.stem for path in SHIPPED}
    assert {"mdlm-owt-adapt", "mdlm-owt-consistency"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_shipped_recipe_validates(path: Path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert path.read_text().startswith("# mgm2fp finetune ")


def test_adapt_recipe_has_published_values():
    recipe = load_recipe("mdlm-owt-adapt")
    assert recipe.distill_weight == 0.1
    assert recipe.distill_warmup_steps == 5000
    assert recipe.distill_temperature == 1.5
    assert recipe.gap == (0.05, 0.30)
    assert recipe.learning_rate == 2e-4
    assert recipe.max_grad_norm == 1.0


def test_consistency_recipe_has_published_values():
    recipe = load_recipe("mdlm-owt-consistency")
    assert recipe.consistency_weight == 0.1
    assert recipe.consistency_warmup_steps == 5000
    assert recipe.stop_rule is True
    assert recipe.stop_rule_tolerance == 0.15


BAD_VALUES = [
    ({"max_steps": 0}, "max_steps"),
    ({"batch_size": -1}, "batch_size"),
    ({"seq_len": 1}, "seq_len"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"min_learning_rate_ratio": 1.5}, "min_learning_rate_ratio"),
    ({"lr_schedule": "linear"}, "lr_schedule"),
    ({"warmup_steps": -5}, "warmup_steps"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"adam_beta1": 1.0}, "adam_beta1"),
    ({"max_grad_norm": 0}, "max_grad_norm"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"noise_eps": 0}, "noise_eps"),
    ({"no_grad_iterations": [-1, 2]}, "no_grad_iterations"),
    ({"grad_iterations": [0, 3]}, "grad_iterations"),
    ({"grad_iterations": [6, 3]}, "reversed"),
    ({"grad_iterations": [1, 2, 3]}, "grad_iterations"),
    ({"gap": [0.3, 0.05]}, "gap"),
    ({"gap": [0.1, 1.5]}, "gap"),
    ({"distill_weight": -0.1}, "distill_weight"),
    ({"distill_temperature": 0}, "distill_temperature"),
    ({"consistency_weight": -1}, "consistency_weight"),
    ({"consistency_warmup_steps": -1}, "consistency_warmup_steps"),
    ({"token_dtype": "float32"}, "token_dtype"),
    ({"validation_sequences": -1}, "validation_sequences"),
    ({"eval_every": 0}, "eval_every"),
    ({"stop_rule": True, "validation_sequences": 0}, "stop_rule needs validation"),
    ({"stop_rule_tolerance": 0}, "stop_rule_tolerance"),
    ({"log_every": 0}, "log_every"),
    ({"save_every": 0}, "save_every"),
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"trackers": ["tensorbored"]}, "unknown tracker tensorbored"),
    ({"lora": {"rank": 0}}, "lora.rank"),
    ({"lora": {"iteration_ranges": [[1, None]]}}, "must start at 0"),
    ({"lora": {"iteration_ranges": [[0, 2], [4, None]]}}, "must start at 3"),
    ({"lora": {"iteration_ranges": [[0, 1]]}}, "open-ended"),
    ({"lora": {"iteration_ranges": [[0, None], [1, None]]}}, "not the last range"),
    ({"lora": {"ranks": 4}}, "lora.ranks"),
    ({"max_step": 10}, "max_step: unknown field"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[next(iter(values)) + f"-{index}" for index, (values, _) in enumerate(BAD_VALUES)])
def test_bad_value_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(values)


def test_error_shows_value():
    with pytest.raises(ConfigError, match=r"learning_rate.*got -1"):
        load_recipe({}, learning_rate=-1)


def test_overrides_replace_file_values():
    recipe = load_recipe("mdlm-owt-adapt", max_steps=10, batch_size=None)
    assert recipe.max_steps == 10
    assert recipe.batch_size == 64  # None keeps the recipe's value


def test_missing_recipe_lists_shipped(tmp_path):
    with pytest.raises(ConfigError, match="mdlm-owt-adapt"):
        load_recipe(tmp_path / "nope.yaml")


def test_malformed_yaml_rejected(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("max_steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)


def test_non_mapping_yaml_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(path)


def test_resolved_yaml_round_trips(tmp_path):
    recipe = load_recipe("mdlm-owt-adapt", lora={"rank": 4, "iteration_ranges": [[0, 1], [2, None]]})
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_to_yaml(recipe))
    assert load_recipe(path) == recipe
    assert yaml.safe_load(path.read_text())["gap"] == [0.05, 0.3]


def test_default_recipe_matches_paper_defaults():
    recipe = Recipe()
    assert recipe.no_grad_iterations == (0, 4)
    assert recipe.grad_iterations == (3, 6)
    assert recipe.learning_rate == 2e-4
