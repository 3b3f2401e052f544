"""The export package's one error type (kept apart so light users need not import the converter)."""


class ExportError(ValueError):
    """An export or import that cannot be done; the message names the flag or path."""
