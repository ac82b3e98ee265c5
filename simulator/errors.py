"""The one exception type for bad user input.

Every edge (trace reader, profile loader, config validation) raises `InputError` with a message that names the
file, the field and the value; the command-line entry points print it as one line and exit non-zero.
"""


class InputError(ValueError):
    """Bad input from the user: a message fit to print as one line, no traceback."""


def one_line(err) -> str:
    """The first error of a pydantic ValidationError as 'field: message (got value)'."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "value"
    got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
    return f"{loc}: {e['msg']}{got}"
