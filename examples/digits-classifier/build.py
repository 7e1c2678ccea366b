"""Image classification: scikit-learn's digits, a state_dict MLP, PNG and JPEG pictures in.

Copies code/ (beside this script) into DIR/digits-classifier/, trains the weights into it, and packs
DIR/digits-classifier.tar.gz:

    model.pth                state_dict of a 64 -> 64 -> 10 MLP over 8x8 grey images (values 0..16)
    code/inference.py        model_fn builds the module and loads the weights (weights_only=True);
                             input_fn decodes pictures with Pillow
    code/requirements.txt    Pillow (the server's environment normally has it: no pip download)

Requests:

    image/png, image/jpeg    one picture of one digit filling the frame, any size up to 4096x4096: the
                             size is read from the header and a bigger picture is refused (400) before
                             it is decoded. Decoded, made grey, shrunk to 8x8 with a box filter, scaled
                             to 0..16; dark ink on a light ground is inverted to the data's light on dark.
                             Bytes that are not a valid picture of the declared type: 400.
    application/x-npy        8x8 images, values 0..16, shaped (N, 8, 8) or (8, 8) (also as JSON)

Answer: {"labels": [7], "probabilities": [[10 floats]]} (JSON; .npz when asked).

    python examples/digits-classifier/build.py --out build/examples
"""

import sys
from pathlib import Path

from torch_mme.tools.examples import CLASSIFIER_NAME, main

if __name__ == "__main__":
    sys.exit(main(CLASSIFIER_NAME, description=__doc__, code=Path(__file__).resolve().with_name("code")))
