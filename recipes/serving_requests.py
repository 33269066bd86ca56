"""Export a tiny DynamicPatchModel for TF Serving and write example request bodies.

Run from the repository root (needs scikit-image for the sample photos):

    python recipes/serving_requests.py --out serving_example

It writes

* `serving_example/saved_models/dynpatch/<version>/`, TF Serving's layout;
* `serving_example/requests/images_instances.json` and `images_inputs.json`:
  REST bodies for `serving_default` (a float image in 0..1, row and columnar
  format);
* `serving_example/requests/encoded_instances.json` and `encoded_inputs.json`:
  REST bodies for `predict_bytes` (a JPEG and a PNG, base64 in `{"b64": ...}`);

and prints the `docker run` and `curl` commands that use them. The model is
untrained (random weights): the point is the plumbing, not the predictions.
"""

import argparse
import json
import os

import keras
import skimage.data
import tensorflow as tf

from dynpatch_tf import DynamicPatchModel
from dynpatch_tf.export import export_saved_model, rest_request

IMAGE_SIZE = (64, 96)  # small, to keep the float request readable
BYTES_SIZE = (256, 256)


def tiny_model():
    """An untrained 3-class model small enough to export in seconds."""
    keras.utils.set_random_seed(0)
    model = DynamicPatchModel(
        num_classes=3, token_size=8, embed_dim=16, width_multiplier=0.35, attention_filters=(8,)
    )
    model.build((None, None, None, 3))
    return model


def request_bodies():
    """The four example REST bodies, by file stem."""
    astronaut, coffee = skimage.data.astronaut(), skimage.data.coffee()
    image = tf.image.resize(astronaut, IMAGE_SIZE, antialias=True).numpy() / 255.0
    encoded = [tf.io.encode_jpeg(coffee).numpy(), tf.io.encode_png(astronaut).numpy()]
    return {
        f"{kind}_{format}": rest_request(**{kind: value}, format=format)
        for kind, value in (("images", image[None]), ("encoded", encoded))
        for format in ("instances", "inputs")
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="serving_example", help="output folder")
    out = parser.parse_args(argv).out
    path = export_saved_model(tiny_model(), os.path.join(out, "saved_models"), bytes_size=BYTES_SIZE)
    requests = os.path.join(out, "requests")
    os.makedirs(requests, exist_ok=True)
    bodies = request_bodies()
    for stem, body in bodies.items():
        with open(os.path.join(requests, f"{stem}.json"), "w") as file:
            json.dump(body, file)
    model_dir = os.path.abspath(os.path.dirname(path))
    print(f"SavedModel: {path}\nRequests:   {requests}/*.json\n")
    print(
        f"docker run --rm -p 8501:8501 -v {model_dir}:/models/dynpatch "
        "-e MODEL_NAME=dynpatch tensorflow/serving"
    )
    for stem in bodies:
        print(
            "curl -s -X POST http://localhost:8501/v1/models/dynpatch:predict "
            f"-H 'Content-Type: application/json' -d @{requests}/{stem}.json"
        )


if __name__ == "__main__":
    main()
