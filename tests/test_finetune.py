"""Fine-tuning runs on the tiny fixture: metrics, saved model, exact resume, plain models, stop rule, LoRA, CLI."""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mgm2fp
from conftest import MDLM_TINY, run_cli
from finetune_helpers import TEXT, build_char_tokenizer, tiny_fixed_point, write_token_stream
from mgm2fp.errors import ConfigError, OutputExistsError
from mgm2fp.families.mdlm import MDLMDiT
from mgm2fp.fixed_point.model import FixedPointMGM

FAST = {"batch_size": 4, "validation_sequences": 4, "log_every": 1, "warmup_steps": 0, "no_grad_iterations": (0, 1), "grad_iterations": (1, 2)}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices gain nothing from threads, and on a loaded machine the thread pool's waits dominate."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    return write_token_stream(tmp_path / "tokens.npy")


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def train_lines(folder: Path) -> list[dict]:
    return [line for line in read_metrics(folder) if line["split"] == "train"]


def test_fixed_point_run_logs_every_term(tmp_path, tokens):
    output = tmp_path / "run"
    result = mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=output, max_steps=3, save_every=2, distill_weight=0.1, consistency_weight=0.1, distill_warmup_steps=2, **FAST)
    lines = train_lines(output)
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        for key in ("loss", "loss_mdlm", "loss_kl", "loss_consistency"):
            assert isinstance(line[key], float) and line[key] > 0
    assert [line["distill_weight"] for line in lines] == pytest.approx([0.0, 0.05, 0.1])
    assert lines[-1]["loss"] == pytest.approx(lines[-1]["loss_mdlm"] + 0.1 * lines[-1]["loss_kl"] + 0.1 * lines[-1]["loss_consistency"], rel=1e-5)
    assert result.steps == 3
    assert result.validation_perplexity is not None and result.validation_perplexity > 1


def test_fixed_point_run_saves_loadable_model(tmp_path, tokens):
    output = tmp_path / "run"
    mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=output, max_steps=2, save_every=1, distill_weight=0.1, **FAST)
    config = json.loads((output / "config.json").read_text())
    summary = config["finetune"]
    assert summary["steps"] == 2
    assert summary["recipe"]["distill_weight"] == 0.1
    assert summary["final_losses"]["loss_kl"] is not None
    assert summary["final_losses"]["loss_consistency"] is None
    assert summary["data"]["kind"] == "tokens"
    assert summary["validation_perplexity"] > 1
    assert summary["teacher"] == str(MDLM_TINY)
    assert "## Fine-tuning" in (output / "README.md").read_text()
    assert mgm2fp.training.recipe.load_recipe(output / "recipe.yaml").distill_weight == 0.1
    loaded = mgm2fp.load(output)
    assert isinstance(loaded, FixedPointMGM)
    assert loaded.metadata["finetune"]["steps"] == 2
    checkpoint = load_file(str(output / "checkpoints" / "step-00000002" / "model.safetensors"))
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, checkpoint[f"model.{name}"]), name
    assert sorted(path.name for path in (output / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]


def test_validation_data_limited_to_count(tmp_path, tokens):
    validation = write_token_stream(tmp_path / "validation.npy", seed=5)
    result = mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=tmp_path / "run", validation_data=validation, max_steps=1, **FAST)
    described = result.summary["data"]["validation"]
    assert described["num_sequences"] == 4
    assert described["path"] == str(validation)
    assert result.summary["data"]["num_sequences"] == 40  # nothing held out of the training data


def test_streamed_text_with_accumulation(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 12)
    tokenizer = build_char_tokenizer(tmp_path / "tokenizer")
    output = tmp_path / "run"
    options = {**FAST, "batch_size": 2, "validation_sequences": 2}
    mgm2fp.finetune(tiny_fixed_point(), corpus, output_dir=output, tokenizer=tokenizer, streaming=True, gradient_accumulation_steps=2, max_steps=2, **options)
    state = json.loads((output / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["data"] == {"epoch": 0, "offset": 8}  # 2 steps x 2 micro-steps x 2 sequences
    summary = json.loads((output / "config.json").read_text())["finetune"]
    assert summary["global_batch_size"] == 4
    assert summary["data"]["streaming"] is True
    assert [line["step"] for line in train_lines(output)] == [1, 2]


def test_plain_model_trains_with_mdlm_term_only(tmp_path, tokens):
    config = json.loads((MDLM_TINY / "config.json").read_text())
    config["n_blocks"] = 2
    model = MDLMDiT(config)
    output = tmp_path / "plain"
    mgm2fp.finetune(model, tokens, output_dir=output, max_steps=2, **FAST)
    lines = train_lines(output)
    assert all(line["loss_kl"] is None and line["loss_consistency"] is None for line in lines)
    assert all(line["loss"] == pytest.approx(line["loss_mdlm"]) for line in lines)
    loaded = mgm2fp.load(output)
    assert type(loaded) is MDLMDiT
    assert loaded.num_blocks == 2
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_plain_model_distillation_needs_teacher(tmp_path, tokens):
    with pytest.raises(ConfigError, match="needs a teacher"):
        mgm2fp.finetune(mgm2fp.load(MDLM_TINY), tokens, output_dir=tmp_path / "x", max_steps=1, distill_weight=0.1, **FAST)


class Interrupt(Exception):
    pass


def test_resume_continues_at_exact_step(tmp_path, tokens):
    options = dict(max_steps=4, save_every=2, consistency_weight=0.1, distill_weight=0.1, **FAST)
    straight = tmp_path / "straight"
    mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=straight, **options)

    def stop_after_step_3(step, max_steps, record):
        if step == 3:
            raise Interrupt

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=interrupted, progress=stop_after_step_3, **options)
    with pytest.raises(OutputExistsError, match="--resume"):
        mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=interrupted, **options)
    mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=interrupted, resume=True, **options)

    assert [line["step"] for line in train_lines(interrupted)] == [1, 2, 3, 4]
    for expected, actual in zip(train_lines(straight), train_lines(interrupted)):
        assert actual["loss"] == pytest.approx(expected["loss"], abs=1e-6)
        assert actual["grad_iterations"] == expected["grad_iterations"]
    reference = load_file(str(straight / "model.safetensors"))
    resumed = load_file(str(interrupted / "model.safetensors"))
    for name, tensor in reference.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6), name


def test_resume_without_checkpoint_rejected(tmp_path, tokens):
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=tmp_path / "empty", resume=True, max_steps=1, **FAST)


def test_tiny_overfit_loss_falls(tmp_path):
    data = write_token_stream(tmp_path / "few.npy", num_tokens=32 * 12, seed=1, high=8)
    output = tmp_path / "overfit"
    mgm2fp.finetune(
        tiny_fixed_point(), data, output_dir=output, max_steps=30, learning_rate=3e-3, lr_schedule="constant",
        save_every=30, **{**FAST, "validation_sequences": 0, "batch_size": 8},
    )
    losses = [line["loss_mdlm"] for line in train_lines(output)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses


def test_stop_rule_exports_last_checkpoint_within_tolerance(tmp_path, tokens, monkeypatch):
    from mgm2fp.training.engine import Trainer

    scripted = iter([10.0, 11.0, 30.0])  # before training, step 2 (within 15%), step 4 (above)
    monkeypatch.setattr(Trainer, "evaluate", lambda self: next(scripted))
    output = tmp_path / "stop"
    result = mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=output, max_steps=4, save_every=2, stop_rule=True, **FAST)
    rule = result.summary["stop_rule"]
    assert rule["baseline_perplexity"] == 10.0
    assert rule["exported_step"] == 2
    exported = load_file(str(output / "model.safetensors"))
    kept = load_file(str(output / "checkpoints" / "step-00000002" / "model.safetensors"))
    last = load_file(str(output / "checkpoints" / "step-00000004" / "model.safetensors"))
    name = next(key for key in exported if "fixed_point_block.layers.0.attn_qkv" in key)
    assert torch.equal(exported[name], kept[f"model.{name}"])
    assert not torch.equal(exported[name], last[f"model.{name}"])


def test_entropy_skipped_without_sample_api(tmp_path, tokens, caplog, monkeypatch):
    monkeypatch.delattr(mgm2fp, "sample", raising=False)
    with caplog.at_level(logging.INFO, logger="mgm2fp"):
        mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=tmp_path / "run", max_steps=1, entropy_samples=2, **FAST)
    assert "mgm2fp.sample is not available" in caplog.text
    assert all("unigram_entropy" not in line for line in read_metrics(tmp_path / "run"))


def test_entropy_logged_with_sample_api(tmp_path, tokens, monkeypatch):
    calls = []

    def fake_sample(model, num_samples, seq_len, budget, seed=0):
        calls.append((num_samples, seq_len, budget))
        return types.SimpleNamespace(tokens=torch.tensor([[1, 2, 3, 4]] * num_samples))

    monkeypatch.setattr(mgm2fp, "sample", fake_sample, raising=False)
    mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=tmp_path / "run", max_steps=1, entropy_samples=2, entropy_budget=48, **FAST)
    validation = [line for line in read_metrics(tmp_path / "run") if line["split"] == "validation"]
    assert validation[-1]["unigram_entropy"] == pytest.approx(torch.tensor(4.0).log().item())
    assert calls == [(2, 32, 48)]


def test_lora_single_adapter_merged_on_save(tmp_path, tokens):
    model = tiny_fixed_point()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    output = tmp_path / "lora"
    mgm2fp.finetune(model, tokens, output_dir=output, max_steps=2, learning_rate=1e-2, lora={"rank": 2, "target_modules": ["attn_qkv", "mlp.0"]}, **FAST)
    loaded = mgm2fp.load(output)
    after = loaded.state_dict()
    assert set(after) == set(before)
    assert torch.equal(after["pre_blocks.0.attn_qkv.weight"], before["pre_blocks.0.attn_qkv.weight"])
    assert torch.equal(after["fixed_point_block.layers.0.attn_out.weight"], before["fixed_point_block.layers.0.attn_out.weight"])
    assert not torch.equal(after["fixed_point_block.layers.0.attn_qkv.weight"], before["fixed_point_block.layers.0.attn_qkv.weight"])
    assert json.loads((output / "config.json").read_text())["finetune"]["lora"]["merged"] is True


def test_lora_per_iteration_adapters_saved_unmerged(tmp_path, tokens):
    from mgm2fp.training.lora import ADAPTER_WEIGHTS, adapter_for_iteration, load_adapters

    output = tmp_path / "lora"
    lora = {"rank": 2, "iteration_ranges": [[0, 1], [2, None]]}
    mgm2fp.finetune(tiny_fixed_point(), tokens, output_dir=output, max_steps=2, learning_rate=1e-2, lora=lora, **FAST)
    assert (output / ADAPTER_WEIGHTS).is_file()
    settings = json.loads((output / "config.json").read_text())["finetune"]["lora"]["settings"]
    assert adapter_for_iteration(mgm2fp.training.recipe.LoraSettings(**settings), 5) == "iterations_2_end"

    tokens_in = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        base = mgm2fp.load(output)(tokens_in, None, num_iterations=4)
        adapted_model = load_adapters(mgm2fp.load(output), output, settings)
        adapted = adapted_model(tokens_in, None, num_iterations=4)
        # Silencing the adapter of iterations 2+ must change the output: both adapters are used.
        for name, parameter in adapted_model.named_parameters():
            if "lora_B.iterations_2_end" in name:
                parameter.zero_()
        first_only = adapted_model(tokens_in, None, num_iterations=4)
    assert not torch.allclose(base, adapted)
    assert not torch.allclose(adapted, first_only)


def test_lora_on_plain_model_rejected(tmp_path, tokens):
    with pytest.raises(ConfigError, match="plain mdlm model"):
        mgm2fp.finetune(mgm2fp.load(MDLM_TINY), tokens, output_dir=tmp_path / "x", max_steps=1, lora={"rank": 2}, **FAST)


def test_cli_finetune_text_data_then_resume(tmp_path, capsys):
    model_folder = tmp_path / "fp"
    tiny_fixed_point(model_folder)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 8)
    tokenizer = build_char_tokenizer(tmp_path / "tokenizer")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("batch_size: 2\nvalidation_sequences: 2\nlog_every: 1\nwarmup_steps: 0\ngrad_iterations: [1, 2]\nno_grad_iterations: [0, 0]\n")
    output = tmp_path / "out"
    arguments = ["finetune", model_folder, "--data", corpus, "--tokenizer", tokenizer, "--recipe", recipe, "--output", output, "--save-every", "1", "--gap", "0.1", "0.2", "--consistency-weight", "0.1"]
    code, out, err = run_cli([*arguments, "--max-steps", "1"], capsys)
    assert code == 0, err
    assert "saved" in out
    code, out, err = run_cli([*arguments, "--max-steps", "2", "--resume"], capsys)
    assert code == 0, err
    assert [line["step"] for line in train_lines(output)] == [1, 2]
    summary = json.loads((output / "config.json").read_text())["finetune"]
    assert summary["recipe"]["gap"] == [0.1, 0.2]
    assert summary["data"]["kind"] == "text"


def test_cli_bad_value_is_one_line_error(tmp_path, capsys, tokens):
    model_folder = tmp_path / "fp"
    tiny_fixed_point(model_folder)
    code, out, err = run_cli(["finetune", model_folder, "--data", tokens, "--output", tmp_path / "out", "--gap", "0.5", "0.1"], capsys)
    assert code == 1
    assert "gap [0.5, 0.1] must satisfy 0 <= min <= max <= 1" in " ".join(err.split())
