"""tpc: the token-pruning compiler for vision-language models."""

__version__ = "0.1.0"
