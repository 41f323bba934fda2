"""The study harness above the trainer: compare runs a matrix of trainings and reports them side by side,
analyze reads a FiLM / adaLN-Zero model's modulation, summary prints a report's table."""
