"""User-facing errors: the CLI prints their one-line message and exits with status 2."""


class UserError(Exception):
    """A mistake the user can fix (bad config, missing data, unreachable service); message is one line."""


class ConfigError(UserError, ValueError):
    """A bad configuration value, caught before any cluster work starts."""


class DataError(UserError):
    """Data that cannot be found, reached or used."""
