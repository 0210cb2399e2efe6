"""The ``ttfs`` command line: every subcommand is declared in :mod:`ttfs.cli.main`."""
