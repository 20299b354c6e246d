"""Linear CKA: its invariances, and the streaming and sampled estimators against the direct formula."""

from __future__ import annotations

import pytest
import torch

from mgm2fp.analysis.cka import SampledCKA, StreamingCKA, linear_cka, sampled_memory_bytes, streaming_memory_bytes


def _random(tokens: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(tokens, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _orthogonal(dim: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(_random(dim, dim, seed))
    return q


def test_identical_features_give_one():
    x = _random(200, 16, 0)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_independent_features_near_zero():
    # For independent Gaussian features, CKA is about D / (T + D) = 0.004 here.
    x, y = _random(4000, 16, 1), _random(4000, 16, 2)
    assert linear_cka(x, y).item() < 0.02


def test_orthogonal_transform_invariance():
    x, z = _random(300, 12, 3), _random(300, 12, 4) + 0.5 * _random(300, 12, 3)
    q = _orthogonal(12, 5)
    assert linear_cka(x, x @ q).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x @ q, z).item() == pytest.approx(linear_cka(x, z).item(), abs=1e-12)


def test_isotropic_scaling_invariance():
    x, z = _random(300, 12, 6), _random(300, 12, 7) + _random(300, 12, 6)
    assert linear_cka(3.7 * x, z).item() == pytest.approx(linear_cka(x, z).item(), abs=1e-12)
    assert linear_cka(x, 1e-3 * x).item() == pytest.approx(1.0, abs=1e-12)


def test_anisotropic_scaling_changes_value():
    # Linear CKA is not invariant to arbitrary invertible maps; a check that would pass for CCA fails here.
    x = _random(300, 12, 8)
    scale = torch.ones(12, dtype=torch.float64)
    scale[0] = 50.0
    assert linear_cka(x, x * scale).item() < 0.5


def test_mean_shift_invariance():
    x, z = _random(300, 12, 9), _random(300, 12, 10) + _random(300, 12, 9)
    assert linear_cka(x + 100.0, z - 7.0).item() == pytest.approx(linear_cka(x, z).item(), abs=1e-10)


def test_rejects_mismatched_token_counts():
    with pytest.raises(ValueError, match="same T"):
        linear_cka(_random(10, 4, 0), _random(11, 4, 0))


def _block_features(num_blocks: int, tokens: int, dim: int, seed: int) -> list[torch.Tensor]:
    """Correlated blocks with a large mean offset, as residual streams often have."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, dim, generator=generator, dtype=torch.float64)
    blocks = []
    for index in range(num_blocks):
        mixed = base @ torch.randn(dim, dim, generator=generator, dtype=torch.float64) * 0.3 + torch.randn(tokens, dim, generator=generator, dtype=torch.float64) * index
        blocks.append(mixed + 500.0 + 10.0 * torch.randn(dim, generator=generator, dtype=torch.float64))
    return blocks


def _direct_matrix(blocks: list[torch.Tensor]) -> torch.Tensor:
    n = len(blocks)
    return torch.tensor([[linear_cka(blocks[i], blocks[j]).item() for j in range(n)] for i in range(n)], dtype=torch.float64)


def _feed(estimator, blocks: list[torch.Tensor], sizes: list[int]) -> None:
    start = 0
    for size in sizes:
        estimator.update([block[start : start + size] for block in blocks])
        start += size


@pytest.mark.parametrize("sizes", [[120], [7, 50, 1, 62], [40, 40, 40]], ids=["one batch", "uneven batches", "even batches"])
def test_streaming_matches_direct(sizes):
    blocks = _block_features(4, 120, 8, seed=11)
    streaming = StreamingCKA(4, 8)
    _feed(streaming, blocks, sizes)
    expected = _direct_matrix(blocks)
    assert streaming.num_tokens == 120
    assert torch.allclose(streaming.cka_matrix(), expected, atol=1e-10, rtol=0)
    assert 0.05 < expected[0, 3] < 0.95  # the blocks are neither identical nor unrelated


def test_streaming_float32_products_close():
    blocks = _block_features(3, 200, 8, seed=12)
    streaming = StreamingCKA(3, 8, matmul_dtype=torch.float32)
    _feed(streaming, [block.float() for block in blocks], [64, 64, 72])
    assert torch.allclose(streaming.cka_matrix(), _direct_matrix(blocks), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("tokens", "dim"), [(30, 40), (90, 6)], ids=["fewer tokens than features", "more tokens than features"])
def test_sampled_matches_direct(tokens, dim):
    blocks = _block_features(3, tokens, dim, seed=13)
    sampled = SampledCKA(3, dim)
    _feed(sampled, blocks, [tokens // 3, tokens - tokens // 3])
    # Stored in float32, so the agreement is to float32 precision of the centred data.
    assert torch.allclose(sampled.cka_matrix(), _direct_matrix([block.float() for block in blocks]), atol=1e-5, rtol=0)


def test_constant_block_gives_nan():
    blocks = [_random(20, 4, 0), torch.ones(20, 4, dtype=torch.float64)]
    streaming = StreamingCKA(2, 4)
    streaming.update(blocks)
    matrix = streaming.cka_matrix()
    assert matrix[0, 0].item() == pytest.approx(1.0)
    assert torch.isnan(matrix[1, 1])


def test_estimators_reject_wrong_shapes():
    streaming = StreamingCKA(2, 4)
    with pytest.raises(ValueError, match="features of 2 blocks"):
        streaming.update([_random(5, 4, 0)])
    with pytest.raises(ValueError, match=r"\[T, 4\]"):
        streaming.update([_random(5, 4, 0), _random(6, 4, 0)])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        streaming.cka_matrix()


def test_memory_formulas():
    # MDLM-owt: 12 blocks of width 768 -> 78 pair matrices of 768 x 768 in float64.
    assert streaming_memory_bytes(12, 768) == (78 * 768 * 768 + 12 * 768) * 8
    assert StreamingCKA(3, 5).products.numel() * 8 + 3 * 5 * 8 == streaming_memory_bytes(3, 5)
    assert sampled_memory_bytes(2, 10, 4) == 2 * 4 * 10 * 4 + 2 * 4 * 4 * 8  # kernels [T, T]
    assert sampled_memory_bytes(2, 3, 20) == 2 * 20 * 3 * 4 + (2 * 20 * 3 + 3 * 3) * 8  # centred blocks and one product
