"""The handler's part of each answer's time, in one response header the front reads and removes.

``X-Torch-Mme-Timing: received=<epoch seconds>;inference=<seconds>;batch=<n>``: when the handler got
the batch the request was in (the front subtracts when it sent it: MMS's queue and batching), how long
the handler spent on that batch, and how many requests it held. Standard library only: it is
imported in every model process and by the front.
"""

from __future__ import annotations

HEADER = "X-Torch-Mme-Timing"


def format_timing(received: float, inference_s: float, batch: int) -> str:
    return f"received={received:.6f};inference={inference_s:.6f};batch={batch}"


def parse_timing(value: str) -> dict[str, float]:
    """The header's numbers by name; unknown or malformed parts are left out."""
    parts: dict[str, float] = {}
    for part in value.split(";"):
        key, _, number = part.partition("=")
        try:
            parts[key.strip()] = float(number)
        except ValueError:
            continue
    return parts
