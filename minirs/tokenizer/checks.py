"""Checks on what reaches the tokenizer from outside (token ids from callers): a value of the wrong type becomes a
TokenizerError that names it here, instead of a TypeError deep inside decoding or a float silently truncated."""

import numpy as np

from minirs.errors import TokenizerError


def short_repr(value, limit: int = 60) -> str:
    """A repr short enough for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def token_id(value, vocab_size: int, what: str = "token id") -> int:
    """`value` as an int if it is one (a Python or NumPy integer, not a bool) inside the vocabulary."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TokenizerError(f"{what} {short_repr(value)} is a {type(value).__name__}, not an integer token id")
    if not 0 <= value < vocab_size:
        raise TokenizerError(f"{what} {int(value)} is out of range for a vocabulary of {vocab_size}")
    return int(value)

