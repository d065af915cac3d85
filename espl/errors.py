"""One error root for espl-bench, with narrow subclasses at each boundary.

Policy: a bad rollout or a malformed reflection is *data* (recorded, counted, the run goes on);
an exception from this module means the system itself cannot continue. Every message names the
problem and the fix, because the CLI prints it as one line and exits non-zero.
"""

from __future__ import annotations


class EsplError(Exception):
    """Root of every error espl-bench raises on purpose."""


class ConfigError(EsplError):
    """A configuration value is invalid; the message names the field, the value and the fix."""


class EnvNotFound(EsplError):
    """An environment id is not registered, or the env cannot be built from its arguments."""


class EnvUnfit(EsplError):
    """An environment does not meet the text contract (non-text spaces, a reset that fails)."""


class ModelNotFound(EsplError):
    """A policy model could not be located or loaded."""


class ReflectorUnavailable(EsplError):
    """The reflector model cannot be reached at all (not a single malformed answer)."""


class RecordError(EsplError):
    """A run-folder record this version cannot read (an older schema, a missing or malformed field)."""


class RunDirError(EsplError):
    """A run folder is missing, corrupt, or does not match the requested run."""


class FolderBusy(EsplError):
    """Another live process owns a folder (a run, an evaluation, a conversion); the message names it."""
