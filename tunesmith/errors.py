"""Errors a user can act on. The CLI prints them without a traceback (unless --debug) and exits 2."""


class TunesmithError(Exception):
    """Base class: the message alone must tell the user what to fix."""


class ConfigError(TunesmithError):
    """A config file or --set override is invalid; the message names the file, line and field."""


class DataError(TunesmithError):
    """Input data is unusable; the message names the file, line and field."""


class TrainingError(TunesmithError):
    """Training cannot go on (e.g. the loss became NaN)."""


class Interrupted(TunesmithError):
    """SIGTERM or SIGINT stopped training after a checkpoint; the process exits with 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
