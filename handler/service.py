"""The PyTorch handler: initialize, then preprocess -> inference -> postprocess per batch.

Each item of a batch is decoded with its own Content-Type and encoded for its
own Accept, and fails on its own: an error answers that item with its status
and a short JSON message, the other items still get their results.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from handler import alone, codecs, timing
from torch_mme.common import is_inside
from torch_mme.errors import (
    MAX_MESSAGE,
    ModelLoadError,
    ModelOutsideRoot,
    OutOfMemory,
    PredictionError,
    ServingError,
    UnsupportedContentType,
    brief,
    is_out_of_memory,
)
from torch_mme.settings import Settings

log = logging.getLogger(__name__)

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
MAX_CUSTOM_ATTRIBUTES = 1024
"""SageMaker's limit on ``CustomAttributes``, both ways."""

FIRST_CALL_RUNS = 3
"""Runs of the synthesized input at load: the profiling run, the one that compiles the optimized graph, one on it."""
MAX_JSON_SAMPLE = 4096
"""A synthesized input up to this many elements goes through the JSON decoder too; a larger one is passed as is."""

_target_model: contextvars.ContextVar[str] = contextvars.ContextVar("target_model", default="")


def header(context: Any, idx: int, name: str) -> str:
    """A request header of batch item ``idx``, looked up case-insensitively ('' when absent)."""
    headers = context.get_all_request_header(idx) or {}
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted and isinstance(value, str):
            return value
    return ""


class RequestContext:
    """What a hook's ``context`` argument is for one request: MMS's ``Context``, unchanged (every attribute
    and method is the MMS one: ``system_properties``, ``get_request_header(idx, name)``,
    ``set_response_header(idx, name, value)``, ...), plus this request's SageMaker headers without an index:

    - ``custom_attributes``: the request's ``X-Amzn-SageMaker-Custom-Attributes`` ('' when absent);
    - ``set_custom_attributes(value)``: the response's, what boto3 returns as ``CustomAttributes``;
    - ``target_model``: the request's ``X-Amzn-SageMaker-Target-Model`` ('' outside SageMaker);
    - ``request_header(name)``, ``request_id`` (the index in MMS's batch);
    - ``get_request_header(idx, name)`` finds a header whatever the case of its name.
    """

    def __init__(self, context: Any, idx: int) -> None:
        self._context = context
        self.request_id = idx
        headers = context.get_all_request_header(idx) or {}
        alone.drop(headers)  # the front's word to MMS's batching (handler/alone.py), never the model's
        self._headers = {k.lower(): v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)}
        """This request's headers by lower-case name, read once: every stage asks for a few of them."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def request_header(self, name: str) -> str:
        return self._headers.get(name.lower(), "")

    def get_request_header(self, idx: int, key: str) -> str | None:
        """MMS's lookup, but case-insensitive: MMS hands the worker the header names as they came on the wire,
        so ``get_request_header(0, "X-Amzn-SageMaker-Custom-Attributes")`` would miss a lowercase one."""
        exact = self._context.get_request_header(idx, key)
        return exact if exact is not None else (header(self._context, idx, key) or None)

    @property
    def custom_attributes(self) -> str:
        return self.request_header(CUSTOM_ATTRIBUTES)

    @property
    def target_model(self) -> str:
        return self.request_header(TARGET_MODEL)

    def set_custom_attributes(self, value: str) -> None:
        """Set the response's custom attributes (printable ASCII, at most 1024 characters, as SageMaker)."""
        text = ascii_safe(str(value).replace("\r", " ").replace("\n", " "))
        if len(text) > MAX_CUSTOM_ATTRIBUTES:
            raise ValueError(f"custom attributes are limited to {MAX_CUSTOM_ATTRIBUTES} characters")
        self._context.set_response_header(self.request_id, CUSTOM_ATTRIBUTES, text)


def install_log_target() -> None:
    """Prefix every log record written while a request is served with its TargetModel
    (``[TargetModel=team-a/housing.tar.gz] ...``): the handler's lines and the user's own loggers alike."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "adds_target_model", False):
        return

    def record_with_target(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        target = _target_model.get()
        if target:
            record.target_model = target
            if record.args:
                target = target.replace("%", "%%")
            record.msg = f"[TargetModel={target}] {record.msg}"
        return record

    record_with_target.adds_target_model = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(record_with_target)


@dataclass
class Item:
    """One request of a batch as it moves through the stages."""

    body: bytes | None
    content_type: str
    accept: str
    context: RequestContext | None = None
    data: Any = None
    prediction: Any = None
    error: ServingError | None = None

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Log lines written meanwhile carry this request's TargetModel."""
        token = _target_model.set(self.context.target_model if self.context is not None else "")
        try:
            yield
        finally:
            _target_model.reset(token)


def _body(request: dict) -> bytes | None:
    body = request.get("body")
    if body is None:
        body = request.get("data")
    if isinstance(body, str):
        body = body.encode()
    return body if isinstance(body, (bytes, bytearray)) else None


def ascii_safe(text: str) -> str:
    """MMS frames reason phrases and headers with their length in characters but writes them as UTF-8: a
    non-ASCII character (a request's bytes quoted in a reason, a content type taken from Accept) corrupts the
    frame and MMS drops the worker. Escape anything outside printable ASCII."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if c.isascii() and c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def check_inside(model_dir: str, root: str) -> str:
    """The real path of ``model_dir``; refuses one that resolves outside ``root``."""
    real = os.path.realpath(model_dir)
    if not is_inside(real, os.path.realpath(root)):
        raise ModelOutsideRoot(f"model directory {model_dir} is outside the models root {root}")
    return real


class PyTorchHandler:
    """Serves one model in one MMS worker process."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self.model = None
        self.stacking = False
        """Stack the items of a batch into one forward pass (the model's batch_size > 1, default predict path)."""

    def initialize(self, context: Any) -> None:
        """Load the model MMS points at: check the path, install its requirements, pick the device, load, ``eval()``."""
        from handler import requirements

        settings = self.settings or Settings.from_env()
        properties = context.system_properties
        model_dir = check_inside(properties["model_dir"], settings.models_root)
        # before torch and the user's code are imported: the model's own packages come first on sys.path
        requirements.prepare(model_dir, settings, getattr(context, "model_name", "?"))
        install_log_target()

        from handler import device, model, model_config  # torch is imported when a model loads, not before

        config = model_config.read(model_dir)
        if config.torch_threads is not None:
            import torch

            torch.set_num_threads(config.torch_threads)
        dev = device.device_for(properties.get("gpu_id"))
        device.admit(model_dir, dev, settings.memory_headroom_mb, config.memory_mb)
        self.model = model.load(
            model_dir,
            dev,
            settings.allow_unsafe_pickle,
            context,
            settings.default_accept,
            settings.program,
            describe_input=not config.warmup and config.auto_warmup,
        )
        self.model.max_decoded_bytes = settings.max_decoded_bytes
        self.stacking = config.batch_size > 1 and ("predict_fn" not in self.model.hooks or config.batch_predict_fn)
        self._warm_up(config.warmup, context)
        if self.model.input_spec is not None:
            self._warm_up_first_call(context)
        log.info("model %s loaded from %s on %s", getattr(context, "model_name", "?"), model_dir, dev)

    def _warm_up(self, requests: tuple, context: Any) -> None:
        """Run the config's sample requests through the whole request path once; one that fails fails the load."""
        for position, request in enumerate(requests):
            item = Item(request.body, request.content_type, request.accept)
            self._serve([item])
            if item.error is not None:
                raise ModelLoadError(f"torch-mme.json warmup[{position}] failed ({item.error.status}): {item.error}")

    def _warm_up_first_call(self, context: Any = None) -> None:
        """The default path's warm-up: a TorchScript model on the CPU whose input the model itself records
        (``model.input_spec``: a traced archive's example, or a first ``Linear``) runs that input, as
        zeros, ``FIRST_CALL_RUNS`` times at load, decoded from JSON and its answer encoded, as a request would be.

        Why (measured on 2 busy cores, torch 2.13 CPU): TorchScript's profiling executor spends a module's first
        call profiling it and its second compiling the optimized graph (in-process, after the template's warm-up:
        ~0.5 ms each for ``nn.Linear(16, 4)``, ~1.5-2 ms each for a 2-layer MLP, ~30 us warm), and a freshly forked
        model process pays again for its first touch of the decode and encode paths (~0.3-0.5 ms each). The
        handler's time on the first request (the front's inference metric) goes from ~2.7 ms to ~0.9 ms (warm
        ~0.5 ms); the scale benchmark's first invoke / warm invoke from 1.8-3.3x to 1.4-1.9x, LoadModel's p50 +0-7
        ms, a model's USS +0.8 MB (the compiled plan, touched pages). Candidates, paired in one server (scripted
        ``nn.Linear(16, 4)``): none 2.8x; the forward alone 2.5-2.7x; the codecs alone 2.6x; both (this) 1.8-1.9x.
        Rejected: the graph executor's optimisation off on the CPU (``torch.jit.optimized_execution(False)``, a
        per-thread flag; it needs no input) left 2.5-2.7x, since the first call still builds its plan, and made warm
        forwards of nested scripted modules 3-10% slower (no inlining);
        ``torch.jit.freeze``/``optimize_for_inference`` change the module. Not on CUDA: the fuser specializes on the
        first shapes it sees, a synthesized one could take one of those slots; CUDA models keep the config's
        ``warmup``.

        Skipped when the user warms the model (``torch-mme.json`` ``warmup``, ``model_warmup_fn``), calls it
        (``predict_fn``, ``transform_fn``), or turns it off (``"auto_warmup": false``: a forward with side
        effects). A failure is logged at debug level and the load goes on: the first request then pays as before.
        """
        import json

        from handler import model

        hooks = self.model.hooks
        sample = model.sample_input(self.model)
        if sample is None:
            return
        through_mms = self._mms_request(sample, context)
        try:  # once quietly on its own (the forward may refuse zeros); then as MMS's requests, when it can
            data: Any = sample[0] if len(sample) == 1 else {str(i): t for i, t in enumerate(sample)}
            if "input_fn" not in hooks and len(sample) == 1 and sample[0].numel() <= MAX_JSON_SAMPLE:
                data = self.model.decode(json.dumps(sample[0].tolist()).encode(), codecs.JSON)
            for _ in range(1 if through_mms else FIRST_CALL_RUNS):
                prediction = self.model.predict(data)
            if "output_fn" not in hooks:
                self.model.encode(prediction, "")
        except Exception as exc:  # an optimisation only: never fails the load
            log.debug("first-call warm-up skipped: %s", brief(exc))
            return
        if through_mms is not None:
            service, batch = through_mms
            for _ in range(FIRST_CALL_RUNS - 1):
                service.predict(batch)

    def _mms_request(self, sample: tuple, context: Any) -> tuple[Any, list[dict]] | None:
        """The warm-up's sample as a request of MMS's worker: ``mms.service.Service`` with this handler and a
        one-request JSON batch for its ``predict`` (MMS's unpacking of the batch, ``handle`` with an MMS context,
        MMS's packing of the answer); None outside MMS, or for a model with its own codecs or several inputs.

        Then only the socket's reads and writes are left to the first request. Measured (the scale benchmark's
        first invoke / warm invoke at 10, 100, 400 and 1,000 resident, bench/results/scale.md): 1.53x, 1.82x, 1.97x
        and 2.08x with the codecs and the forward warmed alone (``session-4``), 1.48x, 1.78x, 1.75x and 1.55x with
        this (``warm-request-path``).
        """
        import json

        if {"input_fn", "output_fn"} & set(self.model.hooks) or len(sample) != 1:
            return None
        if sample[0].numel() > MAX_JSON_SAMPLE:
            return None
        try:
            from mms.context import Context
            from mms.service import Service
        except ImportError:
            return None
        if not isinstance(context, Context):
            return None
        properties = context.system_properties
        service = Service(
            context.model_name,
            properties.get("model_dir"),
            context.manifest,
            self.handle,
            properties.get("gpu_id"),
            properties.get("batch_size"),
        )
        body = json.dumps(sample[0].tolist()).encode()
        batch = [
            {
                "requestId": b"torch-mme-warm-up",
                "parameters": [{"name": "body", "value": bytearray(body), "contentType": codecs.JSON}],
                "headers": [
                    {"name": b"Content-Type", "value": codecs.JSON.encode()},
                    {"name": b"Accept", "value": codecs.JSON.encode()},
                ],
            }
        ]
        return service, batch

    def preprocess(self, data: list[dict], context: Any) -> list[Item]:
        """Decode every item with its own Content-Type."""
        contexts = [RequestContext(context, idx) for idx in range(len(data))]
        items = [
            Item(_body(request), ctx.request_header("Content-Type"), ctx.request_header("Accept"), ctx)
            for request, ctx in zip(data, contexts, strict=True)
        ]
        self._decode(items)
        return items

    def _decode(self, items: list[Item]) -> None:
        for item in items:
            if item.body is None:
                kind = codecs.media_type(item.content_type) or "this request"
                item.error = UnsupportedContentType(f"no request body found; {kind} is not supported")
            elif "transform_fn" not in self.model.hooks:
                self._guard(item, lambda it=item: self.model.decode(it.body, it.content_type, it.context), "data")

    def inference(self, items: list[Item], context: Any) -> list[Item]:
        """Run the model on every decoded item: stacked where they fit together (``batching``), else one by one
        (``transform_fn`` does the whole request)."""
        waiting = [item for item in items if item.error is None]
        if "transform_fn" in self.model.hooks:
            for item in waiting:
                self._guard(
                    item,
                    lambda it=item: self.model.transform(it.body, it.content_type, it.accept, it.context),
                    "prediction",
                )
            return items
        if self.stacking and len(waiting) > 1:
            from handler import batching  # imports torch: the model's process has it by now

            for group in batching.groups([item.data for item in waiting]):
                members = [waiting[i] for i in group]
                if len(members) == 1 or not self._predict_stacked(members):
                    for item in members:
                        self._guard(item, lambda it=item: self.model.predict(it.data, it.context), "prediction")
            return items
        for item in waiting:
            self._guard(item, lambda it=item: self.model.predict(it.data, it.context), "prediction")
        return items

    def _predict_stacked(self, members: list[Item]) -> bool:
        """One forward pass for ``members``; False (nothing stored) when it failed or was not batch-aligned, so
        each item runs alone and fails, if it does, on its own."""
        from handler import batching

        first = members[0]
        try:
            with first.scope():
                outputs = batching.run_stacked(
                    [item.data for item in members], lambda batch: self.model.predict(batch, first.context)
                )
        except Exception as exc:  # one item may be the cause: each runs alone and gets its own error
            log.info("a stacked batch of %d failed (%s); running its items one by one", len(members), exc)
            return False
        if outputs is None:
            log.warning("the model's output is not split by rows; batches run item by item from now on")
            self.stacking = False
            return False
        for item, output in zip(members, outputs, strict=True):
            item.prediction = output
        return True

    def postprocess(self, items: list[Item], context: Any) -> list[bytes]:
        """Encode every item for its own Accept; errors become their status and a JSON body."""
        self._encode(items)
        responses = []
        for idx, item in enumerate(items):
            if item.error is not None:
                context.set_response_status(item.error.status, ascii_safe(str(item.error)[:MAX_MESSAGE]), idx)
                context.set_response_content_type(idx, codecs.JSON)
                responses.append(item.error.body(MAX_MESSAGE))
            else:
                body, content_type = item.prediction
                context.set_response_content_type(idx, ascii_safe(content_type))
                responses.append(body)
        return responses

    def _encode(self, items: list[Item]) -> None:
        if "transform_fn" in self.model.hooks:
            return
        for item in items:
            if item.error is None:
                self._guard(item, lambda it=item: self.model.encode(it.prediction, it.accept, it.context), "prediction")

    def _serve(self, items: list[Item]) -> None:
        """The request path without MMS's context: decode, predict, encode (warm-up requests)."""
        self._decode(items)
        self.inference(items, None)
        self._encode(items)

    def handle(self, data: list[dict] | None, context: Any) -> list[bytes] | None:
        if data is None:
            self.initialize(context)
            return None
        received, started = time.time(), time.perf_counter()
        responses = self.postprocess(self.inference(self.preprocess(data, context), context), context)
        value = timing.format_timing(received, time.perf_counter() - started, len(data))
        for idx in range(len(data)):
            context.set_response_header(idx, timing.HEADER, value)
        return responses

    @staticmethod
    def _guard(item: Item, stage: Any, field: str) -> None:
        """Run one stage of one item, storing its result or its typed error (logged with its TargetModel)."""
        with item.scope():
            try:
                setattr(item, field, stage())
            except ServingError as exc:
                item.error = exc
                if exc.status >= 500:
                    log.error("request failed (%d): %s", exc.status, exc, exc_info=exc.__cause__ or exc)
            except Exception as exc:  # a bug outside the typed paths still answers this item only
                item.error = OutOfMemory(brief(exc)) if is_out_of_memory(exc) else PredictionError(brief(exc))
                log.exception("request failed")
