"""The one base class of every error the toolkit reports to a user as one line."""


class TTFSError(Exception):
    """Bad input or an impossible request; the message says what is wrong."""
