"""User-facing errors: the CLI prints them as one line (no traceback) and exits non-zero:
2 for a UsageError (a wrong command line or config: argparse's convention), 1 for anything else."""


class FastdiscoError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, *args):
        # torch's DataLoader re-raises a worker's error as type(e)("Caught X in DataLoader worker
        # process N.\nOriginal Traceback ..."): keep the worker's own one-line message
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") \
                and "\nOriginal Traceback" in args[0]:
            last = args[0].rstrip().splitlines()[-1]
            args = (last.split(": ", 1)[1] if ": " in last else last,)
        super().__init__(*args)


class UsageError(FastdiscoError):
    """The command line or the config is wrong (unknown key, bad value, missing argument): exit 2."""


class MissingBackendError(FastdiscoError):
    """An optional backend (DALI, ffcv, ...) was chosen but is not installed."""


def require(module: str, backend: str, hint: str):
    """Import an optional dependency or raise a one-line MissingBackendError."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingBackendError(
            f"backend '{backend}' needs the Python package '{module}', which is not importable "
            f"({e.__class__.__name__}: {e}); {hint}"
        ) from None
