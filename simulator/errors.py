"""The one exception type for bad user input.

Every edge (trace reader, profile loader, config validation) raises `InputError` with a message that names the
file, the field and the value; the command-line entry points print it as one line and exit non-zero.
"""


class InputError(ValueError):
    """Bad input from the user: a message fit to print as one line, no traceback."""
