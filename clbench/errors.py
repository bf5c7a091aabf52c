"""User-facing errors.

Anything a user can fix (a bad suite, a missing dataset, an unknown plugin name)
raises ``UserError``; the CLI prints its message as one line and exits 2, so a
typo never shows a traceback and never touches results on disk.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one actionable line."""

    exit_code = 2

    def __str__(self) -> str:  # keep the message on one line whatever the cause
        return " ".join(str(self.args[0]).split()) if self.args else ""
