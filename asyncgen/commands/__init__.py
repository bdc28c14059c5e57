"""One module per command: each has ``register(subparsers, common)`` and is listed, with its line in
``asyncgen --help``, in ``asyncgen.cli.COMMANDS``."""
