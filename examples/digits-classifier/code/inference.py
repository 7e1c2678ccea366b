"""Serving hooks for the digits classifier.

Input, handwritten digits as scikit-learn's digits data has them (8x8, grey, 0 = background,
16 = ink), or pictures that are turned into that:
  image/png, image/jpeg  one picture of one digit filling the frame. Its size is read from the
                         header and a picture over 4096x4096 pixels (MAX_PIXELS) is refused before
                         anything is decoded; then it is decoded with Pillow, made grey, shrunk to 8x8
                         with a box filter (each pixel the mean of its block, as the digits data was
                         made) and scaled to 0..16. A picture with a light border (dark ink on paper)
                         is inverted to light ink on a dark ground.
  application/x-npy      8x8 images, values 0..16, shaped (N, 8, 8) or (8, 8)
  application/json       the same as a nested list
Output: {"labels": [...], "probabilities": [[10 floats], ...]} as application/json (or
application/x-npz with those two arrays).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch
from PIL import Image
from torch import nn

SIDE = 8
N_CLASSES = 10
MAX_PIXEL = 16.0
MAX_PIXELS = 4096 * 4096
NPY = "application/x-npy"
JSON = "application/json"
IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}


class DigitsMLP(nn.Module):
    """64 -> 64 -> 10 MLP over flattened 8x8 images; returns logits."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images / MAX_PIXEL)


def model_fn(model_dir: str) -> nn.Module:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the server sets this worker's GPU
    model = DigitsMLP()
    state = torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def input_fn(request_body: bytes, content_type: str) -> torch.Tensor:
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind in IMAGE_FORMATS:
        return _images(image_to_digit(request_body, IMAGE_FORMATS[kind]))
    if kind == NPY:
        try:
            array = np.load(io.BytesIO(request_body), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, OSError, EOFError... for a bad file
            raise ValueError(f"body is not a valid .npy array: {exc}") from None
        if not isinstance(array, np.ndarray):
            raise ValueError("body is not a single .npy array")
    elif kind == JSON:
        try:
            value = json.loads(request_body)
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError("JSON body must be a nested list of numbers shaped (N, 8, 8) or (8, 8)") from None
    else:
        raise ValueError(f"unsupported content type {content_type!r}; send image/png, image/jpeg, {NPY} or {JSON}")
    return _images(array)


def image_to_digit(body: bytes, image_format: str) -> np.ndarray:
    """A PNG or JPEG picture -> one 8x8 float32 image, values 0..16, light ink on a dark ground."""
    try:
        image = Image.open(io.BytesIO(body), formats=[image_format])  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ValueError(f"the image is too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises UnidentifiedImageError, SyntaxError, struct.error...
        raise ValueError(f"body is not a valid {image_format} image ({type(exc).__name__}: {exc})") from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(
                f"the image is {width}x{height} = {width * height:,} pixels; the limit is {MAX_PIXELS:,} pixels"
            )
        if width < 1 or height < 1:
            raise ValueError("the image is empty")
        try:
            if image.format == "JPEG":
                image.draft("L", (SIDE * 8, SIDE * 8))  # let the JPEG decoder shrink a big picture (by 2, 4 or 8)
            grey = image.convert("L")  # decodes (the first frame, for an animated PNG)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: OSError, SyntaxError, zlib.error...
            raise ValueError(f"the {image_format} image could not be decoded ({type(exc).__name__}: {exc})") from None
    pixels = np.asarray(grey)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    small = np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32) * (MAX_PIXEL / 255.0)
    if np.median(border) > 127.5:  # a light ground: dark ink on paper
        small = MAX_PIXEL - small
    return small


def _images(array: np.ndarray) -> torch.Tensor:
    if array.dtype.kind not in "iuf":
        raise ValueError(f"pixel values must be numbers, not {array.dtype}")
    if array.shape == (SIDE, SIDE):
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1:] != (SIDE, SIDE) or array.shape[0] == 0:
        raise ValueError(f"expected images shaped (N, 8, 8) or (8, 8), got shape {tuple(array.shape)}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > MAX_PIXEL:
        raise ValueError("pixel values must lie in 0..16 (scikit-learn digits scale); rescale 0..255 images")
    return torch.from_numpy(array)


def predict_fn(data: torch.Tensor, model: nn.Module) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():  # a user's predict_fn runs as it is, as in SageMaker: no gradients needed here
        return torch.softmax(model(data.to(device)), dim=1)


def output_fn(prediction: torch.Tensor, accept: str) -> dict:
    """Labels and class probabilities; the server writes them as Accept asks (JSON or .npz, else 406)."""
    probabilities = prediction.detach().float().cpu()
    return {"labels": probabilities.argmax(dim=1), "probabilities": probabilities}
