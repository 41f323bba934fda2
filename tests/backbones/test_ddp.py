"""A two-process DDP run on the CPU (gloo) trains every method without ``find_unused_parameters``, and
a model refuses an input combination that would leave one of its embedders without a gradient."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_steps import cases
from factories import noisy_batch, text_condition, tiny_model


def test_two_process_ddp_steps_reach_every_parameter_for_every_method():
    worker = Path(__file__).with_name("ddp_steps.py")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(worker)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    done = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("ok ")]
    assert done == [name for name, *_ in cases()]
    assert run.stdout.rstrip().endswith("all ok")


@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_a_model_built_for_text_and_labels_refuses_labels_alone_and_text_alone(backbone):
    model = tiny_model(backbone, ["film"], num_classes=5)
    sample, t = noisy_batch()
    with pytest.raises(ValueError, match=r"built with cond_pooled_dim=16 and needs condition.pooled"):
        model(sample, t, class_labels=torch.tensor([1, 5]))
    with pytest.raises(ValueError, match=r"built with num_classes=5 and needs class_labels; pass them \(the null "
                                         r"class 5"):
        model(sample, t, condition=text_condition())
    assert model(sample, t, condition=text_condition(), class_labels=torch.tensor([1, 5])).sample.shape == sample.shape
