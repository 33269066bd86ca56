"""A short triplet training run identifies unseen identities better than the untrained model.

The open-set claim: training on one set of needle identities raises recall@1
and mAP on identities the model never saw. A tiny model on 64 px images,
12 short epochs. The embedder keeps the library's BatchNorm momentum, 0.9:
with Keras' 0.99 the moving statistics are still far from the batch
statistics after this run and the trained model retrieves at chance
(measured: recall@1 0.06, against 0.47 at 0.9).
"""

import keras
import numpy as np

from dynpatch_tf import DynamicPatchModel, PatchEmbedder, TripletSemiHardLoss
from dynpatch_tf.needle_identities import identity_batches, identity_splits
from dynpatch_tf.needles import NEEDLES_SIGMA, NEEDLES_THRESHOLDS
from dynpatch_tf.retrieval import query_gallery_split, retrieval_metrics


def test_triplet_training_raises_recall_on_unseen_identities():
    splits = identity_splits(train_identities=48, test_identities=16, images_per_identity=6, image_size=64)
    test_images, test_labels = splits["test"]
    assert not set(test_labels) & set(splits["train"][1])
    queries, gallery = query_gallery_split(test_labels, queries_per_identity=2, seed=0)
    keras.utils.set_random_seed(0)
    embedder = PatchEmbedder(embed_dim=16, width_multiplier=0.35, blocks=((1, 16, 1, 1), (None, 24, 1, 2)),
                             name="embedder")
    model = DynamicPatchModel(embedder=embedder, head_type="identification", identity_dim=16, token_size=8,
                              attention_filters=(8, 16), sigma=NEEDLES_SIGMA, thresholds=NEEDLES_THRESHOLDS,
                              trainable_thresholds=False)

    def scores():
        embeddings = model.retrieval_embedding(model.embed(test_images)).numpy()
        return retrieval_metrics(embeddings[queries], test_labels[queries], embeddings[gallery],
                                 test_labels[gallery])

    before = scores()
    model.compile(keras.optimizers.Adam(3e-3), TripletSemiHardLoss(margin=0.5))
    data = identity_batches(*splits["train"], identities_per_batch=6, images_per_identity=3, seed=0)
    history = model.fit(data, epochs=12, verbose=0).history
    after = scores()
    assert np.mean(history["loss"][-3:]) < 0.8 * np.mean(history["loss"][:3])
    # Measured: recall@1 0.09 -> 0.47, mAP 0.19 -> 0.47 (32 queries against 64 gallery images).
    assert after.recall[1] >= before.recall[1] + 0.15
    assert after.mean_average_precision >= before.mean_average_precision + 0.1
