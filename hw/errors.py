"""The error the hardware generators raise for parameters they cannot build."""

from __future__ import annotations

from ttfs.contract.errors import TTFSError


class HardwareError(TTFSError):
    """A hardware parameter or bundle layer cannot be turned into a circuit.

    Raised at construction or elaboration time (before any Verilog is
    written); the message names the offending parameter and its value, e.g.
    ``lanes: 0 is below 1``.
    """
