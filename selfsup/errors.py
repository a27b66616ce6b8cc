"""The one exception type users see: bad input, reported as one line that names the problem and the fix."""


class SelfSupError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits with code 2."""
