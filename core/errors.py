"""The project's own exception types: a problem with the user's settings, data or files, not a bug.

The CLI turns these (and only these, with missing or unreadable files) into a one-line message and exit
code 2; the pages show them as messages. Any other exception is a bug and keeps its traceback. They
subclass ``ValueError`` so that callers that catch bad values keep working.
"""

from __future__ import annotations


class AnomalyLabError(ValueError):
    """Base of every deliberate error: bad settings, data, files or runs."""


class ConfigError(AnomalyLabError):
    """A bad setting or combination of settings."""


class DetectorError(ConfigError):
    """An unknown detector, an unknown detector setting or a bad value for one."""
