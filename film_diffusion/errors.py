"""The error users can fix: the CLI prints its message as one sentence instead of a traceback."""

import errno

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""The OS's errors for a write that ran out of room: no space, over quota, over the file-size limit."""


class UserError(ValueError):
    """Bad input (config, prompt, image, checkpoint); the message names the problem and the fix."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), to quote in a sentence."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
