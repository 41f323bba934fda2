"""The error users can fix: the CLI prints its message as one sentence instead of a traceback."""


class UserError(ValueError):
    """Bad input (config, prompt, image, checkpoint); the message names the problem and the fix."""
