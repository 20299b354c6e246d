"""Model cards for saved fixed-point models, built with huggingface_hub's ``ModelCard``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from huggingface_hub.repocard_data import ModelCardData

from mgm2fp.layer_plan import LayerPlan, format_range

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

logger = logging.getLogger(__name__)

PAPER = "arXiv 2605.31215"
FAMILY_TAGS = {
    "mdlm": ["masked-diffusion", "text-diffusion", "mdlm"],
    "halton-maskgit": ["maskgit", "image-generation", "halton-maskgit"],
    "maskgit-v1": ["maskgit", "image-generation"],
}
PIPELINE_TAGS = {"mdlm": "text-generation", "halton-maskgit": "unconditional-image-generation", "maskgit-v1": "unconditional-image-generation"}


def card_data(config: dict[str, Any]) -> ModelCardData:
    """Return the card metadata (YAML header) of a saved fixed-point model's ``config``."""
    family = config.get("family", "")
    source = config.get("source") or {}
    tags = ["mgm2fp", "fixed-point", "masked-generative-model", *FAMILY_TAGS.get(family, [family])]
    data = ModelCardData(library_name="mgm2fp", tags=tags, pipeline_tag=PIPELINE_TAGS.get(family))
    if source.get("id") and "/" in str(source["id"]) and not str(source["id"]).startswith(("/", ".")):
        data.base_model = source["id"]
    return data


def conversion_section(config: dict[str, Any]) -> str:
    plan = LayerPlan.from_dict(config["layer_plan"])
    source = config.get("source") or {}
    before = source.get("num_parameters")
    after = config.get("num_parameters")
    change = f" ({100 * (after - before) / before:+.1f}%)" if before and after else ""
    k_pre, k_fp, k_post = len(plan.pre), 1, len(plan.post)
    iterations = config.get("num_iterations")
    return "\n".join(
        [
            "## Conversion",
            "",
            f"| | |",
            f"|---|---|",
            f"| source | `{source.get('id')}`" + (f" at revision `{source['revision']}`" if source.get("revision") else "") + " |",
            f"| family | {config.get('family')} |",
            f"| pre blocks | {format_range(plan.pre)} |",
            f"| fixed-point range | {format_range(plan.fixed_point)} (shared block initialised from: {plan.init}) |",
            f"| post blocks | {format_range(plan.post)} |",
            f"| injection | {config.get('injection')} |",
            f"| default iterations per step | {iterations} |",
            f"| block forward passes per step | {k_pre} + N x {k_fp} + {k_post} (default {k_pre + (iterations or 0) * k_fp + k_post}) |",
            f"| parameters | {before:,} -> {after:,}{change} |" if before and after else f"| parameters | {after} |",
            "",
        ]
    )


def usage_section(config: dict[str, Any]) -> str:
    return "\n".join(
        [
            "## Usage",
            "",
            "```bash",
            "pip install mgm2fp",
            "mgm2fp sample PATH_OR_REPO --budget 96 --num-samples 4 --seq-len 128 --output samples.jsonl",
            "```",
            "",
            "```python",
            "import mgm2fp",
            "",
            'model = mgm2fp.load("PATH_OR_REPO")',
            "result = mgm2fp.sample(model, num_samples=4, seq_len=128, budget=96)",
            "```",
            "",
        ]
    )


def render_model_card(config: dict[str, Any], *, sections: list[str] | None = None) -> str:
    """Return the model card text (YAML metadata header and markdown) of a saved fixed-point model.

    ``sections`` are extra markdown sections (fine-tuning summary, evaluation) appended in order.
    """
    source_id = (config.get("source") or {}).get("id") or "a masked generative model"
    header = "\n".join(
        [
            f"# Fixed-point conversion of {source_id}",
            "",
            "A fixed-point masked generative model made with mgm2fp: a range of",
            "transformer blocks of the source model became one weight-shared block that is iterated to a fixed",
            f"point at sampling time, following Fixed-Point Masked Generative Modeling ({PAPER}).",
            "",
        ]
    )
    body = "\n".join([header, conversion_section(config), *(sections or []), usage_section(config)])
    return f"---\n{card_data(config).to_yaml()}\n---\n\n{body}"


def build_model_card(config: dict[str, Any], *, sections: list[str] | None = None) -> "ModelCard":
    """Return :func:`render_model_card` as a ``huggingface_hub.ModelCard`` (validated metadata)."""
    # Imported here: huggingface_hub.repocard costs about 0.2 s of start-up, which saving avoids.
    from huggingface_hub import ModelCard

    return ModelCard(render_model_card(config, sections=sections))
