"""Rows of numbers from a text/csv or application/json request body.

text/csv          one row per line, values in the model's feature order; or a first line naming the
                  columns (in any order), the rows following in that order
application/json  a list of rows ``[[1.0, 2.0, ...], ...]``, one row ``[1.0, 2.0, ...]``, a list of
                  objects keyed by feature name ``[{"age": 59, ...}, ...]``, or one object

Anything else, a wrong number of values, a missing or unknown feature, or a value that is not a finite
number raises ValueError, which the server answers with 400 and the message.
"""

from __future__ import annotations

import json
import math

import numpy as np

CSV = "text/csv"
JSON = "application/json"
MAX_ROWS = 10_000


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def parse_rows(body: bytes | str, content_type: str, features: list[str]) -> np.ndarray:
    """A float32 array shaped (rows, len(features)), columns in ``features`` order.

    ``body`` is ``str`` for CSV and JSON (SageMaker's toolkit decodes those before ``input_fn``), bytes otherwise.
    """
    kind = media_type(content_type)
    if kind not in (CSV, JSON):
        raise ValueError(f"unsupported content type {content_type!r}; send {CSV} or {JSON}")
    try:
        text = body.lstrip("﻿") if isinstance(body, str) else body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8 text") from None
    rows = _csv_rows(text, features) if kind == CSV else _json_rows(text, features)
    if not rows:
        raise ValueError("the body holds no rows")
    if len(rows) > MAX_ROWS:
        raise ValueError(f"the body holds {len(rows)} rows; send at most {MAX_ROWS} per request")
    return np.asarray(rows, dtype=np.float32)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} is {value!r}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{where} is not a finite number")
    return number


def _cell(text: str, where: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{where} is {text!r}, not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{where} is not a finite number")
    return number


def _csv_rows(text: str, features: list[str]) -> list[list[float]]:
    lines = [line for line in text.splitlines() if line.strip()]
    order = None
    if lines:
        first = [cell.strip() for cell in lines[0].split(",")]
        try:
            float(first[0])
        except ValueError:  # a header line: the columns by name
            unknown = sorted(set(first) - set(features))
            missing = [name for name in features if name not in first]
            if unknown or missing or len(first) != len(features):
                raise ValueError(
                    f"the CSV header must name each feature once: {', '.join(features)}"
                    + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                    + (f"; missing: {', '.join(missing)}" if missing else "")
                ) from None
            order = [first.index(name) for name in features]
            lines = lines[1:]
    rows = []
    for n, line in enumerate(lines, 1):
        cells = line.split(",")
        if len(cells) != len(features):
            raise ValueError(f"CSV row {n} has {len(cells)} values; the model takes {len(features)}")
        values = [_cell(cell.strip(), f"CSV row {n} column {i + 1}") for i, cell in enumerate(cells)]
        rows.append([values[i] for i in order] if order else values)
    return rows


def _json_rows(text: str, features: list[str]) -> list[list[float]]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    if isinstance(value, dict) or (isinstance(value, list) and value and not isinstance(value[0], (list, dict))):
        value = [value]  # one row
    if not isinstance(value, list):
        raise ValueError("JSON body must be a list of rows, a list of objects, one row or one object")
    rows = []
    for n, item in enumerate(value, 1):
        if isinstance(item, dict):
            unknown = sorted(set(item) - set(features))
            missing = [name for name in features if name not in item]
            if unknown or missing:
                raise ValueError(
                    f"JSON object {n}: "
                    + "; ".join(
                        part
                        for part in (
                            f"missing {', '.join(missing)}" if missing else "",
                            f"unknown {', '.join(unknown)}" if unknown else "",
                        )
                        if part
                    )
                    + f" (features: {', '.join(features)})"
                )
            rows.append([_number(item[name], f"JSON object {n} {name!r}") for name in features])
        elif isinstance(item, list):
            if len(item) != len(features):
                raise ValueError(f"JSON row {n} has {len(item)} values; the model takes {len(features)}")
            rows.append([_number(v, f"JSON row {n} value {i + 1}") for i, v in enumerate(item)])
        else:
            raise ValueError(f"JSON item {n} is neither a row (a list) nor an object")
    return rows
