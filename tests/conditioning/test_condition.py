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


@pytest.mark.parametrize("mask", [torch.tensor([[1, 1, 0], [1, 1, 1]]),  # a tokenizer's 0/1 attention mask
                                  torch.tensor([[0.0, 0.0, float("-inf")], [0.0, 0.0, 0.0]])])  # an additive one
def test_a_mask_that_is_not_bool_is_refused_with_the_conversion_to_use(mask):
    # .bool() would silently invert the additive mask (0 -> False = padding, -inf -> True = real)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor \(True = a real token\), got torch\.\w+; "
                                         r"convert a 0/1 attention mask with mask.bool\(\) and an additive 0/-inf "
                                         r"mask with mask == 0"):
        Condition(tokens=torch.randn(2, 3, 4), mask=mask)


def test_batch_ops_round_trip():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    c = Condition(tokens=torch.randn(2, 3, 4), mask=mask, pooled=torch.randn(2, 5))
    assert c.mask.dtype == torch.bool and c.batch_size == 2
    both = Condition.cat([c[:1], c[1:]])
    assert torch.equal(both.tokens, c.tokens) and torch.equal(both.mask, c.mask) and torch.equal(both.pooled, c.pooled)
    half = c.to(dtype=torch.bfloat16)
    assert half.tokens.dtype == torch.bfloat16 and half.mask.dtype == torch.bool


def test_cat_refuses_mixed_fields():
    with pytest.raises(ValueError, match="only some have 'tokens'"):
        Condition.cat([Condition(pooled=torch.zeros(1, 2)),
                       Condition(tokens=torch.zeros(1, 3, 2), pooled=torch.zeros(1, 2))])
