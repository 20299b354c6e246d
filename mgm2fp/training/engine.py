"""The accelerate training loop: fine-tuning of fixed-point MGMs (arXiv 2605.31215) and training of plain MGMs.

The loop only orchestrates. It draws the S-JFB iteration counts, times and masks, runs the frozen
teacher and calls :class:`~mgm2fp.training.step.TrainingObjective`, which accelerate wraps for
DDP, FSDP or DeepSpeed as ``accelerate config`` chose. It then steps AdamW with warm-up and cosine
decay, and writes ``metrics.jsonl``, checkpoints and the final model. Checkpoints hold the model, optimizer,
scheduler, RNG states and the data position, so a resumed run continues at the exact step.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mgm2fp.data import BatchStream, DataSettings, SequenceArray, SequenceStream, iterate_once, open_sequences, resolve_tokenizer
from mgm2fp.errors import ConfigError, OutputExistsError, SourceNotFoundError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.fixed_point.model import FixedPointMGM
from mgm2fp.saving import check_replaceable
from mgm2fp.training.objectives import LogLinearSchedule, linear_warmup, sample_jfb_iterations, unigram_entropy
from mgm2fp.training.recipe import Recipe, load_recipe
from mgm2fp.training.step import TrainingObjective, combine_terms, make_inputs, teacher_logits_for

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TRAINER_STATE = "trainer_state.json"
TERM_NAMES = ("mdlm", "kl", "consistency")
LOSS_KEYS = ("loss", *(f"loss_{term}" for term in TERM_NAMES))


@dataclass
class FinetuneResult:
    """Result of a finished run."""

    output_dir: Path
    steps: int
    final_losses: dict[str, float | None]
    validation_perplexity: float | None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class StopRuleState:
    """Validation perplexity before training and the last checkpoint that stayed within the tolerance."""

    baseline: float | None = None
    kept_checkpoint: str | None = None
    kept_step: int | None = None
    kept_perplexity: float | None = None


def lr_lambda(recipe: Recipe) -> Callable[[int], float]:
    """Learning-rate factor of each step: linear warm-up, then cosine decay to ``min_learning_rate_ratio`` (or constant)."""

    def factor(step: int) -> float:
        if recipe.warmup_steps > 0 and step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        if recipe.lr_schedule == "constant":
            return 1.0
        decay_steps = max(1, recipe.max_steps - recipe.warmup_steps)
        progress = min(1.0, (step - recipe.warmup_steps) / decay_steps)
        floor = recipe.min_learning_rate_ratio
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class Trainer:
    """One fine-tuning or training run; build it with :func:`mgm2fp.finetune`."""

    def __init__(
        self,
        model: MaskedGenerativeModel,
        data: Any,
        *,
        recipe: Recipe,
        output_dir: Path,
        teacher: MaskedGenerativeModel | str | None = None,
        tokenizer: Any = None,
        validation_data: Any = None,
        accelerator: Any = None,
        progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        self.recipe = recipe
        self.output_dir = output_dir
        self.progress = progress
        self.accelerator = accelerator or Accelerator(
            mixed_precision=recipe.mixed_precision,
            gradient_accumulation_steps=recipe.gradient_accumulation_steps,
            log_with=recipe.trackers or None,
            project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
            step_scheduler_with_optimizer=False,
        )
        set_seed(recipe.seed, device_specific=True)
        if not self.accelerator.is_main_process:
            _quiet_logging_on_this_process()
        self.schedule = LogLinearSchedule(eps=recipe.noise_eps)
        self.model = model
        self.is_fixed_point = isinstance(model, FixedPointMGM)
        self.seq_len = self._resolve_seq_len()
        self._check_terms()
        self.teacher = self._load_teacher(teacher) if recipe.distill_weight > 0 else None
        self.lora_layers = self._apply_lora()
        self.tokenizer_spec = tokenizer if tokenizer is not None else recipe.tokenizer
        self.train_source, self.validation_source, self.data_description = self._open_data(data, validation_data)
        self.step = 0
        self.stop_rule = StopRuleState()
        self.last_losses: dict[str, float | None] = {}
        self.last_validation: float | None = None
        self._build_optimisation()
        if recipe.trackers:
            scalars = {key: value for key, value in recipe.model_dump(mode="json").items() if isinstance(value, (int, float, str, bool))}
            self.accelerator.init_trackers("mgm2fp-finetune", config=scalars)

    # Setup -----------------------------------------------------------------------------------

    def _resolve_seq_len(self) -> int:
        if self.recipe.seq_len is not None:
            return self.recipe.seq_len
        length = self.model.config.get("model_length")
        if length is None:
            raise ConfigError("the model's config has no model_length; set seq_len in the recipe or pass --seq-len")
        return int(length)

    def _check_terms(self) -> None:
        recipe = self.recipe
        if recipe.consistency_weight > 0 and not self.is_fixed_point:
            logger.warning("consistency loss on a plain %s model: the hidden state before its head is used", self.model.family)
        if recipe.distill_weight > 0 and not self.is_fixed_point and recipe.teacher is None:
            raise ConfigError("distill_weight > 0 on a plain model needs a teacher; pass --teacher or set distill_weight 0")

    def _load_teacher(self, teacher: MaskedGenerativeModel | str | None) -> MaskedGenerativeModel:
        from mgm2fp.loading import load

        source = teacher if teacher is not None else self.recipe.teacher
        recorded = source is None
        if recorded:
            source = (getattr(self.model, "metadata", {}).get("source") or {}).get("id")
        if source is None:
            raise ConfigError("distill_weight > 0 needs a teacher and the model records no source id; pass --teacher SOURCE")
        try:
            loaded = source if isinstance(source, MaskedGenerativeModel) else load(source)
        except SourceNotFoundError as error:
            if not recorded:
                raise
            raise SourceNotFoundError(f"the teacher recorded as the model's source, '{source}', was not found; pass --teacher with the source model's path or hub id") from error
        if loaded.vocab_size != self.model.vocab_size or loaded.mask_token_id != self.model.mask_token_id:
            raise ConfigError(
                f"teacher '{source}' has vocabulary {loaded.vocab_size} with mask id {loaded.mask_token_id} but the model has "
                f"{self.model.vocab_size} with mask id {self.model.mask_token_id}; use the model's source as teacher"
            )
        loaded.eval().requires_grad_(False)
        logger.info("teacher: %s (%d parameters, frozen)", source if isinstance(source, str) else loaded.family, loaded.num_parameters())
        return loaded.to(self.accelerator.device)

    def _apply_lora(self) -> list[Any]:
        if self.recipe.lora is None:
            return []
        from mgm2fp.training.lora import apply_lora

        return apply_lora(self.model, self.recipe.lora)  # type: ignore[arg-type]

    def _data_settings(self) -> DataSettings:
        recipe = self.recipe
        return DataSettings(
            seq_len=self.seq_len,
            vocab_size=self.model.vocab_size,
            mask_token_id=self.model.mask_token_id,
            tokenizer_loader=lambda: resolve_tokenizer(self.model, self.tokenizer_spec),
            text_column=recipe.text_column,
            split=recipe.dataset_split,
            dataset_config=recipe.dataset_config,
            streaming=recipe.streaming,
            line_documents=recipe.line_documents,
            token_dtype=recipe.token_dtype,
        )

    def _open_data(self, data: Any, validation_data: Any) -> tuple[Any, Any, dict[str, Any]]:
        settings = self._data_settings()
        train = open_sequences(data, settings)
        description = dict(settings.description, seq_len=self.seq_len)
        count = self.recipe.validation_sequences
        validation_data = validation_data if validation_data is not None else self.recipe.validation_data
        if count == 0:
            return train, None, description
        if validation_data is not None:
            validation_settings = self._data_settings()
            validation = open_sequences(validation_data, validation_settings)
            # Only the first ``count`` sequences are evaluated.
            if isinstance(validation, SequenceArray) and len(validation) > count:
                validation = validation.split(len(validation) - count)[0]
            if isinstance(validation, SequenceStream):
                validation = SequenceStream(validation.make_iterator, skip=validation.skip, limit=count)
            description["validation"] = dict(validation_settings.description, num_sequences=_count(validation))
            return train, validation, description
        if isinstance(train, SequenceArray):
            if len(train) <= count:
                raise ConfigError(f"the data has {len(train)} sequences, too few to hold out validation_sequences {count}; lower validation_sequences or pass validation data")
            train, validation = train.split(count)
        else:
            train, validation = train.split(count)
        description["validation"] = {"held_out_sequences": count}
        return train, validation, description

    def _build_optimisation(self) -> None:
        recipe = self.recipe
        accelerator = self.accelerator
        self.objective = TrainingObjective(self.model, schedule=self.schedule, consistency_reduction=recipe.consistency_reduction)
        parameters = [parameter for parameter in self.objective.parameters() if parameter.requires_grad]
        if not parameters:
            raise ConfigError("the model has no trainable parameter; check the lora settings")
        optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, betas=(recipe.adam_beta1, recipe.adam_beta2), eps=recipe.adam_epsilon, weight_decay=recipe.weight_decay)
        self.objective, self.optimizer = accelerator.prepare(self.objective, optimizer)
        # The scheduler is stepped once per optimizer step and checkpointed in trainer_state.json,
        # so it is not handed to accelerate (which would step it once per process).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer, lr_lambda(recipe))
        self.batches = BatchStream(
            self.train_source,
            batch_size=recipe.batch_size,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            seed=recipe.seed,
            shuffle=recipe.shuffle,
        )

    # Checkpoints -----------------------------------------------------------------------------

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / CHECKPOINTS_DIR

    def save_checkpoint(self) -> Path:
        """Write the full training state for the current step; return its folder."""
        accelerator = self.accelerator
        final = self.checkpoints_dir / f"step-{self.step:08d}"
        temporary = self.checkpoints_dir / f".step-{self.step:08d}.tmp"
        if accelerator.is_main_process and temporary.exists():
            shutil.rmtree(temporary)
        accelerator.wait_for_everyone()
        temporary.mkdir(parents=True, exist_ok=True)
        accelerator.save_state(str(temporary), safe_serialization=True)
        accelerator.wait_for_everyone()  # every process has written its RNG state before the rename
        if accelerator.is_main_process:
            state = {
                "step": self.step,
                "data": self.batches.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "stop_rule": vars(self.stop_rule),
                "num_processes": accelerator.num_processes,
                "recipe": self.recipe.model_dump(mode="json"),
            }
            (temporary / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            temporary.rename(final)
            self._rotate_checkpoints()
        accelerator.wait_for_everyone()
        logger.info("saved checkpoint %s", final)
        return final

    def _rotate_checkpoints(self) -> None:
        keep = self.recipe.keep_checkpoints
        if keep is None:
            return
        folders = sorted(self.checkpoints_dir.glob("step-*"))
        for folder in folders[:-keep]:
            if self.stop_rule.kept_checkpoint and folder.name == Path(self.stop_rule.kept_checkpoint).name:
                continue
            shutil.rmtree(folder, ignore_errors=True)

    def resume(self, checkpoint: Path) -> None:
        """Restore model, optimizer, RNG states, scheduler, data position and step from ``checkpoint``."""
        state_file = checkpoint / TRAINER_STATE
        if not state_file.is_file():
            raise ConfigError(f"'{checkpoint}' is not a complete checkpoint ({TRAINER_STATE} is missing); pick another step-* folder")
        state = json.loads(state_file.read_text())
        if state.get("num_processes") != self.accelerator.num_processes:
            logger.warning("checkpoint was written by %s processes, resuming on %d: the data order changes", state.get("num_processes"), self.accelerator.num_processes)
        changed = sorted(key for key, value in state.get("recipe", {}).items() if self.recipe.model_dump(mode="json").get(key) != value)
        if changed:
            logger.warning("resuming with recipe fields that differ from the checkpoint's: %s; the new values win", ", ".join(changed))
        self.accelerator.load_state(str(checkpoint))
        self.step = int(state["step"])
        self.batches.load_state_dict(state["data"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stop_rule = StopRuleState(**state.get("stop_rule", {}))
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    # Metrics ---------------------------------------------------------------------------------

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with (self.output_dir / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.accelerator.log({key: value for key, value in record.items() if isinstance(value, (int, float)) and key != "step"}, step=record["step"])

    def _truncate_metrics(self) -> None:
        """Drop metric lines after the resumed step, so the file reads as one uninterrupted run."""
        path = self.output_dir / METRICS_FILE
        if not self.accelerator.is_main_process or not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= self.step]
        path.write_text("".join(line + "\n" for line in kept))

    # Validation ------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Validation perplexity ``exp(negative ELBO per token)`` with fixed noise; None without validation data."""
        if self.validation_source is None:
            return None
        accelerator = self.accelerator
        objective = self.objective
        objective.eval()
        generator = torch.Generator().manual_seed(self.recipe.seed + 12_345 + accelerator.process_index)
        iterations = self.recipe.eval_num_iterations
        total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
        for x0 in iterate_once(self.validation_source, batch_size=self.recipe.batch_size, process_index=accelerator.process_index, num_processes=accelerator.num_processes):
            inputs = make_inputs(x0, mask_token_id=self.model.mask_token_id, schedule=self.schedule, antithetic=self.recipe.antithetic, nested=False, gap=self.recipe.gap, generator=generator)
            terms = objective(inputs.to(accelerator.device), num_iterations=iterations)
            total += torch.stack([terms["mdlm"].double() * x0.numel(), torch.tensor(float(x0.numel()), device=accelerator.device, dtype=torch.float64)])
        objective.train()
        total = accelerator.reduce(total, reduction="sum")
        if float(total[1]) == 0:
            return None
        return float(torch.exp(total[0] / total[1]))

    def sample_entropy(self) -> float | None:
        """Mean unigram entropy of ``entropy_samples`` samples from :func:`mgm2fp.sample`, when that API exists."""
        count = self.recipe.entropy_samples
        if count == 0 or not self.accelerator.is_main_process:
            return None
        try:
            from mgm2fp import sample  # type: ignore[attr-defined]
        except ImportError:
            logger.info("mgm2fp.sample is not available: skipping the unigram entropy of validation samples")
            return None
        model = self.accelerator.unwrap_model(self.objective).model
        budget = self.recipe.entropy_budget or 16 * model.cost_per_step()
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):
            result = sample(model, num_samples=count, seq_len=self.seq_len, budget=budget, seed=self.recipe.seed)
        model.train(was_training)
        return float(unigram_entropy(result.tokens.cpu()).mean())

    def _validate(self, *, before_training: bool = False) -> dict[str, Any]:
        perplexity = self.evaluate()
        record: dict[str, Any] = {"step": self.step, "split": "validation", "val_perplexity": perplexity}
        entropy = self.sample_entropy()
        if entropy is not None:
            record["unigram_entropy"] = entropy
        if perplexity is not None:
            self.last_validation = perplexity
            if before_training and self.stop_rule.baseline is None:
                self.stop_rule.baseline = perplexity
        if perplexity is None and entropy is None:
            return record
        self._write_metrics(record)
        logger.info("step %d: validation perplexity %s", self.step, "n/a" if perplexity is None else f"{perplexity:.3f}")
        return record

    def _apply_stop_rule(self, checkpoint: Path, perplexity: float | None) -> None:
        rule = self.stop_rule
        if not self.recipe.stop_rule or rule.baseline is None or perplexity is None:
            return
        limit = rule.baseline * (1 + self.recipe.stop_rule_tolerance)
        if perplexity <= limit:
            rule.kept_checkpoint, rule.kept_step, rule.kept_perplexity = str(checkpoint), self.step, perplexity
        else:
            kept = f"step {rule.kept_step}" if rule.kept_step is not None else "no checkpoint of this stage yet"
            logger.warning("step %d: validation perplexity %.3f is above the stop-rule limit %.3f; keeping %s", self.step, perplexity, limit, kept)

    # Training --------------------------------------------------------------------------------

    def _term_weights(self) -> tuple[float, float]:
        recipe = self.recipe
        distill = linear_warmup(self.step, final_value=recipe.distill_weight, warmup_steps=recipe.distill_warmup_steps)
        consistency = linear_warmup(self.step, final_value=recipe.consistency_weight, warmup_steps=recipe.consistency_warmup_steps)
        return distill, consistency

    def _micro_step(self, *, weights: tuple[float, float], iterations: tuple[int | None, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and backward pass of one micro-batch; return the weighted loss and its unweighted terms."""
        recipe = self.recipe
        accelerator = self.accelerator
        x0 = next(self.batches).to(accelerator.device)  # [B, L]
        inputs = make_inputs(x0, mask_token_id=self.model.mask_token_id, schedule=self.schedule, antithetic=recipe.antithetic, nested=recipe.uses_nested_masks, gap=recipe.gap)
        teacher_logits = None
        if self.teacher is not None:
            with accelerator.autocast():
                teacher_logits = teacher_logits_for(self.teacher, inputs, self.schedule)

        with accelerator.accumulate(self.objective):
            terms = self.objective(
                inputs,
                teacher_logits=teacher_logits,
                distill_temperature=recipe.distill_temperature,
                consistency=recipe.consistency_weight > 0,
                num_iterations=iterations[0],
                no_grad_iterations=iterations[1],
            )
            loss = combine_terms(terms, distill_weight=weights[0], consistency_weight=weights[1])
            accelerator.backward(loss)
        return loss.detach(), {name: value.detach() for name, value in terms.items()}

    def train_step(self) -> dict[str, Any]:
        """Run one optimizer step (all accumulation micro-steps) and return its logged values."""
        recipe = self.recipe
        accelerator = self.accelerator
        weights = self._term_weights()
        iterations: tuple[int | None, int] = (None, 0)
        if self.is_fixed_point:
            no_grad, grad = sample_jfb_iterations(recipe.no_grad_iterations, recipe.grad_iterations)
            iterations = (grad, no_grad)

        record: dict[str, Any] = {key: None for key in LOSS_KEYS}
        for _ in range(recipe.gradient_accumulation_steps):
            loss, terms = self._micro_step(weights=weights, iterations=iterations)
            for key, value in (("loss", loss), *((f"loss_{name}", term) for name, term in terms.items())):
                record[key] = (record[key] or 0.0) + float(value) / recipe.gradient_accumulation_steps

        grad_norm = None
        if recipe.max_grad_norm is not None:
            norm = accelerator.clip_grad_norm_(self.objective.parameters(), recipe.max_grad_norm)
            grad_norm = None if norm is None else float(norm)
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

        record.update(lr=learning_rate, grad_norm=grad_norm, distill_weight=weights[0], consistency_weight=weights[1])
        if self.is_fixed_point:
            record.update(no_grad_iterations=iterations[1], grad_iterations=iterations[0])
        return record

    def _reduce_record(self, sums: dict[str, float], count: int) -> dict[str, float | None]:
        """Mean of the summed per-step values over steps and processes."""
        names = [name for name in LOSS_KEYS if name in sums]
        values = torch.tensor([sums[name] / max(1, count) for name in names], device=self.accelerator.device, dtype=torch.float64)
        values = self.accelerator.reduce(values, reduction="mean")
        return {name: float(value) for name, value in zip(names, values)}

    def train(self) -> None:
        """Train from the current step to ``max_steps``, logging, validating and checkpointing on the way."""
        recipe = self.recipe
        if recipe.stop_rule and self.step == 0 and self.stop_rule.baseline is None:
            self._validate(before_training=True)
        self.objective.train()
        window: list[dict[str, Any]] = []
        window_start = time.perf_counter()
        while self.step < recipe.max_steps:
            record = self.train_step()
            window.append(record)
            if self.step % recipe.log_every == 0 or self.step == recipe.max_steps:
                self._log_window(window, time.perf_counter() - window_start)
                window, window_start = [], time.perf_counter()
            if self.progress is not None and self.accelerator.is_main_process:
                self.progress(self.step, recipe.max_steps, record)
            self._validate_and_checkpoint()
        self.accelerator.wait_for_everyone()

    def _log_window(self, records: list[dict[str, Any]], elapsed: float) -> None:
        """Write one metrics line: loss terms averaged over the window's steps and all processes, the rest from its last step."""
        sums: dict[str, float] = {}
        for record in records:
            for key, value in record.items():
                if key.startswith("loss") and value is not None:
                    sums[key] = sums.get(key, 0.0) + value
        reduced = self._reduce_record(sums, len(records))
        line: dict[str, Any] = {"step": self.step, "split": "train", **{key: reduced.get(key) for key in LOSS_KEYS}}
        line.update({key: value for key, value in records[-1].items() if not key.startswith("loss")})
        line["step_time"] = elapsed / len(records)
        self._write_metrics(line)
        self.last_losses = {key: line[key] for key in LOSS_KEYS}

    def _validate_and_checkpoint(self) -> None:
        recipe = self.recipe
        saving = self.step % recipe.save_every == 0 or self.step == recipe.max_steps
        perplexity = None
        # The stop rule judges every checkpoint by its own validation perplexity.
        if self.step % recipe.resolved_eval_every == 0 or self.step == recipe.max_steps or (saving and recipe.stop_rule):
            perplexity = self._validate()["val_perplexity"]
        if not saving:
            return
        checkpoint = self.save_checkpoint()
        self._apply_stop_rule(checkpoint, perplexity)
        if self.accelerator.is_main_process and recipe.stop_rule:
            # Record the stop-rule decision in the checkpoint it concerns.
            state_file = checkpoint / TRAINER_STATE
            state = json.loads(state_file.read_text())
            state["stop_rule"] = vars(self.stop_rule)
            state_file.write_text(json.dumps(state, indent=2) + "\n")

    # Export ----------------------------------------------------------------------------------

    def _restore_kept_checkpoint(self) -> None:
        rule = self.stop_rule
        if not self.recipe.stop_rule or rule.kept_checkpoint is None or rule.kept_step == self.step:
            return
        logger.warning("stop rule: exporting step %d (validation perplexity %.3f, baseline %.3f) instead of step %d", rule.kept_step, rule.kept_perplexity, rule.baseline, self.step)
        self.accelerator.load_state(rule.kept_checkpoint)

    def summary(self) -> dict[str, Any]:
        """Return the ``finetune`` entry of the saved ``config.json``."""
        rule = self.stop_rule
        summary: dict[str, Any] = {
            "recipe_name": self.recipe.name,
            "recipe": self.recipe.model_dump(mode="json"),
            "steps": self.step,
            "final_losses": self.last_losses,
            "validation_perplexity": self.last_validation,
            "data": self.data_description,
            "teacher": None if self.teacher is None else (self.recipe.teacher or (getattr(self.model, "metadata", {}).get("source") or {}).get("id")),
            "num_processes": self.accelerator.num_processes,
            "global_batch_size": self.recipe.batch_size * self.accelerator.num_processes * self.recipe.gradient_accumulation_steps,
        }
        if self.recipe.stop_rule:
            summary["stop_rule"] = {"baseline_perplexity": rule.baseline, "exported_step": rule.kept_step or self.step, "exported_perplexity": rule.kept_perplexity, "tolerance": self.recipe.stop_rule_tolerance}
        return summary

    def export(self) -> dict[str, Any]:
        """Write the final model (``save_pretrained`` layout), ``recipe.yaml`` and the model card into the output folder."""
        from accelerate.utils import DistributedType

        from mgm2fp.training.export import export_model

        self._restore_kept_checkpoint()
        summary = self.summary()
        accelerator = self.accelerator
        state_dict = None
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            # Sharded parameters: gather the full state (a collective, so every process calls it).
            gathered = accelerator.get_state_dict(self.objective)
            state_dict = {key.removeprefix("model."): value for key, value in gathered.items()}
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(self.objective).model
            export_model(model, self.output_dir, summary=summary, recipe=self.recipe, state_dict=state_dict)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return summary


def _quiet_logging_on_this_process() -> None:
    """Keep only errors from mgm2fp on a process other than the main one, so each message appears once."""
    logging.getLogger("mgm2fp").setLevel(logging.ERROR)


def _count(source: Any) -> int | None:
    return len(source) if isinstance(source, SequenceArray) else source.limit


def latest_checkpoint(output_dir: Path) -> Path | None:
    """Return the newest complete ``step-*`` checkpoint under ``output_dir``, or None."""
    folders = sorted(folder for folder in (output_dir / CHECKPOINTS_DIR).glob("step-*") if (folder / TRAINER_STATE).is_file())
    return folders[-1] if folders else None


def prepare_output(output_dir: Path, *, resume: bool | str | Path, overwrite: bool) -> Path | None:
    """Check the output folder against ``resume``/``overwrite``; return the checkpoint to resume from.

    Raises:
        OutputExistsError: when the folder contains an earlier run and neither resume nor overwrite is set.
        ConfigError: when resuming finds no checkpoint.
    """
    if resume not in (False, None):
        checkpoint = latest_checkpoint(output_dir) if resume is True else Path(resume)
        if checkpoint is None or not checkpoint.is_dir():
            raise ConfigError(f"no checkpoint to resume from in '{output_dir / CHECKPOINTS_DIR}'; run without --resume to start fresh")
        return checkpoint
    used = output_dir.exists() and any(output_dir.iterdir())
    if used and not overwrite:
        raise OutputExistsError(f"output '{output_dir}' already contains files; pass --resume to continue its run, --overwrite to start over, or choose another folder")
    if used and overwrite:
        check_replaceable(output_dir)
        shutil.rmtree(output_dir)
    return None


def process_state() -> Any:
    """accelerate's ``PartialState`` of this process, honouring ``ACCELERATE_USE_CPU`` as ``Accelerator`` does.

    A plain ``PartialState()`` created before the ``Accelerator`` ignores that variable and would
    leave every process of a CPU run thinking it is alone.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def finetune(
    model: MaskedGenerativeModel | str | Path,
    data: Any,
    *,
    output_dir: str | Path,
    recipe: str | Path | dict[str, Any] | Recipe | None = None,
    teacher: MaskedGenerativeModel | str | None = None,
    tokenizer: Any = None,
    validation_data: Any = None,
    resume: bool | str | Path = False,
    overwrite: bool = False,
    accelerator: Any = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune a fixed-point model (or train a plain MGM) on ``data`` and save the result in ``output_dir``.

    ``model`` is a loaded model or a source for :func:`mgm2fp.load`. ``recipe`` is a YAML file, a
    shipped recipe name, a dict or a :class:`Recipe`; keyword ``overrides`` replace its fields
    (``max_steps=100``). Run the calling script with ``accelerate launch`` for several GPUs or
    nodes. ``resume`` (True for the latest checkpoint in ``output_dir``, or a checkpoint folder)
    continues at the exact step. ``progress(step, max_steps, record)`` is called on the main
    process after every step.

    Returns:
        A :class:`FinetuneResult`; the model is saved in ``output_dir`` (loadable with
        :func:`mgm2fp.load`) with ``recipe.yaml``, ``metrics.jsonl`` and ``checkpoints/``.

    Raises:
        ConfigError: for invalid recipe values or data.
        OutputExistsError: when ``output_dir`` contains another run and neither resume nor overwrite is set.
    """
    from mgm2fp.loading import load

    resolved = load_recipe(recipe, **overrides)
    output = Path(output_dir).expanduser().absolute()
    checkpoint = None
    state = process_state()
    if state.is_main_process:
        checkpoint = prepare_output(output, resume=resume, overwrite=overwrite)
    state.wait_for_everyone()
    if resume not in (False, None) and checkpoint is None:
        checkpoint = latest_checkpoint(output) if resume is True else Path(resume)
    output.mkdir(parents=True, exist_ok=True)

    loaded = model if isinstance(model, MaskedGenerativeModel) else load(model)
    loaded.train()
    trainer = Trainer(loaded, data, recipe=resolved, output_dir=output, teacher=teacher, tokenizer=tokenizer, validation_data=validation_data, accelerator=accelerator, progress=progress)
    if checkpoint is not None:
        trainer.resume(checkpoint)
        trainer._truncate_metrics()
    trainer.train()
    summary = trainer.export()
    return FinetuneResult(output_dir=output, steps=trainer.step, final_losses=trainer.last_losses, validation_perplexity=trainer.last_validation, summary=summary)
