"""The base of every error a dataset on disk can cause (a missing or damaged meta file, `.beton`, shard or
index): one class for callers to catch, each message naming the file at fault."""


class DataError(ValueError):
    """A dataset file that is missing, unreadable or inconsistent; the message names the file."""
