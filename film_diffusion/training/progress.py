"""Where a run stands: the step, the loss of the log window in progress, the training seconds and the skipped steps,
checkpointed with the run; and what counts as a step that went non-finite."""

from __future__ import annotations

import math

import torch


class RunProgress:
    """The step, the loss of the log window in progress, the training seconds and the skipped steps so far:
    checkpointed, so a resumed run logs the same rows as one that never stopped, and its clock goes on from the
    checkpoint's."""

    def __init__(self) -> None:
        self.step = 0
        self.loss_sum = 0.0
        self.loss_count = 0
        self.seconds = 0.0
        self.skipped = 0  # steps whose update a non-finite loss or gradient skipped (train.skip_nonfinite)

    def add_loss(self, value: float) -> None:
        self.loss_sum += value
        self.loss_count += 1

    def take_mean_loss(self) -> float | None:
        """The window's mean loss (None when every step of it was skipped), and a new window."""
        mean = self.loss_sum / self.loss_count if self.loss_count else None
        self.loss_sum, self.loss_count = 0.0, 0
        return mean

    def take_log_row(self, lr: float, grad_norm: torch.Tensor | None, images_per_step: int, seconds: list[float],
                     ema_decay: float, with_skipped: bool) -> dict:
        """The metrics row of this step: the window's mean loss, the lr, the gradient norm, the speed over the
        steps in ``seconds`` (emptied), the clock, the EMA decay of the last update and, with ``with_skipped``,
        the skipped steps so far."""
        row = {"step": self.step, "loss": self.take_mean_loss(), "lr": lr,
               "grad_norm": None if grad_norm is None else float(grad_norm),
               "images_per_s": images_per_step * len(seconds) / sum(seconds), "train_seconds": self.seconds,
               "ema_decay": ema_decay, **({"skipped_steps": self.skipped} if with_skipped else {})}
        seconds.clear()
        return row

    def state_dict(self) -> dict:
        return {"step": self.step, "loss_sum": self.loss_sum, "loss_count": self.loss_count, "seconds": self.seconds,
                "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.loss_sum, self.loss_count = state["step"], state["loss_sum"], state["loss_count"]
        self.seconds, self.skipped = state["seconds"], state.get("skipped", 0)  # checkpoints from before skipping


def nonfinite(loss: float, grad_norm: torch.Tensor | None, scaled: bool) -> str | None:
    """What is not finite in a step, as a phrase, or None. Under fp16 an infinite gradient is the gradient
    scaler's business (it skips that step and lowers the scale), so only the loss counts there."""
    if not math.isfinite(loss):
        return f"loss became {loss}"
    if grad_norm is not None and not scaled and not math.isfinite(norm := float(grad_norm)):
        return f"gradient norm became {norm}"
    return None


