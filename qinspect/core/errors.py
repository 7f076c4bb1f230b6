"""Errors a user can act on. Their message is one line that names the file or tensor and the fix."""


class QInspectError(Exception):
    """Base of every error that is the user's input's fault rather than a bug."""


class ModelError(QInspectError):
    """The model cannot be read or used."""


class DataError(QInspectError):
    """Calibration data does not match the model or cannot be read."""


class OverridesError(QInspectError):
    """An encodings/overrides file is invalid or does not fit the model."""


class Cancelled(QInspectError):
    """A long job was cancelled by the user."""
