"""Compatibility tier: the SageMaker toolkits' behaviour, stated as tests (``pytest -m compat``).

Every check runs twice, through the ``via`` fixture: in-process (``PyTorchHandler`` with MMS's own
``Context``) and through one real ``torch-mme serve`` for the whole session (MMS, its workers, the front),
started with ``SAGEMAKER_PROGRAM=mnist_1d.py`` and hosting every model of :mod:`tests.compat.zoo`.

The expected answers come from the toolkit's own code where it can run here: ``toolkit`` runs
sagemaker-inference's ``Transformer`` (installed) with the PyTorch toolkit's
``DefaultPytorchInferenceHandler`` (``reference/default_pytorch_inference_handler.py``, as published)
on the same model directories.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mms.context import Context, RequestProcessor

from handler.entry import _as_load_error
from handler.service import PyTorchHandler
from tests.compat import zoo
from tests.integration.conftest import logged_server
from torch_mme.settings import Settings

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.compat)


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def _bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class InProcess:
    """Our handler in this process, one ``PyTorchHandler`` per model, as MMS's worker runs it."""

    name = "in-process"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.settings = Settings(models_root=str(root), program=zoo.PROGRAM)
        self.handlers: dict[str, tuple[PyTorchHandler, Context]] = {}

    def load(self, name: str) -> tuple[int, str]:
        if name in self.handlers:
            return 200, "loaded"
        handler = PyTorchHandler(settings=self.settings)
        ctx = Context(name, str(self.root / name), None, 1, None, "1.1.11")
        try:
            handler.handle(None, ctx)
        except BaseException as exc:
            error = _as_load_error(exc)
            return error.status, str(error)
        self.handlers[name] = (handler, ctx)
        return 200, "loaded"

    def invoke(self, name: str, body: bytes, content_type: str | None, accept: str | None = None, **headers: str):
        assert self.load(name)[0] == 200
        handler, ctx = self.handlers[name]
        request_headers = {**({"Content-Type": content_type} if content_type else {}), **headers}
        if accept:
            request_headers["Accept"] = accept
        ctx.request_processor = [RequestProcessor(request_headers)]
        (result,) = handler.handle([{"body": bytearray(body)}], ctx)
        response = dict(ctx.get_response_headers(0))
        return Answer(ctx.get_response_status(0)[0], response.get("content-type", ""), _bytes(result), response)


class ThroughServe:
    """The same models through one real ``torch-mme serve``."""

    name = "serve"

    def __init__(self, server: Any) -> None:
        self.server = server
        self.loaded: dict[str, tuple[int, str]] = {}

    def load(self, name: str) -> tuple[int, str]:
        if name not in self.loaded:
            status, body = self.server.load(name, str(Path(self.server.models_root) / name))
            self.loaded[name] = (status, str(body.get("message", body.get("status", ""))))
        return self.loaded[name]

    def invoke(self, name: str, body: bytes, content_type: str | None, accept: str | None = None, **headers: str):
        assert self.load(name)[0] == 200, self.loaded[name]
        request_headers = {**({"Content-Type": content_type} if content_type else {}), **headers}
        if accept:
            request_headers["Accept"] = accept
        status, response, data = self.server.request("POST", f"/models/{name}/invoke", body, request_headers)
        content = next((v for k, v in response.items() if k.lower() == "content-type"), "")
        return Answer(status, content.split(";")[0].strip(), data, response)


@pytest.fixture(scope="session")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compat-models")
    zoo.build(root)
    return root


@pytest.fixture(scope="session")
def compat_server(zoo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    log_path = tmp_path_factory.mktemp("compat-logs") / "serve.log"
    with logged_server(zoo_root, log_path, env={"SAGEMAKER_PROGRAM": zoo.PROGRAM}) as server:
        yield server


@pytest.fixture(scope="session")
def in_process(zoo_root: Path) -> InProcess:
    return InProcess(zoo_root)


@pytest.fixture(params=["in-process", "serve"])
def via(request: pytest.FixtureRequest, in_process: InProcess) -> InProcess | ThroughServe:
    """Each check in-process and through the real server."""
    if request.param == "in-process":
        return in_process
    return request.getfixturevalue("serve_client")


@pytest.fixture(scope="session")
def serve_client(compat_server: Any) -> ThroughServe:
    return ThroughServe(compat_server)


# --- the toolkit itself, as the reference ---------------------------------------------------------------


def _reference_handler_class() -> type:
    path = Path(__file__).parent / "reference" / "default_pytorch_inference_handler.py"
    spec = importlib.util.spec_from_file_location("compat_default_pytorch_inference_handler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DefaultPytorchInferenceHandler


@contextlib.contextmanager
def _user_module(code_dir: Path, program: str) -> Iterator[None]:
    """The toolkit imports the user module by name from ``sys.path``: only this model's ``code/``, fresh
    (the in-process handlers of the other models put their own ``code/`` folders there)."""
    module = program[:-3] if program.endswith(".py") else program
    saved_env, saved_path = os.environ.get("SAGEMAKER_PROGRAM"), list(sys.path)
    os.environ["SAGEMAKER_PROGRAM"] = program
    sys.modules.pop(module, None)
    sys.path[:] = [str(code_dir)] + [p for p in sys.path if not p.startswith(str(code_dir.parent.parent))]
    try:
        yield
    finally:
        sys.path[:] = saved_path
        sys.modules.pop(module, None)
        if saved_env is None:
            os.environ.pop("SAGEMAKER_PROGRAM", None)
        else:
            os.environ["SAGEMAKER_PROGRAM"] = saved_env


class Toolkit:
    """sagemaker-inference's ``Transformer`` with the PyTorch toolkit's default handler: what the SageMaker
    PyTorch container answers for the same model directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handler_class = _reference_handler_class()
        self.transformers: dict[str, tuple[Any, Context]] = {}

    def _transformer(self, name: str) -> tuple[Any, Context]:
        from sagemaker_inference.transformer import Transformer

        if name not in self.transformers:
            model_dir = self.root / name
            program = zoo.PROGRAM if (model_dir / "code" / zoo.PROGRAM).exists() else "inference.py"
            transformer = Transformer(default_inference_handler=self.handler_class())
            ctx = Context(name, str(model_dir), None, 1, None, "1.1.11")
            ctx.request_processor = [RequestProcessor({})]
            # the toolkit's _is_model_file tests bare names: it needs the model folder as its working directory
            with _user_module(model_dir / "code", program), contextlib.chdir(model_dir):
                transformer.validate_and_initialize(model_dir=str(model_dir), context=ctx)
            self.transformers[name] = (transformer, ctx)
        return self.transformers[name]

    def invoke(self, name: str, body: bytes, content_type: str | None, accept: str | None = None) -> Answer:
        transformer, ctx = self._transformer(name)
        headers = {"Content-Type": content_type} if content_type else {}
        if accept:
            headers["Accept"] = accept
        ctx.request_processor = [RequestProcessor(headers)]
        (result,) = transformer.transform([{"body": bytearray(body)}], ctx)
        response = dict(ctx.get_response_headers(0))
        return Answer(ctx.get_response_status(0)[0], response.get("content-type", ""), _bytes(result), response)


@pytest.fixture(scope="session")
def toolkit(zoo_root: Path) -> Toolkit:
    return Toolkit(zoo_root)


@pytest.fixture
def error_of() -> Callable[[Answer], dict]:
    import json

    def parse(answer: Answer) -> dict:
        error = json.loads(answer.body)
        assert set(error) == {"code", "type", "message"} and error["code"] == answer.status
        return error

    return parse
