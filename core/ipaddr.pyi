"""Type stub of regionlock.core.ipaddr, the geo reader's compiled IP address parsing and formatting."""

def parse_ip(ip: str | bytes | int) -> tuple[int, int]:
    """(4, int) or (6, int); IPv4-mapped IPv6 gives (4, ...); ValueError naming the input if malformed."""
