"""What every text encoder shares about captions: the error for a caption a model cannot read, and the check
that a caption is a string. Its own module so that the encoders (``genlab.nn.text``'s learned one and
``genlab.nn.minilm``'s frozen one) both depend on it and not on each other."""
from __future__ import annotations


class CaptionError(ValueError):
    """A caption the model cannot read: not a string, an unknown word, or too many words."""


def check_str(c) -> str:
    """``c`` itself when it is a string, else a :class:`CaptionError` that names its type."""
    if not isinstance(c, str):
        raise CaptionError(f"captions must be strings, got {type(c).__name__} {c!r}")
    return c
