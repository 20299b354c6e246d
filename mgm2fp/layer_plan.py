"""Layer plans: which source blocks become pre blocks, the fixed-point block and post blocks.

Ranges are 0-indexed and inclusive. ``share_layers="A-B"`` means pre = 0..A-1, fixed point =
A..B, post = B+1..last. The explicit form names each part (``pre_layers="0"``,
``fixed_point_layers="5"``, ``post_layers="11"`` is the mapping of arXiv 2605.31215 for a
12-block MDLM); blocks outside the three parts are dropped.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from mgm2fp.errors import LayerPlanError

INIT_CHOICES = ("first", "middle", "last", "mean")
# Named plans: preset name -> (pre blocks, post blocks). The blocks between them form the
# fixed-point range. "fp-maskgit" is FP-MaskGIT of arXiv 2605.31215: 4 pre, one shared block
# and 4 post blocks (the paper converts the 24-block MaskGIT-Large; 1/1, 2/2 and 3/3 did worse).
PRESETS: dict[str, tuple[int, int]] = {"fp-maskgit": (4, 4)}
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class LayerPlan:
    """Source block indices of each part, and how the shared block is initialised."""

    pre: tuple[int, ...]
    fixed_point: tuple[int, ...]
    post: tuple[int, ...]
    num_source_blocks: int
    init: str | int = "first"

    def __post_init__(self) -> None:
        validate_plan(self)

    @property
    def init_blocks(self) -> tuple[int, ...]:
        """Source blocks whose weights initialise the shared block (several for ``mean``)."""
        blocks = self.fixed_point
        if isinstance(self.init, int):
            return (self.init,)
        if self.init == "first":
            return (blocks[0],)
        if self.init == "last":
            return (blocks[-1],)
        if self.init == "middle":
            return (blocks[(len(blocks) - 1) // 2],)
        return tuple(blocks)

    @property
    def kept_blocks(self) -> set[int]:
        return set(self.pre) | set(self.init_blocks) | set(self.post)

    def describe(self) -> str:
        return f"pre {format_range(self.pre)} | fixed point {format_range(self.fixed_point)} (init {self.init}) | post {format_range(self.post)}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("pre", "fixed_point", "post"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerPlan":
        return cls(
            pre=tuple(data["pre"]),
            fixed_point=tuple(data["fixed_point"]),
            post=tuple(data["post"]),
            num_source_blocks=int(data["num_source_blocks"]),
            init=data.get("init", "first"),
        )


def parse_layers(text: str | int | None, *, name: str, num_blocks: int) -> tuple[int, ...]:
    """Parse ``"5"``, ``"4-9"``, ``"0,2-3"`` or ``""`` (none) into sorted block indices.

    Raises:
        LayerPlanError: for malformed, reversed, duplicated or out-of-range ranges.
    """
    if text is None:
        return ()
    if isinstance(text, int):
        text = str(text)
    if isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(value, int) for value in text):
        text = f"{text[0]}-{text[1]}"  # an inclusive (start, end) pair
    if not isinstance(text, str):
        raise LayerPlanError(f"invalid {name} {text!r}; write a block index or an inclusive range such as '4-9' (0-indexed)")
    text = text.strip()
    if text in ("", "none"):
        return ()
    indices: list[int] = []
    for part in text.split(","):
        match = _RANGE.match(part)
        if not match:
            raise LayerPlanError(f"invalid {name} '{text}'; write a block index or an inclusive range such as 4-9 (0-indexed)")
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        if end < start:
            raise LayerPlanError(f"reversed range '{part.strip()}' in {name}; write it as {end}-{start}")
        if end >= num_blocks:
            raise LayerPlanError(f"{name} '{text}' is out of range: the model has {num_blocks} blocks, numbered 0-{num_blocks - 1}")
        indices.extend(range(start, end + 1))
    if len(set(indices)) != len(indices):
        raise LayerPlanError(f"{name} '{text}' names a block twice")
    return tuple(sorted(indices))


def format_range(indices: tuple[int, ...] | list[int]) -> str:
    """Format ``(0, 1, 2, 5)`` as ``"0-2,5"`` (``"-"`` when empty)."""
    if not indices:
        return "-"
    parts, start, previous = [], indices[0], indices[0]
    for index in list(indices[1:]) + [None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ",".join(parts)


def parse_init(init: str | int) -> str | int:
    if isinstance(init, int):
        return init
    text = str(init).strip().lower()
    if text.isdigit():
        return int(text)
    if text not in INIT_CHOICES:
        raise LayerPlanError(f"unknown init '{init}'; use one of {', '.join(INIT_CHOICES)} or a block index")
    return text


def validate_plan(plan: LayerPlan) -> None:
    if not plan.fixed_point:
        raise LayerPlanError("the fixed-point range is empty; name at least one block, for example --fixed-point-layers 5")
    parts = {"pre": plan.pre, "fixed point": plan.fixed_point, "post": plan.post}
    for name, blocks in parts.items():
        out_of_range = [index for index in blocks if not 0 <= index < plan.num_source_blocks]
        if out_of_range:
            raise LayerPlanError(f"{name} block {out_of_range[0]} is out of range: the model has {plan.num_source_blocks} blocks, numbered 0-{plan.num_source_blocks - 1}")
    if plan.pre and max(plan.pre) >= min(plan.fixed_point):
        raise LayerPlanError(f"pre blocks {format_range(plan.pre)} must all come before the fixed-point blocks {format_range(plan.fixed_point)}")
    if plan.post and min(plan.post) <= max(plan.fixed_point):
        raise LayerPlanError(f"post blocks {format_range(plan.post)} must all come after the fixed-point blocks {format_range(plan.fixed_point)}")
    init = parse_init(plan.init)
    if isinstance(init, int) and not 0 <= init < plan.num_source_blocks:
        raise LayerPlanError(f"init block {init} is out of range: the model has {plan.num_source_blocks} blocks, numbered 0-{plan.num_source_blocks - 1}")
    object.__setattr__(plan, "init", init)


def make_plan(
    num_blocks: int,
    *,
    share_layers: str | None = None,
    pre_layers: str | None = None,
    fixed_point_layers: str | None = None,
    post_layers: str | None = None,
    init: str | int = "first",
    preset: str | None = None,
) -> LayerPlan:
    """Build a :class:`LayerPlan` from ``share_layers``, the explicit three parts or a ``preset``.

    ``preset`` names a plan of :data:`PRESETS`: ``"fp-maskgit"`` keeps the first 4 and the last
    4 blocks and shares the blocks between them.

    Raises:
        LayerPlanError: when several forms or none are given, the preset is unknown or does not
            fit the model, or a range is invalid.
    """
    explicit = [value for value in (pre_layers, fixed_point_layers, post_layers) if value is not None]
    if preset is not None:
        if share_layers is not None or explicit:
            raise LayerPlanError(f"give either preset '{preset}' or a layer range, not both")
        share_layers = preset_share_layers(preset, num_blocks)
    if share_layers is not None and explicit:
        raise LayerPlanError("give either share_layers or the explicit pre/fixed-point/post layers, not both")
    if share_layers is not None:
        shared = parse_layers(share_layers, name="share_layers", num_blocks=num_blocks)
        if not shared:
            raise LayerPlanError(f"share_layers '{share_layers}' is empty; give a range such as 4-9")
        if list(shared) != list(range(shared[0], shared[-1] + 1)):
            raise LayerPlanError(f"share_layers '{share_layers}' must be one contiguous range A-B")
        pre = tuple(range(0, shared[0]))
        post = tuple(range(shared[-1] + 1, num_blocks))
        return LayerPlan(pre=pre, fixed_point=shared, post=post, num_source_blocks=num_blocks, init=parse_init(init))
    if fixed_point_layers is None:
        raise LayerPlanError("no layer plan given; pass share_layers (for example 4-9) or fixed_point_layers with pre_layers and post_layers")
    return LayerPlan(
        pre=parse_layers(pre_layers, name="pre_layers", num_blocks=num_blocks),
        fixed_point=parse_layers(fixed_point_layers, name="fixed_point_layers", num_blocks=num_blocks),
        post=parse_layers(post_layers, name="post_layers", num_blocks=num_blocks),
        num_source_blocks=num_blocks,
        init=parse_init(init),
    )


def preset_share_layers(preset: str, num_blocks: int) -> str:
    """Return the ``share_layers`` range of ``preset`` for a model of ``num_blocks`` blocks.

    Raises:
        LayerPlanError: for an unknown preset or a model too shallow for it.
    """
    if preset not in PRESETS:
        raise LayerPlanError(f"unknown layer plan preset '{preset}'; use one of {', '.join(PRESETS)}")
    num_pre, num_post = PRESETS[preset]
    if num_blocks < num_pre + num_post + 1:
        raise LayerPlanError(f"preset '{preset}' keeps {num_pre} pre and {num_post} post blocks and needs at least {num_pre + num_post + 1} blocks, but the model has {num_blocks}")
    return f"{num_pre}-{num_blocks - num_post - 1}"
