"""Errors raised by regionlock.core when a data file or an input can't be used."""


class DataFileError(ValueError):
    """A data file can't be used; the message names the file and the cause."""


class CorruptFileError(DataFileError):
    """The file is truncated, damaged or not a regionlock data file of the expected kind."""


class FormatVersionError(DataFileError):
    """The file is of a format version this build can't read."""


class BuildError(ValueError):
    """A source given to a builder can't be turned into a data file; the message names file and line."""


class RegionCodeError(BuildError):
    """A source's region code is not ISO 3166; the record keeps region id `fallback` (0: none, else its country)."""

    def __init__(self, message: str, fallback: int = 0) -> None:
        super().__init__(message)
        self.fallback = fallback
