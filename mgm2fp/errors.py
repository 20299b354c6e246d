"""Exception classes of mgm2fp.

Every error raised for bad user input is an ``Mgm2fpError`` (also a ``ValueError``) whose message
names the offending value and what to do instead. The CLI prints the message as one line.
"""

from __future__ import annotations


class Mgm2fpError(ValueError):
    """Base class of every error that mgm2fp raises for bad input."""


class SourceNotFoundError(Mgm2fpError):
    """A hub id, folder or file could not be resolved to a checkpoint."""


class CheckpointError(Mgm2fpError):
    """A checkpoint is corrupt, truncated, unsafe or disagrees with its config."""


class UnknownFamilyError(Mgm2fpError):
    """No registered model family recognises a checkpoint."""


class LayerPlanError(Mgm2fpError):
    """A layer range or layer plan is malformed, reversed, overlapping or out of range."""


class ConfigError(Mgm2fpError):
    """An option, recipe field or config value is invalid."""


class OutputExistsError(Mgm2fpError):
    """An output path exists and overwriting was not requested."""


class HubError(Mgm2fpError):
    """A Hugging Face Hub request failed, was not authorised, or has no token to send."""
