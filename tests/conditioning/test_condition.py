import pytest
import torch

from film_diffusion import Condition


def test_shapes_are_checked_with_clear_messages():
    with pytest.raises(ValueError, match=r"tokens must be \[B, L, D\]"):
        Condition(tokens=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"mask must be \[B, L\] = \(2, 3\)"):
        Condition(tokens=torch.zeros(2, 3, 4), mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="disagree on the batch size"):
        Condition(tokens=torch.zeros(2, 3, 4), pooled=torch.zeros(3, 4))


def test_mask_becomes_bool_and_batch_ops_round_trip():
    c = Condition(tokens=torch.randn(2, 3, 4), mask=torch.tensor([[1, 1, 0], [1, 1, 1]]), pooled=torch.randn(2, 5))
    assert c.mask.dtype == torch.bool and c.batch_size == 2
    both = Condition.cat([c[:1], c[1:]])
    assert torch.equal(both.tokens, c.tokens) and torch.equal(both.mask, c.mask) and torch.equal(both.pooled, c.pooled)
    half = c.to(dtype=torch.bfloat16)
    assert half.tokens.dtype == torch.bfloat16 and half.mask.dtype == torch.bool


def test_cat_refuses_mixed_fields():
    with pytest.raises(ValueError, match="only some have 'tokens'"):
        Condition.cat([Condition(pooled=torch.zeros(1, 2)),
                       Condition(tokens=torch.zeros(1, 3, 2), pooled=torch.zeros(1, 2))])
