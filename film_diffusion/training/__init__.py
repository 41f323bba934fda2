"""Training: the experiment config, the builders, the objectives and the one Accelerate loop."""
