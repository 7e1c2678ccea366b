"""Another weights format: a wine classifier whose weights are a safetensors file, JSON in.

Copies code/ (beside this script) into DIR/wine-classifier/, trains the weights into it, and packs
DIR/wine-classifier.tar.gz:

    model.safetensors        the tensors of a 13 -> 32 -> 3 MLP and its feature scaling (no pickle)
    code/inference.py        model_fn builds the module and loads the tensors with safetensors
    code/table_rows.py       a helper module beside inference.py: JSON and CSV rows -> float32
    code/requirements.txt    safetensors (a transformers dependency too; often installed already)

Building needs the safetensors package (pip install safetensors) to write the weights.

Requests: application/json, a list of objects keyed by scikit-learn's wine feature names
[{"alcohol": 13.2, "malic_acid": 1.78, ..., "proline": 1050}, ...], or rows of 13 numbers in that
order, or one object or row; text/csv rows too. Answer: {"labels": [0], "probabilities": [[3 floats]]}.

    python examples/wine-classifier/build.py --out build/examples
"""

import sys
from pathlib import Path

from torch_mme.tools.examples import SAFETENSORS_NAME, main

if __name__ == "__main__":
    sys.exit(main(SAFETENSORS_NAME, description=__doc__, code=Path(__file__).resolve().with_name("code")))
