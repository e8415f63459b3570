"""regionlock.core: the fast lookup core (IP-to-region trie, serial allowlist) and their file formats."""

from regionlock.core.errors import BuildError, CorruptFileError, DataFileError, FormatVersionError

try:
    from regionlock.core.allowlist import Allowlist
    from regionlock.core.geo import GeoDatabase, Region
except ImportError as exc:  # a build without a C compiler installs, but the lookup core is compiled only
    raise ImportError(
        "regionlock.core: the compiled lookup core is missing (the build fell back without it); reinstall with a "
        "C compiler and the Python headers, with REGIONLOCK_REQUIRE_EXTENSION=1 to see why the compile failed"
    ) from exc

__all__ = [
    "Allowlist",
    "BuildError",
    "CorruptFileError",
    "DataFileError",
    "FormatVersionError",
    "GeoDatabase",
    "Region",
]
