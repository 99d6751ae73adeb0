"""Error types. The CLI prints these without a traceback and exits non-zero."""


class BonefracError(Exception):
    """Base class: the message names the file (or field) and the fix."""


class DataError(BonefracError):
    """A data source, manifest or image is missing or malformed."""


class ImageDecodeError(DataError):
    """One image could not be decoded; ``reason`` is a short machine-friendly label."""

    def __init__(self, path: object, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        msg = f"{self.path}: {reason}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class ConfigError(BonefracError):
    """A configuration file or override is invalid."""


class ModelError(BonefracError):
    """A model name, weights file or checkpoint is invalid or unavailable."""


class RunDirError(BonefracError):
    """A run directory is missing files or would be overwritten."""


class ModelOutputError(ModelError):
    """The model produced a number that cannot be trusted (non-finite logit or probability)."""
