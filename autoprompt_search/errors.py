"""The exceptions of autoprompt-search, under one root (`AutopromptError`).

Every problem a user can fix (a bad config, an unknown model, a missing column, a corrupt file)
raises `ConfigError` with a one-line message that names the problem and the fix; the CLI turns it
into exit code 2. A training run that cannot go on (a NaN loss) raises `TrainingError`. Both
also subclass the builtin a library caller would expect (`ValueError`, `RuntimeError`).
"""


class AutopromptError(Exception):
    """The root of every error this package raises on purpose."""


class ConfigError(AutopromptError, ValueError):
    """A user-fixable input problem; the message is one line naming the field and the fix."""


class TrainingError(AutopromptError, RuntimeError):
    """A run that cannot go on (NaN loss); the message says why and what to change."""


def require(condition: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `condition` holds."""
    if not condition:
        raise ConfigError(message)
