"""torch.compile (the optional fast path the trainer can turn on) compiles each backbone as one graph
and gives the eager outputs within fp32 rounding."""

import pytest
import torch
from factories import noisy_batch, randomize_, text_condition, tiny_model


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "methods"), [("dit", ["adaln_zero", "cross_attention"]),
                                                   ("unet", ["film", "cross_attention"])])
def test_compiled_model_matches_eager(backbone, methods):
    model = randomize_(tiny_model(backbone, methods)).eval()
    sample, t = noisy_batch()
    with torch.no_grad():
        eager = model(sample, t, condition=text_condition()).sample
        compiled = torch.compile(model, fullgraph=True)(sample, t, condition=text_condition()).sample
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
