"""One error type for everything a user can get wrong.

The CLI prints ``error: <message>`` on one line and exits with status 2, so every message
must name the offending file/key and say how to fix it.
"""


class MinitronError(Exception):
    """A user-facing problem (bad input, bad config, missing file). Never a bug."""
