"""Fine-tuning recipes: the one schema that every recipe file, CLI flag and Python override goes through.

A recipe is a YAML file of flat fields (plus an optional ``lora`` section). Defaults follow the
adaptation stage of arXiv 2605.31215 where the paper gives a number: learning rate 2e-4 with
gradient clipping 1.0, teacher temperature 1.5, gap range [0.05, 0.30], S-JFB iteration ranges
U{0..4} without and U{3..6} with gradient, and the 15% validation-perplexity stop rule.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mgm2fp.errors import ConfigError

logger = logging.getLogger(__name__)

# Recipes shipped in the repository's recipes/ folder, found by bare name (``--recipe mdlm-owt-adapt``).
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


class LoraSettings(BaseModel):
    """Low-rank adapters (through peft) on the shared fixed-point block."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator; the update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Optional[list[str]] = Field(None, description="Name suffixes of the Linear layers inside the shared block to adapt [default: every Linear layer].")
    iteration_ranges: Optional[list[tuple[int, Optional[int]]]] = Field(
        None,
        description="One adapter per range of fixed-point iterations, as [first, last] 0-indexed inclusive pairs (last null: to the end) [default: one adapter for all iterations].",
    )
    merge_on_save: bool = Field(True, description="Merge the adapter into the shared block when saving (single adapter only).")

    @field_validator("iteration_ranges")
    @classmethod
    def _check_ranges(cls, ranges: Optional[list[tuple[int, Optional[int]]]]) -> Optional[list[tuple[int, Optional[int]]]]:
        if ranges is None:
            return None
        if not ranges:
            raise ValueError("iteration_ranges is empty; give at least one [first, last] pair or leave it out")
        expected_first = 0
        for index, (first, last) in enumerate(ranges):
            if first != expected_first:
                raise ValueError(f"iteration range {index} starts at {first} but must start at {expected_first}, so that the ranges cover every iteration without gaps")
            if last is not None and last < first:
                raise ValueError(f"iteration range [{first}, {last}] is reversed; write [first, last] with first <= last")
            if last is None and index != len(ranges) - 1:
                raise ValueError(f"iteration range {index} is open-ended (last null) but is not the last range")
            expected_first = (last + 1) if last is not None else expected_first
        if ranges[-1][1] is not None:
            raise ValueError(f"the last iteration range [{ranges[-1][0]}, {ranges[-1][1]}] must be open-ended ([first, null]) so that every iteration has an adapter")
        return ranges


class Recipe(BaseModel):
    """Every setting of a fine-tuning run. Field descriptions double as CLI help."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Optional[str] = Field(None, description="Recipe name, recorded in the saved model.")
    seed: int = Field(0, ge=0, description="Seed of weights' dropout, masks, times and data order.")

    # Optimisation
    max_steps: int = Field(1000, ge=1, description="Optimizer steps to train for.")
    batch_size: int = Field(8, ge=1, description="Sequences per process per micro-step; the global batch is batch_size x processes x gradient_accumulation_steps.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-steps accumulated per optimizer step.")
    seq_len: Optional[int] = Field(None, ge=2, description="Tokens per training sequence [default: the model's model_length].")
    learning_rate: float = Field(2e-4, gt=0, description="Peak AdamW learning rate (2e-4 with clipping 1.0 in arXiv 2605.31215; 3e-4 diverged).")
    min_learning_rate_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate of the cosine decay as a fraction of the peak.")
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="Learning-rate shape after the linear warm-up.")
    warmup_steps: int = Field(500, ge=0, description="Steps of linear learning-rate warm-up from 0.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Gradient clipping norm (null: no clipping).")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="Mixed precision through accelerate: no, bf16 or fp16 (fp16 needs a GPU).")

    # Objective
    noise_eps: float = Field(1e-3, gt=0, lt=1, description="eps of the log-linear noise schedule (move chance (1 - eps) t).")
    antithetic: bool = Field(True, description="Antithetic (evenly spread) sampling of diffusion times.")
    no_grad_iterations: tuple[int, int] = Field((0, 4), description="S-JFB: inclusive range of fixed-point iterations run without gradient.")
    grad_iterations: tuple[int, int] = Field((3, 6), description="S-JFB: inclusive range of fixed-point iterations run with gradient.")
    gap: tuple[float, float] = Field((0.05, 0.30), description="Range of the time gap between the student and the cleaner input of the nested masks.")
    distill_weight: float = Field(0.0, ge=0, description="Final weight of the KL to the frozen teacher (0.1 in arXiv 2605.31215's adaptation).")
    distill_warmup_steps: int = Field(0, ge=0, description="Steps over which the KL weight rises linearly from 0.")
    distill_temperature: float = Field(1.5, gt=0, description="Softmax temperature tau of the KL term (the loss is scaled by tau^2).")
    consistency_weight: float = Field(0.0, ge=0, description="Final weight of the cross-step consistency MSE (0.1 in arXiv 2605.31215).")
    consistency_warmup_steps: int = Field(0, ge=0, description="Steps over which the consistency weight rises linearly from 0.")
    consistency_reduction: Literal["mean", "sum"] = Field("mean", description="Over the hidden size: mean (MSE) or sum (squared norm, hidden-size times larger) of the squared difference.")

    # Data
    text_column: str = Field("text", description="Column holding the text of a Hugging Face dataset.")
    dataset_split: str = Field("train", description="Split of a Hugging Face dataset to train on.")
    dataset_config: Optional[str] = Field(None, description="Configuration name of a Hugging Face dataset.")
    streaming: bool = Field(False, description="Read and tokenise the data lazily instead of loading it all into memory.")
    line_documents: bool = Field(False, description="Treat every non-empty line of a text file as a document [default: one document per file].")
    token_dtype: Literal["uint16", "uint32", "int32", "int64"] = Field("uint16", description="Element type of a raw .bin token file.")
    shuffle: bool = Field(True, description="Shuffle the sequences each epoch (in-memory and .bin data; streamed data keeps its order).")
    tokenizer: Optional[str] = Field(None, description="Tokenizer folder or hub id for text data [default: the model's].")
    teacher: Optional[str] = Field(None, description="Frozen teacher for the KL term [default: the fixed-point model's recorded source].")

    # Validation
    validation_data: Optional[str] = Field(None, description="Validation data (same forms as the training data) [default: the last validation_sequences sequences of the training data].")
    validation_sequences: int = Field(64, ge=0, description="Sequences used for validation perplexity (0: no validation).")
    eval_every: Optional[int] = Field(None, ge=1, description="Steps between validations [default: save_every].")
    eval_num_iterations: Optional[int] = Field(None, ge=1, description="Fixed-point iterations used for validation [default: the model's].")
    stop_rule: bool = Field(False, description="Keep the last checkpoint whose validation perplexity is within stop_rule_tolerance of its value before training (arXiv 2605.31215's consistency stage).")
    stop_rule_tolerance: float = Field(0.15, gt=0, description="Allowed relative rise of validation perplexity under the stop rule.")
    entropy_samples: int = Field(0, ge=0, description="Samples drawn at each validation to report their unigram entropy (needs mgm2fp.sample).")
    entropy_budget: Optional[int] = Field(None, ge=1, description="Block forward passes per entropy sample [default: 16 denoising steps at the model's cost].")

    # Logging and checkpoints
    log_every: int = Field(10, ge=1, description="Steps between metrics.jsonl lines and tracker logs.")
    save_every: int = Field(1000, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: Optional[int] = Field(2, ge=1, description="Most recent checkpoints kept on disk (null: keep all; the stop rule's kept checkpoint is never deleted).")
    trackers: list[str] = Field(default_factory=list, description="accelerate trackers to log to (tensorboard, wandb, ...).")

    lora: Optional[LoraSettings] = Field(None, description="Low-rank adapters on the shared block instead of full fine-tuning.")

    @field_validator("no_grad_iterations", "grad_iterations")
    @classmethod
    def _check_iteration_range(cls, value: tuple[int, int], info: Any) -> tuple[int, int]:
        low, high = value
        smallest = 1 if info.field_name == "grad_iterations" else 0
        if low < smallest:
            raise ValueError(f"{info.field_name} [{low}, {high}] starts below {smallest}; give a range of at least {smallest}")
        if high < low:
            raise ValueError(f"{info.field_name} [{low}, {high}] is reversed; write [min, max]")
        return value

    @field_validator("gap")
    @classmethod
    def _check_gap(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low <= high <= 1:
            raise ValueError(f"gap [{low}, {high}] must satisfy 0 <= min <= max <= 1")
        return value

    @field_validator("trackers")
    @classmethod
    def _check_trackers(cls, value: list[str]) -> list[str]:
        known = {"tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio", "all"}
        unknown = [name for name in value if name not in known]
        if unknown:
            raise ValueError(f"unknown tracker {', '.join(unknown)}; accelerate knows {', '.join(sorted(known))}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> "Recipe":
        if self.stop_rule and self.validation_sequences == 0:
            raise ValueError("stop_rule needs validation; set validation_sequences above 0")
        return self

    @property
    def uses_nested_masks(self) -> bool:
        """True when a term needs the cleaner input (the KL or the consistency loss)."""
        return self.distill_weight > 0 or self.consistency_weight > 0

    @property
    def resolved_eval_every(self) -> int:
        return self.eval_every or self.save_every


def field_names() -> list[str]:
    """Names of every recipe field."""
    return list(Recipe.model_fields)


def _format_validation_error(error: ValidationError, origin: str) -> str:
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "recipe"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown field; known fields: {', '.join(field_names())}"
        value = item.get("input")
        shown = f" (got {value!r})" if item["type"] != "extra_forbidden" and not isinstance(value, dict) else ""
        problems.append(f"{location}: {message}{shown}")
    return f"invalid recipe {origin}: " + "; ".join(problems)


def resolve_recipe_path(recipe: str | Path) -> Path:
    """Return the file of ``recipe``: a path, or the name of a recipe shipped in ``recipes/``.

    Raises:
        ConfigError: when neither exists.
    """
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    shipped = RECIPES_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    available = sorted(file.stem for file in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    raise ConfigError(f"recipe '{recipe}' not found; give a YAML file path" + (f" or one of: {', '.join(available)}" if available else ""))


def load_recipe(recipe: str | Path | dict[str, Any] | Recipe | None = None, **overrides: Any) -> Recipe:
    """Build a validated :class:`Recipe` from a YAML file, a dict or a Recipe, then apply ``overrides``.

    Overrides whose value is None are ignored, so CLI flags that were not given keep the recipe's
    value. A recipe read from a file without a ``name`` takes the file's stem.

    Raises:
        ConfigError: for a missing file, malformed YAML, an unknown field or an invalid value; the
            message names the field, the value and the rule.
    """
    origin = "overrides"
    data: dict[str, Any] = {}
    if isinstance(recipe, Recipe):
        data = recipe.model_dump()
        origin = f"'{recipe.name}'" if recipe.name else "object"
    elif isinstance(recipe, dict):
        data = dict(recipe)
        origin = "dict"
    elif recipe is not None:
        path = resolve_recipe_path(recipe)
        origin = f"'{path}'"
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            detail = " ".join(str(error).split())
            raise ConfigError(f"recipe '{path}' is not valid YAML ({detail}); fix the file") from error
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe '{path}' must be a mapping of field: value, got {type(loaded).__name__}")
        data = loaded
        data.setdefault("name", path.stem)
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, origin)) from None


def recipe_to_yaml(recipe: Recipe) -> str:
    """Return the resolved recipe as YAML (every field, defaults included), for ``recipe.yaml`` beside the weights."""
    data = recipe.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)
