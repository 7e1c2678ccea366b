"""The compat tier's models, written into one models root once per session.

Where the upstream toolkits' own test resources can be rebuilt offline they are used as they are
(``tests/compat/reference/``, from aws/sagemaker-pytorch-inference-toolkit at commit
cc8bf99ce501f5d4cc67420692b38af5143b1597): ``mnist_1d.py`` (loaded through ``SAGEMAKER_PROGRAM``,
its ``torch_model.pth`` rebuilt from the same ``Net``), ``call_model_fn_once.py``, and the
multi-model test's ``traced_resnet18`` (a ``traced_resnet18.pt`` found by the default ``model_fn``; a
small traced CNN stands in for ResNet-18, and its ``inference.py`` preprocesses with Pillow and numpy
where the original uses torchvision, which this image does not ship).
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

REFERENCE = Path(__file__).parent / "reference"
PROGRAM = "mnist_1d.py"
"""``SAGEMAKER_PROGRAM`` for the whole tier: the mnist_1d model uses it, every other model falls back to
``inference.py``."""

TYPES = """
    import io
    import json


    def input_fn(request_body, content_type):
        seen = {"type": type(request_body).__name__, "content_type": content_type}
        if content_type == "text/csv":  # what a pandas user writes: pd.read_csv(StringIO(request_body))
            seen["rows"] = [line.split(",") for line in io.StringIO(request_body).read().splitlines()]
        elif content_type == "application/json":
            seen["json"] = json.loads(request_body)
        return seen


    def predict_fn(data, model):
        return data


    def output_fn(prediction, accept):
        return json.dumps(prediction), "application/json"


    def model_fn(model_dir):
        return "no model"
"""

TRANSFORM_TYPES = """
    import json


    def model_fn(model_dir):
        return "no model"


    def transform_fn(model, request_body, content_type, accept):
        return json.dumps({"type": type(request_body).__name__, "content_type": content_type, "accept": accept})
"""

LIFECYCLE = """
    import json
    import os

    import torch

    CALLS = []


    def pre_model_fn(model_dir{ctx}):
        CALLS.append("pre_model_fn")
        assert os.path.isdir(model_dir)


    def model_fn(model_dir{ctx}):
        CALLS.append("model_fn")
        model = torch.nn.Linear(3, 2)
        model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), weights_only=True))
        return model


    def model_warmup_fn(model_dir, model{ctx}):
        CALLS.append("model_warmup_fn")
        assert not model.training  # eval() before the warm-up
        model(torch.zeros(1, 3))


    def input_fn(request_body, content_type{ctx}):
        CALLS.append("input_fn")
        return {{"x": torch.tensor(json.loads(request_body)), "context": describe({context})}}


    def predict_fn(data, model{ctx}):
        CALLS.append("predict_fn")
        return {{"y": model(data["x"]).tolist(), "context": data["context"], "grad": torch.is_grad_enabled()}}


    def output_fn(prediction, accept{ctx}):
        CALLS.append("output_fn")
        {set_attributes}
        return json.dumps({{**prediction, "calls": CALLS, "pid": os.getpid(), "accept": accept}}), accept


    def describe(context):
        if context is None:
            return None
        return {{
            "model_dir": context.system_properties.get("model_dir"),
            "custom_attributes": context.custom_attributes,
            "mms_header": context.get_request_header(0, "X-Amzn-SageMaker-Custom-Attributes"),
            "target_model": context.target_model,
        }}
"""

SALIENCY = """
    import os

    import torch


    def model_fn(model_dir):
        model = torch.nn.Linear(3, 2)
        model.load_state_dict(torch.load(os.path.join(model_dir, "weights.pth"), weights_only=True))
        return model


    def predict_fn(data, model):  # a saliency map: the gradient of the outputs' sum by the input
        data = data.clone().requires_grad_(True)
        model(data).sum().backward()
        return data.grad
"""

STRINGS = """
    import numpy as np


    def model_fn(model_dir):
        return "no model"


    def predict_fn(data, model):
        return np.array(["cat", "dog"])
"""

TOOLKIT_ERROR = """
    from sagemaker_inference.errors import GenericInferenceToolkitError


    def model_fn(model_dir):
        return "no model"


    def input_fn(request_body, content_type):
        raise GenericInferenceToolkitError(422, "the toolkit's own error, with the user's status")
"""

LOGS = """
    import logging

    log = logging.getLogger("user-code")


    def model_fn(model_dir):
        return "no model"


    def transform_fn(model, request_body, content_type, accept):
        log.warning("user line for %s", request_body)
        return "logged"
"""

TRACED_INFERENCE = """
    import io
    import json
    import logging

    import numpy as np
    import torch
    from PIL import Image

    logger = logging.getLogger(__name__)


    def transform_fn(model, payload, request_content_type, response_content_type):
        logger.info("Invoking user-defined transform function")
        if request_content_type and request_content_type != "application/octet-stream":
            raise RuntimeError(f"Content type must be application/octet-stream. Provided: {request_content_type}")
        # preprocess (torchvision's Resize/ToTensor/Normalize, in numpy)
        image = Image.open(io.BytesIO(payload)).convert("RGB").resize((32, 32))
        array = (np.asarray(image, dtype=np.float32) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        batchified = torch.from_numpy(array.astype(np.float32).transpose(2, 0, 1)).unsqueeze(0)
        result = model.forward(batchified)
        # Softmax (assumes batch size 1)
        result = np.squeeze(result.cpu().detach().numpy())
        result_exp = np.exp(result - np.max(result))
        result = result_exp / np.sum(result_exp)
        return json.dumps(result.tolist()), "application/json"
"""


def linear(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2).eval()


class Vector(torch.nn.Module):
    """A model with a 1-D result (one value per input row)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = linear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).sum(dim=-1)


class TinyCnn(torch.nn.Module):
    """Stands in for ResNet-18 in the multi-model test: 3x32x32 image in, 10 classes out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))


def png(seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def mnist_net() -> torch.nn.Module:
    """The toolkit's ``mnist_1d.Net`` wrapped as its ``model_fn`` wraps it, with fixed weights."""
    spec = importlib.util.spec_from_file_location("compat_mnist_1d", REFERENCE / "mnist_1d.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compat_mnist_1d"] = module
    try:
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        return torch.nn.DataParallel(module.Net()).eval()
    finally:
        del sys.modules["compat_mnist_1d"]


def _write(model_dir: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = model_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return model_dir


def build(root: Path) -> dict[str, Path]:
    """Every model of the tier under ``root``; returns name -> directory."""
    dirs: dict[str, Path] = {}

    def add(name: str, files: dict[str, str] | None = None) -> Path:
        dirs[name] = _write(root / name, files or {})
        dirs[name].mkdir(parents=True, exist_ok=True)
        return dirs[name]

    # the PyTorch toolkit's multi-model test model: a traced model of any name, found by the default model_fn
    traced = add("traced_resnet18", {"code/inference.py": TRACED_INFERENCE})
    torch.jit.trace(TinyCnn().eval(), torch.zeros(1, 3, 32, 32)).save(str(traced / "traced_resnet18.pt"))
    # the SDK's PyTorchModel(entry_point="mnist_1d.py"): SAGEMAKER_PROGRAM, the toolkit's own script
    mnist = add("mnist_1d")
    (mnist / "code").mkdir()
    shutil.copy(REFERENCE / "mnist_1d.py", mnist / "code" / "mnist_1d.py")
    torch.save(mnist_net().state_dict(), mnist / "torch_model.pth")
    # the toolkit's "model_fn is called once" model, as it is
    once = add("call_model_fn_once")
    (once / "code").mkdir()
    shutil.copy(REFERENCE / "call_model_fn_once.py", once / "code" / "inference.py")
    # default handlers: a TorchScript model.pt, a 1-D result, a state_dict .pth of any name with model_fn
    torch.jit.script(linear()).save(str(add("default_linear") / "model.pt"))
    torch.jit.script(Vector().eval()).save(str(add("default_vector") / "any_name.pt"))
    both = add("two_artifacts")
    torch.jit.script(linear()).save(str(both / "a.pt"))
    torch.jit.script(linear()).save(str(both / "b.pth"))
    add("types", {"code/inference.py": TYPES})
    add("transform_types", {"code/inference.py": TRANSFORM_TYPES})
    ctx = ", context"
    plain = add(
        "lifecycle_plain",
        {"code/inference.py": LIFECYCLE.format(ctx="", context="None", set_attributes="pass")},
    )
    with_ctx = add(
        "lifecycle_context",
        {
            "code/inference.py": LIFECYCLE.format(
                ctx=ctx,
                context="context",
                set_attributes='context.set_custom_attributes("answered=" + context.custom_attributes)',
            )
        },
    )
    for path in (plain, with_ctx):
        torch.save(linear().state_dict(), path / "model.pth")
    torch.save(linear().state_dict(), add("saliency", {"code/inference.py": SALIENCY}) / "weights.pth")
    add("strings", {"code/inference.py": STRINGS})
    add("toolkit_error", {"code/inference.py": TOOLKIT_ERROR})
    add("logs", {"code/inference.py": LOGS})
    return dirs
