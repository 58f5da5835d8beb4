"""Errors the client raises besides model.config.ConfigError."""
from __future__ import annotations


class LimitError(ValueError):
    """A config within the model's bounds but over this deployment's caps: {field: message}."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


class AuthError(PermissionError):
    """The deployment has an access token and the call did not present it."""


class NotFound(KeyError):
    """No run (or job) with that id."""


class InvalidState(ValueError):
    """The run's status does not allow the action (e.g. resuming a succeeded run)."""
