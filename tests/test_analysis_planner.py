"""The layer planner: planted group boundaries, the MDLM-owt mapping, options and invalid input."""

from __future__ import annotations

import pytest
import torch

from mgm2fp.analysis.cka import StreamingCKA
from mgm2fp.analysis.planner import group_statistics, propose_plan, split_scores
from mgm2fp.errors import ConfigError, LayerPlanError
from mgm2fp.layer_plan import LayerPlan


def _two_group_matrix(n: int, boundary: int, *, early: float, late: float, cross: float) -> torch.Tensor:
    matrix = torch.full((n, n), cross, dtype=torch.float64)
    matrix[:boundary, :boundary] = early
    matrix[boundary:, boundary:] = late
    matrix.fill_diagonal_(1.0)
    return matrix


def _planted_activations(num_blocks: int, boundary: int, *, tokens: int = 600, dim: int = 12, seed: int = 0) -> list[torch.Tensor]:
    """Block outputs whose early blocks are noisy rotations of one latent, late blocks of another.

    The late group is less noisy, so it is the tighter one.
    """
    generator = torch.Generator().manual_seed(seed)
    latents = [torch.randn(tokens, dim, generator=generator) for _ in range(2)]
    blocks = []
    for index in range(num_blocks):
        group = 0 if index < boundary else 1
        noise = 0.6 if group == 0 else 0.15
        rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        scale = 1.0 + index  # isotropic growth of the residual stream does not change CKA
        blocks.append(scale * (latents[group] @ rotation + noise * torch.randn(tokens, dim, generator=generator)))
    return blocks


def _streamed_cka(blocks: list[torch.Tensor], batch: int = 128) -> torch.Tensor:
    estimator = StreamingCKA(len(blocks), blocks[0].shape[1])
    for start in range(0, blocks[0].shape[0], batch):
        estimator.update([block[start : start + batch] for block in blocks])
    return estimator.cka_matrix()


@pytest.mark.parametrize("boundary", [2, 3, 5, 6])
def test_planted_boundary_found(boundary):
    cka = _streamed_cka(_planted_activations(8, boundary, seed=boundary))
    proposal = propose_plan(cka)
    assert proposal.boundary == boundary
    assert proposal.scores["lowest_consecutive_cka"]["blocks"] == [boundary - 1, boundary]
    assert proposal.plan.pre == (0,)
    assert proposal.plan.fixed_point == tuple(range(boundary, 7))
    assert proposal.plan.post == (7,)
    assert proposal.scores["boundary"]["mean_cross_cka"] < 0.2


def test_mdlm_owt_summary_gives_paper_mapping():
    # Group means reported for MDLM-owt in arXiv 2605.31215: blocks 0-4 at 0.808, 5-11 at 0.998, across 0.060.
    cka = _two_group_matrix(12, 5, early=0.808, late=0.998, cross=0.060)
    proposal = propose_plan(cka, num_pre=1, num_post=1)
    plan = proposal.plan
    assert proposal.boundary == 5
    assert plan.pre == (0,)
    assert plan.fixed_point == tuple(range(5, 11))
    assert plan.post == (11,)
    assert plan.init_blocks == (5,)
    assert plan.kept_blocks == {0, 5, 11}
    assert proposal.groups[1].mean_cka == pytest.approx(0.998)
    assert any("between blocks 4 and 5" in line for line in proposal.reasoning)


def test_tighter_early_group_chosen():
    cka = _two_group_matrix(8, 4, early=0.97, late=0.6, cross=0.1)
    plan = propose_plan(cka).plan
    assert plan.pre == (0,)
    assert plan.fixed_point == (1, 2, 3)
    assert plan.post == (7,)


def test_fixed_point_group_forced():
    cka = _two_group_matrix(8, 4, early=0.97, late=0.6, cross=0.1)
    assert propose_plan(cka, fixed_point_group="late").plan.fixed_point == (4, 5, 6)
    assert propose_plan(_two_group_matrix(8, 4, early=0.6, late=0.97, cross=0.1), fixed_point_group="early").plan.fixed_point == (1, 2, 3)


def test_num_pre_and_num_post():
    cka = _two_group_matrix(12, 5, early=0.8, late=0.99, cross=0.05)
    plan = propose_plan(cka, num_pre=2, num_post=3).plan
    assert plan.pre == (0, 1)
    assert plan.fixed_point == (5, 6, 7, 8)
    assert plan.post == (9, 10, 11)
    no_ends = propose_plan(cka, num_pre=0, num_post=0).plan
    assert no_ends.pre == ()
    assert no_ends.post == ()
    assert no_ends.fixed_point == tuple(range(5, 12))


def test_pre_blocks_reaching_into_group():
    cka = _two_group_matrix(8, 2, early=0.8, late=0.99, cross=0.05)
    plan = propose_plan(cka, num_pre=4).plan
    assert plan.pre == (0, 1, 2, 3)
    assert plan.fixed_point == (4, 5, 6)


def test_empty_fixed_point_range_rejected():
    cka = _two_group_matrix(8, 6, early=0.8, late=0.99, cross=0.05)
    with pytest.raises(LayerPlanError, match="--num-post 2"):
        propose_plan(cka, num_post=2)
    with pytest.raises(LayerPlanError, match="leave none"):
        propose_plan(cka, num_pre=4, num_post=4)


def test_central_init_picks_most_similar_block():
    cka = _two_group_matrix(8, 3, early=0.7, late=0.9, cross=0.1)
    cka[5, 3:7] = cka[3:7, 5] = 0.99
    cka[5, 5] = 1.0
    plan = propose_plan(cka, init="central").plan
    assert plan.fixed_point == (3, 4, 5, 6)
    assert plan.init == 5
    assert propose_plan(cka, init="mean").plan.init == "mean"


def test_shallow_model_is_one_group():
    cka = torch.tensor([[1.0, 0.9, 0.8], [0.9, 1.0, 0.95], [0.8, 0.95, 1.0]], dtype=torch.float64)
    proposal = propose_plan(cka)
    assert proposal.boundary is None
    assert proposal.plan.fixed_point == (1,)
    assert "one group" in proposal.reasoning[0]


def test_weak_boundary_flagged():
    distances = torch.arange(8)
    cka = (1.0 - 0.02 * (distances[:, None] - distances[None, :]).abs()).double()  # smooth decay, no groups
    proposal = propose_plan(cka)
    assert any("weak" in line for line in proposal.reasoning)
    strong = propose_plan(_two_group_matrix(8, 4, early=0.9, late=0.99, cross=0.1))
    assert not any("weak" in line for line in strong.reasoning)


def test_split_scores_definition():
    cka = _two_group_matrix(4, 2, early=0.9, late=0.7, cross=0.2)
    scores = split_scores(cka)
    assert list(scores) == [2]
    # Within pairs (0,1) and (2,3): mean 0.8; cross pairs: 0.2.
    assert scores[2] == pytest.approx(0.6)
    assert split_scores(cka, min_group_size=1).keys() == {1, 2, 3}


def test_group_statistics():
    cka = _two_group_matrix(5, 2, early=0.9, late=0.7, cross=0.2)
    group = group_statistics(cka, 1, 3)
    assert group.mean_cka == pytest.approx((0.2 + 0.2 + 0.7) / 3)
    assert group.min_cka == pytest.approx(0.2)
    assert group_statistics(cka, 4, 4).mean_cka == 1.0


def test_proposal_round_trips_through_layer_plan():
    proposal = propose_plan(_two_group_matrix(12, 5, early=0.8, late=0.99, cross=0.05))
    data = proposal.to_dict()
    assert LayerPlan.from_dict(data) == proposal.plan
    assert data["reasoning"] == proposal.reasoning
    assert data["scores"]["split_scores"]["5"] == pytest.approx(proposal.scores["boundary"]["split_score"])


@pytest.mark.parametrize(
    ("cka", "options", "error", "words"),
    [
        (torch.ones(3, 4), {}, ConfigError, "square"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), {}, ConfigError, "NaN"),
        (torch.eye(6), {"fixed_point_group": "middle"}, ConfigError, "'middle'"),
        (torch.eye(6), {"num_pre": -1}, ConfigError, "-1"),
        (torch.eye(6), {"init": "median"}, LayerPlanError, "'median'"),
    ],
    ids=["not square", "nan", "unknown group", "negative pre", "unknown init"],
)
def test_invalid_input_rejected(cka, options, error, words):
    with pytest.raises(error, match=words):
        propose_plan(cka, **options)
