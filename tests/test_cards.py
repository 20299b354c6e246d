"""Model cards: metadata, fine-tuning and evaluation sections, model-index, and regeneration over an existing card."""

from __future__ import annotations

import copy

import pytest
from huggingface_hub import ModelCard

import mgm2fp
from conftest import MDLM_TINY
from mgm2fp.cards import GENERATED_END, GENERATED_START, build_model_card, read_eval_results
from mgm2fp.errors import ConfigError

HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"
FINETUNE = {
    "recipe": "cofre-consistency",
    "steps": 30000,
    "final_losses": {"loss": 3.2104, "loss_mdlm": 3.1, "loss_consistency": 0.0123},
    "data": "OpenWebText, 1024-token chunks",
    "dataset": "Skylion007/openwebtext",
    "validation_perplexity": 28.71,
}
EVAL_RESULTS = {
    "evaluator": "gpt2-large",
    "results": [
        {"budget": 48, "gen_ppl": 123.4, "entropy": 5.1, "block_forward_passes": 48, "num_samples": 16, "seq_len": 128, "reuse": "3sr"},
        {"budget": 96, "gen_ppl": 104.2, "entropy": 5.3, "block_forward_passes": 96, "num_samples": 16, "seq_len": 128, "reuse": "3sr"},
        {"budget": 96, "gen_ppl": 140.0, "entropy": 5.2, "block_forward_passes": 96, "num_samples": 16, "seq_len": 128, "reuse": "none"},
    ],
}


@pytest.fixture(scope="module")
def hub_config():
    """The saved config of mdlm-tiny converted as if it came from the hub id kuleshov-group/mdlm-owt."""
    model = mgm2fp.convert(str(MDLM_TINY), share_layers="1-4")
    config = model.to_config()
    config["source"] = {**config["source"], "id": "kuleshov-group/mdlm-owt", "revision": HUB_REVISION}
    return config


def metadata_of(card: ModelCard) -> dict:
    return ModelCard(str(card)).data.to_dict()


def test_card_metadata_hub_source(hub_config):
    metadata = metadata_of(build_model_card(hub_config))
    assert metadata["base_model"] == "kuleshov-group/mdlm-owt"
    assert metadata["library_name"] == "mgm2fp"
    assert metadata["pipeline_tag"] == "text-generation"
    for tag in ("fixed-point", "mdlm", "masked-diffusion"):
        assert tag in metadata["tags"]
    assert "model-index" not in metadata
    assert "datasets" not in metadata


def test_card_local_source_has_no_base_model(hub_config):
    config = copy.deepcopy(hub_config)
    config["source"] = {**config["source"], "id": "runs/mdlm-owt", "revision": None}
    assert "base_model" not in metadata_of(build_model_card(config))


def test_card_conversion_section(hub_config):
    text = str(build_model_card(hub_config))
    assert "| fixed-point range | 1-4 (shared block initialised from: first) |" in text
    assert f"| parameters | {hub_config['source']['num_parameters']:,} -> {hub_config['num_parameters']:,}" in text
    assert "| injection | fpdm |" in text


def test_card_finetune_section(hub_config):
    config = {**hub_config, "finetune": FINETUNE}
    recipe = "recipe: cofre-consistency\nlr: 2.0e-4\nsteps: 30000\n"
    card = build_model_card(config, recipe_text=recipe)
    text = str(card)
    assert "## Fine-tuning" in text
    assert "| recipe | `cofre-consistency` |" in text
    assert "| steps | 30,000 |" in text
    assert "| final `loss_consistency` | 0.0123 |" in text
    assert "| validation perplexity | 28.71 |" in text
    assert "[Skylion007/openwebtext](https://huggingface.co/datasets/Skylion007/openwebtext)" in text
    assert "```yaml\n" + recipe in text
    assert metadata_of(card)["datasets"] == ["Skylion007/openwebtext"]


def test_card_without_finetune_has_no_section(hub_config):
    assert "## Fine-tuning" not in str(build_model_card(hub_config))


def test_recipe_with_backticks_keeps_fence(hub_config):
    config = {**hub_config, "finetune": FINETUNE}
    text = str(build_model_card(config, recipe_text="note: '```'\n"))
    assert "````yaml\nnote: '```'\n````" in text


def test_eval_results_model_index(hub_config):
    card = build_model_card(hub_config, eval_results=EVAL_RESULTS, repo_id="me/mdlm-owt-fp")
    model_index = metadata_of(card)["model-index"]
    assert len(model_index) == 1
    assert model_index[0]["name"] == "me/mdlm-owt-fp"
    results = model_index[0]["results"]
    assert len(results) == 3  # one per budget and reuse setting
    assert [result["dataset"]["config"] for result in results] == ["budget-48-3sr", "budget-96-3sr", "budget-96"]
    first = results[0]
    assert first["task"]["type"] == "text-generation"
    metrics = {metric["type"]: metric for metric in first["metrics"]}
    assert set(metrics) == {"generative-perplexity", "unigram-entropy"}
    assert metrics["generative-perplexity"]["value"] == 123.4
    assert metrics["generative-perplexity"]["name"] == "Gen PPL at budget 48 (reuse 3sr)"
    assert metrics["generative-perplexity"]["args"]["evaluator"] == "gpt2-large"
    assert metrics["unigram-entropy"]["args"]["budget"] == 48


def test_eval_results_table(hub_config):
    text = str(build_model_card(hub_config, eval_results=EVAL_RESULTS))
    assert "| budget | Gen PPL | unigram entropy | reuse | samples | length | block forward passes |" in text
    assert "| 48 | 123.4 | 5.1 | 3sr | 16 | 128 | 48 |" in text
    assert "| 96 | 140 | 5.2 | none | 16 | 128 | 96 |" in text
    assert "`gpt2-large`" in text


def test_image_family_task(hub_config):
    config = {**hub_config, "family": "halton-maskgit"}
    results = {"evaluator": "inception-v3", "results": [{"budget": 72, "fid": 7.5}]}
    metadata = metadata_of(build_model_card(config, eval_results=results, repo_id="me/halton-fp"))
    assert metadata["pipeline_tag"] == "unconditional-image-generation"
    assert "maskgit" in metadata["tags"]
    result = metadata["model-index"][0]["results"][0]
    assert result["task"]["type"] == "unconditional-image-generation"
    assert result["metrics"][0]["type"] == "fid"


def test_usage_names_repo(hub_config):
    text = str(build_model_card(hub_config, repo_id="me/mdlm-owt-fp"))
    assert 'mgm2fp.load("me/mdlm-owt-fp")' in text
    assert "PATH_OR_REPO" not in text


def test_regeneration_keeps_user_text(hub_config):
    first = str(build_model_card(hub_config, eval_results=EVAL_RESULTS, repo_id="me/fp"))
    metadata_end = first.index("\n---\n") + len("\n---\n")
    edited = (
        first[:metadata_end].replace("library_name: mgm2fp\n", "license: apache-2.0\nlibrary_name: mgm2fp\n").replace("tags:\n", "tags:\n- my-own-tag\n")
        + "\nWritten by hand above the card.\n"
        + first[metadata_end:].replace("## Conversion", "## Conversion (edited, will be replaced)")
        + "\n## Notes\n\nWritten by hand below the card.\n"
    )
    second = str(build_model_card(hub_config, eval_results=EVAL_RESULTS, repo_id="me/fp", existing=edited))
    third = str(build_model_card(hub_config, eval_results=EVAL_RESULTS, repo_id="me/fp", existing=second))
    assert third == second
    assert "Written by hand above the card." in second
    assert "Written by hand below the card." in second
    assert "(edited, will be replaced)" not in second
    metadata = ModelCard(second).data.to_dict()
    assert metadata["license"] == "apache-2.0"
    assert "my-own-tag" in metadata["tags"]
    assert metadata["tags"].count("fixed-point") == 1
    assert len(metadata["model-index"][0]["results"]) == 3


def test_regeneration_is_idempotent(hub_config):
    first = str(build_model_card(hub_config))
    assert str(build_model_card(hub_config, existing=first)) == first


def test_regeneration_over_card_without_markers(hub_config):
    existing = "---\nlicense: mit\n---\n\n# My model\n\nHand-written description.\n"
    second = str(build_model_card(hub_config, existing=existing))
    assert str(build_model_card(hub_config, existing=second)) == second
    assert second.index(GENERATED_END) < second.index("Hand-written description.")
    assert second.count(GENERATED_START) == 1
    assert ModelCard(second).data.to_dict()["license"] == "mit"


def test_regeneration_replaces_stale_eval(hub_config):
    old = str(build_model_card(hub_config, eval_results=EVAL_RESULTS, repo_id="me/fp"))
    newer = {"evaluator": "gpt2-large", "results": [{"budget": 768, "gen_ppl": 60.0, "entropy": 5.4}]}
    text = str(build_model_card(hub_config, eval_results=newer, repo_id="me/fp", existing=old))
    results = ModelCard(text).data.to_dict()["model-index"][0]["results"]
    assert [result["dataset"]["config"] for result in results] == ["budget-768"]
    assert "| 48 |" not in text


BAD_EVAL_RESULTS = [
    # (case, file content, words expected in the error)
    ("not json", "{budget: 48", ["cannot read"]),
    ("list at top", "[]", ["'results' list"]),
    ("no budget", '{"results": [{"gen_ppl": 1.0}]}', ["entry 0", "budget"]),
    ("string budget", '{"results": [{"budget": "48"}]}', ["entry 0", "budget"]),
    ("string metric", '{"results": [{"budget": 48, "gen_ppl": "low"}]}', ["entry 0", "gen_ppl"]),
]


@pytest.mark.parametrize("case, content, expected", BAD_EVAL_RESULTS, ids=[case for case, _, _ in BAD_EVAL_RESULTS])
def test_bad_eval_results(tmp_path, case, content, expected):
    path = tmp_path / "eval_results.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as error:
        read_eval_results(path)
    for word in expected:
        assert word in str(error.value)
    assert "\n" not in str(error.value)
