"""Quality against compute: sample a text model at several budgets and score each set of samples.

For each budget (total transformer-block forward passes of a sampling trajectory), the samples are
drawn with :func:`mgm2fp.sample`, decoded, and scored with an evaluator language model
(generative perplexity) and by unigram entropy, as in the evaluation of arXiv 2605.31215.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mgm2fp.errors import ConfigError
from mgm2fp.evaluation.text import Evaluator, unigram_entropy

logger = logging.getLogger(__name__)


@dataclass
class BudgetResult:
    """Scores of the samples drawn at one budget."""

    budget: int
    gen_ppl: float
    entropy: float
    block_forward_passes: int
    tokens_per_second: float
    seconds: float
    num_steps: int
    iterations: list[int]
    num_samples: int
    seq_len: int
    reuse: str
    schedule: str
    seed: int
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_budgets(text: str | Sequence[int]) -> list[int]:
    """Parse ``"24,48,96"`` into ``[24, 48, 96]``.

    Raises:
        ConfigError: for a malformed or non-positive budget.
    """
    if not isinstance(text, str):
        budgets = [int(value) for value in text]
    else:
        try:
            budgets = [int(part) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise ConfigError(f"invalid budgets '{text}'; give comma-separated block forward passes such as 24,48,96") from error
    if not budgets or any(budget <= 0 for budget in budgets):
        raise ConfigError(f"invalid budgets '{text}'; every budget must be a positive number of block forward passes")
    return budgets


def evaluate_budgets(
    model: Any,
    evaluator: Evaluator,
    *,
    budgets: Sequence[int],
    num_samples: int,
    seq_len: int,
    reuse: str = "3sr",
    schedule: str = "decreasing",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    num_examples: int = 2,
    tokenizer: Any = None,
    on_budget: Callable[[BudgetResult], None] | None = None,
    **sample_options: Any,
) -> list[BudgetResult]:
    """Sample ``model`` at each budget and score the samples with ``evaluator``.

    ``batch_size`` splits ``num_samples`` into several sampling calls (each with its own seed
    offset), which bounds memory. ``tokenizer`` decodes the samples (default: the model's own). Returns one :class:`BudgetResult` per budget, in order.
    """
    from mgm2fp.sampling import sample
    from mgm2fp.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(model, tokenizer, required=True)
    batch_size = batch_size or num_samples
    results = []
    for budget in budgets:
        texts, entropies, spent, seconds = [], [], 0, 0.0
        last = None
        for offset, start in enumerate(range(0, num_samples, batch_size)):
            count = min(batch_size, num_samples - start)
            last = sample(model, num_samples=count, seq_len=seq_len, budget=budget, steps=steps, schedule=schedule, reuse=reuse, seed=seed + offset, **sample_options)
            texts.extend(tokenizer.batch_decode(last.tokens.tolist(), skip_special_tokens=True))
            entropies.extend(unigram_entropy(last.tokens).tolist())
            spent = max(spent, last.block_forward_passes)
            seconds += last.seconds
        result = BudgetResult(
            budget=budget,
            gen_ppl=evaluator.perplexity(texts),
            entropy=sum(entropies) / len(entropies),
            block_forward_passes=spent,
            tokens_per_second=num_samples * seq_len / seconds if seconds > 0 else math.inf,
            seconds=seconds,
            num_steps=last.num_steps,
            iterations=list(last.iterations or []),
            num_samples=num_samples,
            seq_len=seq_len,
            reuse=reuse,
            schedule=schedule,
            seed=seed,
            examples=texts[:num_examples],
        )
        logger.info("budget %d: gen ppl %.2f, entropy %.3f", budget, result.gen_ppl, result.entropy)
        if on_budget is not None:
            on_budget(result)
        results.append(result)
    return results
