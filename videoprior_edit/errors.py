"""Errors the pack raises for the user: each says what went wrong and what to do."""


class VPEError(Exception):
    """A user-facing error with a hint saying how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n  What to do: {hint}" if hint else message)


class ModelFileError(VPEError):
    """A weight file is missing, corrupted, of the wrong kind or in a refused format."""


class InputError(VPEError):
    """A node or function input is out of range (sizes, frame counts, ...)."""
