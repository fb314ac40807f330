"""``featserve``, the command line: each subcommand parses its arguments and calls library code."""

from service.cli.main import main

__all__ = ["main"]
