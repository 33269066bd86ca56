"""Distributed training on TensorFlow's `tf.distribute`: strategies and workers.

`dynpatch train --strategy NAME` trains under `make_strategy(NAME)`:

* `default`: TensorFlow's default strategy, one device;
* `mirrored`: `tf.distribute.MirroredStrategy`, one replica per GPU of this
  host (the CPU when there is none), gradients all-reduced every step;
* `multiworker`: `tf.distribute.MultiWorkerMirroredStrategy`, the same over
  several hosts (or processes), each told the cluster and its own place in
  it by the `TF_CONFIG` environment variable.

From Python, make the model (and compile it) under `strategy.scope()` and call
`fit` as usual: Keras splits each global batch over the replicas.
`DynamicPatchModel` takes the penalty over the global batch
(`dynpatch_tf.penalty.global_batch_mean`) and, with
`synchronized_batch_norm=True`, BatchNorm's statistics too, so a step on N
replicas is one device's step on the whole batch.

In a multi-worker job every worker runs the same program. `worker_folder`
gives each its own folder to write to (the chief the folder it was given),
so that workers sharing a file system do not overwrite each other's files
(`BackupAndRestore`'s backup included: each worker restores its own).

Example:

```python
strategy = make_strategy("mirrored")
with strategy.scope():
    model = DynamicPatchModel(num_classes=4, synchronized_batch_norm=True)
    model.compile()
model.fit(dataset, epochs=10)
```
"""

import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multiworker")


def make_strategy(name):
    """The `tf.distribute` strategy called `name` (one of `STRATEGIES`).

    A multi-worker strategy must be made when the program starts, before
    TensorFlow runs any op (TensorFlow's rule: it sets up the collective ops
    of the cluster).

    Args:
        name: `"default"`, `"mirrored"` or `"multiworker"`.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: for another name, or `"multiworker"` without `TF_CONFIG`
            in the environment.

    Example:

    >>> make_strategy("mirrored").num_replicas_in_sync   # on a host with 2 GPUs
    2
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "the multiworker strategy needs TF_CONFIG in the environment: the cluster's "
                'workers and this one\'s place, e.g. {"cluster": {"worker": ["host0:12345", '
                '"host1:12345"]}, "task": {"type": "worker", "index": 0}}.'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")


def is_multi_worker(strategy):
    """Whether `strategy` spans several workers (processes) rather than one."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices))


def worker_folder(output, strategy):
    """The folder this worker writes to: `output`, or a subfolder on a non-chief worker.

    The chief (the task of type `chief`, or worker 0 in a cluster without
    one) and single-process strategies write to `output`; another worker to
    `output/<task type>-<index>`, e.g. `run/worker-1`.

    Args:
        output: the folder given to every worker.
        strategy: the `tf.distribute.Strategy` the program trains under.

    Returns:
        The folder's path.

    Example:

    >>> worker_folder("run", strategy)   # TF_CONFIG task {"type": "worker", "index": 1}
    'run/worker-1'
    """
    resolver = strategy.cluster_resolver
    if resolver is None or resolver.task_type is None:
        return output
    jobs = resolver.cluster_spec().jobs
    chief = ("chief", 0) if "chief" in jobs else ("worker", 0)
    if (resolver.task_type, resolver.task_id) == chief:
        return output
    return os.path.join(output, f"{resolver.task_type}-{resolver.task_id}")


def first_replica_batch(batch):
    """`batch` with each distributed value replaced by the first replica's."""
    return tf.nest.map_structure(
        lambda value: (value.values[0] if isinstance(value, tf.distribute.DistributedValues)
                       else value),
        batch,
    )
