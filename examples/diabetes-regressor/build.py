"""Tabular regression: scikit-learn's diabetes data, a TorchScript MLP, CSV and JSON rows in.

Copies code/ (beside this script) into DIR/diabetes-regressor/, trains the weights into it, and packs
DIR/diabetes-regressor.tar.gz:

    model.pt                 TorchScript 10 -> 32 -> 1 MLP (feature and target scaling inside), trained here
    code/inference.py        input_fn/predict_fn; no model_fn (the server loads model.pt), no output_fn
                             (the server encodes the answer as Accept asks)
    code/table_rows.py       a helper module beside inference.py: CSV and JSON rows -> float32

Requests (the 10 raw features: age, sex, bmi, bp, s1..s6, in load_diabetes(scaled=False) units):

    text/csv          59,2,32.1,101,157,93.2,38,4,4.8598,87        (one row per line; a first line
                                                                   naming the columns may reorder them)
    application/json  [[59, 2, 32.1, 101, 157, 93.2, 38, 4, 4.8598, 87], ...]
                      or [{"age": 59, "sex": 2, "bmi": 32.1, ...}, ...] (or one row, or one object)

Answer: one predicted disease progression per row: a JSON list, CSV (one per line) or .npy, as Accept
asks. A wrong number of values, an unknown or missing feature, or a value that is not a number: 400.

    python examples/diabetes-regressor/build.py --out build/examples
"""

import sys
from pathlib import Path

from torch_mme.tools.examples import REGRESSOR_NAME, main

if __name__ == "__main__":
    sys.exit(main(REGRESSOR_NAME, description=__doc__, code=Path(__file__).resolve().with_name("code")))
