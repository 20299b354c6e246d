"""Quality of generated text: generative perplexity under an evaluator language model, unigram entropy.

Generative perplexity (as in MDLM and arXiv 2605.31215): decode the samples to text, re-tokenise
them with the evaluator's tokenizer, and report ``exp`` of the mean token negative log-likelihood
under the evaluator (GPT-2 Large in the literature, context 1024). Because low-entropy,
repetitive text also gets a low perplexity, the mean unigram entropy of the samples is reported
beside it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mgm2fp.errors import SourceNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_EVALUATOR = "gpt2-large"


def unigram_entropy(tokens: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each sample's empirical token distribution, ``[B]`` from tokens ``[B, L]``.

    Low values flag repetitive samples, which can fake a low generative perplexity.
    """
    if tokens.ndim != 2:
        raise ValueError(f"unigram_entropy expects tokens of shape [B, L], got {tuple(tokens.shape)}")
    entropies = []
    for row in tokens:
        _, counts = torch.unique(row, return_counts=True)
        probabilities = counts.double() / counts.sum()
        entropies.append(-(probabilities * probabilities.log()).sum())
    return torch.stack(entropies).float() if entropies else torch.zeros(0)


@dataclass
class Evaluator:
    """A causal language model and its tokenizer, used to score text."""

    model: Any
    tokenizer: Any
    name: str
    max_length: int = 1024

    @classmethod
    def load(cls, name_or_path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> "Evaluator":
        """Load any Hugging Face causal LM (weights only, never ``trust_remote_code``).

        Raises:
            SourceNotFoundError: when the evaluator is neither a folder nor in the Hugging Face cache.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        # The weight-loading progress bar of transformers would interleave with mgm2fp's own output.
        transformers_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForCausalLM.from_pretrained(name_or_path)
        except OSError as error:
            raise SourceNotFoundError(
                f"evaluator '{name_or_path}' not found locally or in the Hugging Face cache; pass --evaluator with a folder or a downloaded model id ({error.__class__.__name__})"
            ) from error
        model.to(device=device, dtype=dtype or torch.float32).eval()
        context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None) or 1024
        return cls(model=model, tokenizer=tokenizer, name=str(name_or_path), max_length=int(min(context, 1024)))

    @torch.no_grad()
    def token_nlls(self, texts: Sequence[str], *, batch_size: int = 8) -> tuple[float, int]:
        """Return (sum of token negative log-likelihoods, number of scored tokens) over ``texts``.

        Each text is scored in windows of ``max_length`` tokens. When the tokenizer has a BOS
        (or EOS) token, it is prepended so that the first token of each text is scored too.
        """
        device = next(self.model.parameters()).device
        prefix = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        windows: list[list[int]] = []
        for text in texts:
            # Long texts are scored in windows below, so the tokenizer's length warning is off.
            ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            if prefix is not None:
                ids = [prefix, *ids]
            for start in range(0, max(len(ids) - 1, 0), self.max_length - 1):
                window = ids[start : start + self.max_length]
                if len(window) >= 2:
                    windows.append(window)

        total_nll, total_tokens = 0.0, 0
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            width = max(len(window) for window in batch)
            input_ids = torch.zeros(len(batch), width, dtype=torch.long)
            attention = torch.zeros(len(batch), width, dtype=torch.long)
            for row, window in enumerate(batch):
                input_ids[row, : len(window)] = torch.tensor(window)
                attention[row, : len(window)] = 1
            input_ids, attention = input_ids.to(device), attention.to(device)
            logits = self.model(input_ids=input_ids, attention_mask=attention).logits.double()  # [B, T, V]
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = input_ids[:, 1:]
            nll = -log_probs.gather(-1, targets[..., None]).squeeze(-1)  # [B, T-1]
            scored = attention[:, 1:].bool()
            total_nll += float(nll[scored].sum())
            total_tokens += int(scored.sum())
        return total_nll, total_tokens

    def perplexity(self, texts: Sequence[str], *, batch_size: int = 8) -> float:
        """``exp`` of the mean token negative log-likelihood of ``texts`` (``nan`` for no tokens)."""
        total_nll, total_tokens = self.token_nlls(texts, batch_size=batch_size)
        return math.exp(total_nll / total_tokens) if total_tokens else float("nan")
