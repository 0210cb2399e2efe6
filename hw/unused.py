"""Marking a component that is deliberately never elaborated.

Amaranth warns ("created but never used", ``UnusedElaboratable``) when an
elaboratable is garbage-collected without having been elaborated: usually a
forgotten submodule.  Ours are deliberate in two cases: a constructor that
refuses its parameters (it raises :class:`ttfs.hw.errors.HardwareError`
after the object exists, so the half-built object is dropped), and a test
that builds a component only to inspect its ports.  The warning would then
bury the one-line error under a second message that points at nothing.

Amaranth 0.5 has no public switch for one object (the linter comment
``# amaranth: UnusedElaboratable=no`` silences a whole file, genuine mistakes
included), so this helper sets the flag that Amaranth's ``MustUse`` base class
checks before warning.  It is the only place in the project that touches it.
"""

from __future__ import annotations


def mark_unused(elaboratable) -> None:
    """Tell Amaranth that ``elaboratable`` is never elaborated on purpose (no warning when it is dropped)."""
    elaboratable._MustUse__silence = True
