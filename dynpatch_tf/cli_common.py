"""What the `dynpatch` commands share: their error, argument checks and loaders.

`cli` and `cli_tune` run the commands; a `CommandError` raised here or there
is printed as `dynpatch COMMAND: error: ...` with exit status 1.
"""

import contextlib
import os
import sys

import keras

from dynpatch_tf.augment import make_augmentation
from dynpatch_tf.cli_parser import AUGMENTATION, NEEDLES_IMAGE_SIZE
from dynpatch_tf.image_files import error_reason
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS
from dynpatch_tf.training import folder_datasets, needles_datasets


class CommandError(Exception):
    """A problem with the command's input, reported without a traceback."""


@contextlib.contextmanager
def reported(*errors, prefix=""):
    """Reports `errors` (ValueError by default) raised inside as a CommandError.

    For library calls whose messages name the problem and the value; a
    TensorFlow `OpError`'s message is cleaned of TensorFlow's wrapping
    (`error_reason`).
    """
    try:
        yield
    except errors or ValueError as error:
        raise CommandError(f"{prefix}{error_reason(error)}") from None


def checked_thresholds(thresholds, base_size, min_size):
    """`--thresholds` (or the default ones), checked against the split levels.

    The patcher splits `base_size` blocks in halves down to `min_size`
    patches, one threshold per split: 3 from 64 to 8 px.
    """
    for flag, size in (("--base-size", base_size), ("--min-patch-size", min_size)):
        if size < 1 or size & (size - 1):
            raise CommandError(f"{flag} must be a power of two, got {size}.")
    if min_size > base_size:
        raise CommandError(f"--min-patch-size {min_size} exceeds --base-size {base_size}.")
    sides = [base_size >> level for level in range((base_size // min_size).bit_length())]
    levels = len(sides) - 1
    if thresholds is None and levels == len(DEFAULT_THRESHOLDS):
        return tuple(DEFAULT_THRESHOLDS)
    if thresholds is None or len(thresholds) != levels:
        given = "none" if thresholds is None else len(thresholds)
        raise CommandError(
            f"--thresholds needs one value per split level: {levels} for patches of "
            f"{', '.join(map(str, sides))} px, got {given}."
        )
    return tuple(thresholds)


def load_datasets(args, training=False):
    """Datasets from `--data` or `--needles`: `(dataset, validation, class_names)`.

    For `train` (`training=True`): the training set, shuffled and, with
    `--augment`, augmented, and the held-out `--validation-split` (None for
    0). Otherwise all the images, and None.
    """
    split = args.validation_split if training else None
    augment = augmentation(args) if training else None
    if args.needles is not None:
        if args.needles < 1:
            raise CommandError(f"--needles must be at least 1, got {args.needles}.")
        with reported():
            return needles_datasets(args.needles, args.image_size or NEEDLES_IMAGE_SIZE,
                                    args.classes, args.seed, args.batch_size, split, augment)
    image_size = (args.image_size, args.image_size) if args.image_size else None
    with reported(ValueError, OSError, prefix=f"cannot read {args.data!r}: "):
        return folder_datasets(args.data, args.batch_size, image_size, args.seed, split,
                               augment, shuffle=training)


def augmentation(args):
    """`make_augmentation` of `--rotation/--zoom/--distortion` with `--augment`, else None."""
    factors = {name: getattr(args, name) for name in AUGMENTATION
               if getattr(args, name) is not None}
    if not args.augment:
        if factors:
            flags = ", ".join(f"--{name}" for name in factors)
            raise CommandError(f"{flags} {'is' if len(factors) == 1 else 'are'} for --augment.")
        return None
    with reported():
        return make_augmentation(**{**AUGMENTATION, **factors}, seed=args.seed)


def load_model(path):
    """Loads a `.keras` model file, with a clear error when that fails."""
    if not os.path.isfile(path):
        raise CommandError(f"no model file {path!r}.")
    with reported(ValueError, OSError, TypeError, prefix=f"cannot load the model {path!r}: "):
        return keras.models.load_model(path)


def verbosity(args):
    """`fit`'s verbose: a progress bar on a terminal or with --verbose, else a line per epoch."""
    return 1 if args.verbose or sys.stdout.isatty() else 2
