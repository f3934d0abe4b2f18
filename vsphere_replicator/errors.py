"""The library's exceptions.

ReplicatorError
 └── LabError        the embedded lab could not be built, started or driven
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """Root of every error this library raises on purpose."""


class LabError(ReplicatorError):
    """The lab could not be built, started, stopped or driven."""
