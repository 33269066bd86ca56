"""dynpatch_tf.needle_identities: one object per identity, disjoint splits, P x K batches."""

import numpy as np

from dynpatch_tf.needle_identities import identity, identity_batches, identity_splits, make_identities


def object_pixels(images, seed, labels):
    """Where each image differs from its own scene drawn without the object."""
    from dynpatch_tf.needles import _scene

    masks = []
    for image, label, index in zip(images, labels, np.tile(np.arange(3), len(images))):
        rng = np.random.default_rng([seed, label, index])
        scene = np.round(np.clip(_scene(*image.shape[:2], rng), 0, 1) * 255)
        masks.append(np.abs(image.astype(float) - scene).max(axis=-1) > 0)
    return np.stack(masks)


def test_each_image_holds_its_identity_once_at_a_random_place():
    images, labels = make_identities(4, 3, image_size=96, seed=2)
    assert images.shape == (12, 96, 96, 3) and labels.tolist() == np.repeat(np.arange(4), 3).tolist()
    masks = object_pixels(images, 2, labels)
    places = []
    for mask, label in zip(masks, labels):
        ys, xs = np.nonzero(mask)
        side = identity(label, 2).size
        assert ys.max() - ys.min() < side and xs.max() - xs.min() < side  # one object of its side
        places.append((ys.min(), xs.min()))
    assert len(set(places)) == 12  # a new place in every image
    # Same seed, same images.
    assert np.array_equal(make_identities(4, 3, image_size=96, seed=2)[0], images)


def test_splits_have_disjoint_identities_with_different_looks():
    splits = identity_splits(5, 4, 2, image_size=64, seed=1, validation_identities=3)
    labels = {name: set(split[1].tolist()) for name, split in splits.items()}
    assert labels == {"train": set(range(5)), "val": {5, 6, 7}, "test": {8, 9, 10, 11}}
    looks = [identity(index, 1) for index in range(12)]
    assert len({(look.kind, look.texture, look.colours) for look in looks}) == 12


def test_batches_hold_p_identities_of_k_images_and_every_image_once_per_epoch():
    images, labels = make_identities(6, 5, image_size=64)
    dataset = identity_batches(images, labels, identities_per_batch=2, images_per_identity=3, seed=0)
    epochs = [[(batch_images.numpy(), batch_labels.numpy()) for batch_images, batch_labels in dataset]
              for _ in range(2)]
    for batches in epochs:
        seen = np.concatenate([batch_labels for _, batch_labels in batches])
        assert sorted(seen.tolist()) == sorted(labels.tolist())  # groups of 3 and 2: all 5 images
        for batch_images, batch_labels in batches:
            assert batch_images.dtype == np.float32 and batch_images.max() <= 1.0
            assert len(batch_labels) <= 6 and min(np.bincount(batch_labels)[np.unique(batch_labels)]) >= 2
    orders = [np.concatenate([batch_labels for _, batch_labels in batches]) for batches in epochs]
    assert not np.array_equal(*orders)  # reshuffled every epoch
