"""The `dynpatch` command's entry point: quiets TensorFlow, then runs `dynpatch_tf.cli`.

TensorFlow's C++ side prints start-up lines when it is first imported and
when it first looks for devices (oneDNN, CUDA drivers, CPU features, cuInit,
absl::InitializeLog), most of them before its log level applies. Importing
any module of `dynpatch_tf` imports TensorFlow (the package's `__init__`
registers every Keras object, which `keras.models.load_model` needs), so this
module sits outside the package: it sets the environment and filters those
lines before anything imports TensorFlow. With `--verbose`, nothing is
changed or filtered.

Run it as the `dynpatch` console script or as `python -m dynpatch_command`.
"""

import contextlib
import os
import re
import sys
import tempfile

# TensorFlow's start-up lines that say nothing about the command's work.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|cpu_feature_guard\.cc"
    r"|^To enable the following instructions: .* rebuild TensorFlow"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
)


def main(argv=None):
    """Runs `dynpatch_tf.cli.main(argv)`, quietly unless `--verbose` is in `argv`.

    Without `--verbose`: `TF_CPP_MIN_LOG_LEVEL` is set to 3 unless the
    environment sets it already. That silences TensorFlow's C++ log, whose
    error level also carries notes such as "oneDNN supports DT_INT32 only on
    ..." at the first training step; a failing op still reaches Python as an
    exception with its message. The lines of `STARTUP_NOISE`
    printed while TensorFlow is imported and finds its devices are dropped
    (all of them kept when `TF_CPP_MIN_LOG_LEVEL` is 0); anything else
    printed meanwhile is shown.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    options = argv[:argv.index("--")] if "--" in argv else argv
    if "--verbose" in options:
        from dynpatch_tf import cli
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with filtered_stderr(keep_all=os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"):
            import tensorflow as tf

            # Finds the devices now (cuInit), but leaves the runtime unstarted, so
            # that a multi-worker strategy can still set up its collective ops.
            tf.config.list_physical_devices()
            from dynpatch_tf import cli
    return cli.main(argv)


@contextlib.contextmanager
def filtered_stderr(keep_all=False):
    """Sends file descriptor 2 to a temporary file, then replays it without noise.

    C++ libraries write to the file descriptor, not to `sys.stderr`, so the
    descriptor itself is redirected. Lines matching `STARTUP_NOISE` are
    dropped unless `keep_all`.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as file:
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            text = file.read().decode(errors="replace")
            sys.stderr.write(text if keep_all else drop_noise(text))
            sys.stderr.flush()


def drop_noise(text):
    """`text` without its lines that match `STARTUP_NOISE`."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not STARTUP_NOISE.search(line))


if __name__ == "__main__":
    sys.exit(main())
