"""Serving hooks for the diabetes regressor.

The model is ``model.pt`` (TorchScript), which the server loads itself: this file defines no
model_fn, only how requests are read and predictions made. It defines no output_fn either: the
server's default encodes the predictions as Accept asks (JSON when it asks for nothing).

Input: rows of the 10 raw features of scikit-learn's diabetes data (load_diabetes(scaled=False):
age in years, sex 1/2, bmi, bp, s1..s6), see table_rows.py:
  text/csv          59,2,32.1,101,157,93.2,38,4,4.8598,87   (one row per line; optional header line)
  application/json  [[59, 2, 32.1, ...], ...]  or  [{"age": 59, "sex": 2, "bmi": 32.1, ...}, ...]
Output: one predicted disease progression (a year after baseline) per row, a 1-D tensor:
  application/json  [206.1, 71.3, ...]
  text/csv          one value per line
  application/x-npy float32 array shaped (rows,)
"""

from __future__ import annotations

import torch

from table_rows import parse_rows

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def input_fn(request_body: bytes, content_type: str) -> torch.Tensor:
    return torch.from_numpy(parse_rows(request_body, content_type, FEATURES))


def predict_fn(data: torch.Tensor, model) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():  # a user's predict_fn runs as it is, as in SageMaker: no gradients needed here
        return model(data.to(device)).squeeze(1)
