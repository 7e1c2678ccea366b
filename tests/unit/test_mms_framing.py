"""What the handler hands MMS to frame: reason phrases and content types must be printable ASCII.

MMS writes their length in characters and their bytes as UTF-8; one non-ASCII
character corrupted the frame and MMS dropped the worker (found by the fuzz tier).
"""

from __future__ import annotations

from mms.context import Context, RequestProcessor

from handler.service import PyTorchHandler, ascii_safe
from torch_mme.settings import Settings


def test_ascii_safe_escapes_everything_outside_printable_ascii():
    assert ascii_safe("application/json") == "application/json"
    assert ascii_safe("caf\xe9\n") == "caf\\xe9\\x0a"
    assert ascii_safe("caf\xe9\n").isascii()


def test_reasons_and_content_types_sent_to_mms_are_ascii(tmp_path):
    model_dir = tmp_path / "echo" / "model" / "code"
    model_dir.mkdir(parents=True)
    (model_dir / "inference.py").write_text(
        "def model_fn(model_dir):\n    return lambda x: x\n"
        "def input_fn(body, content_type):\n    return body.decode('utf-8')\n"
        "def predict_fn(data, model):\n    return data\n"
        "def output_fn(prediction, accept):\n    return prediction.encode()\n"
    )
    handler = PyTorchHandler(Settings(models_root=str(tmp_path)))
    context = Context("echo", str(tmp_path / "echo" / "model"), None, 1, None, "1.1.11")
    handler.initialize(context)
    context.request_processor = [
        RequestProcessor({"Content-Type": "text/plain", "Accept": "text/pl\xe4in"}),
        RequestProcessor({"Content-Type": "application/json", "Accept": "application/json"}),
    ]
    data = [{"body": "h\xe9".encode()}, {"body": b"\xff\xfe not utf-8"}]
    handler.handle(data, context)
    assert context.get_response_content_type(0).isascii()
    status, phrase = context.get_response_status(1)
    assert status == 400 and phrase.isascii()
