"""regionlock.core: the fast lookup core (IP-to-region trie, serial allowlist) and their file formats."""

from regionlock.core.allowlist import Allowlist
from regionlock.core.errors import BuildError, CorruptFileError, DataFileError, FormatVersionError
from regionlock.core.geo import GeoDatabase, Region

__all__ = [
    "Allowlist",
    "BuildError",
    "CorruptFileError",
    "DataFileError",
    "FormatVersionError",
    "GeoDatabase",
    "Region",
]

# The compiled modules are imported by their own names (regionlock.core.geo, regionlock.core.allowlist);
# each issue that adds one re-exports its public classes here.
