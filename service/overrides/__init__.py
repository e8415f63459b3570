"""Override stores and the in-memory override index the check path reads."""
