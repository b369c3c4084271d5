"""The one root exception of autoprompt-search.

Every problem a user can fix (a bad config, an unknown model, a missing column) raises
`ConfigError` with a one-line message that names the problem and the fix. The CLI turns it
into exit code 2. It subclasses `ValueError` so library callers can catch either.
"""


class ConfigError(ValueError):
    """A user-fixable input problem; the message is one line naming the field and the fix."""


def require(condition: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `condition` holds."""
    if not condition:
        raise ConfigError(message)
