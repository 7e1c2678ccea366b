"""The minimal function-form handler given to plain MMS and to TorchServe: JSON -> TorchScript forward -> JSON.

Nothing else: no content negotiation, no per-item errors, no model-directory checks. Both servers call
``handle(None, context)`` once to load, then ``handle(batch, context)`` per request. TorchServe hands a JSON
body over already parsed (its protocol layer runs ``json.loads``); MMS hands over the bytes.
Standard library and torch only: it runs inside the servers' workers, not in the benchmark.
"""

import json
import os

import torch

_model = None


def handle(data, context):
    global _model
    if data is None:
        model_dir = context.system_properties["model_dir"]
        _model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu").eval()
        return None
    answers = []
    for idx, request in enumerate(data):
        body = request.get("body")
        if body is None:
            body = request.get("data")
        rows = json.loads(body) if isinstance(body, (bytes, bytearray, str)) else body
        with torch.inference_mode():
            prediction = _model(torch.tensor(rows, dtype=torch.float32))
        answers.append(json.dumps(prediction.tolist()))
        context.set_response_content_type(idx, "application/json")
    return answers
