"""Shared helper of the command-line tests."""

import contextlib
import io

from dynpatch_tf.cli import main


def run_main(argv):
    """`main(argv)` with its stdout captured: `(status, stdout)`."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(argv)
    return status, stdout.getvalue()
