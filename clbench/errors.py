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


def require_extra(module: str, extra: str, what: str):
    """Import an optional package, or stop with one line naming the pip extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs the {module} package; pip install 'clbench[{extra}]'") from None


def brief(exc: BaseException) -> str:
    """An exception as one short line: its type and the last line of its message (where tracebacks put the cause)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1][:300]}" if lines else type(exc).__name__
