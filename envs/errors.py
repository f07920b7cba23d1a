"""The one error type of the environment layer: bad ids, spaces, sizes and settings, in one line."""

from __future__ import annotations


class EnvError(ValueError):
    """A bad environment id, an unsupported space, an image size the encoder cannot take, or a bad
    `env` config value; the message is one line naming the culprit and what is supported."""
