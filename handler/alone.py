"""The front's word to MMS's batching that a request is alone for its model, in one request header.

``X-Torch-Mme-Alone: 1``: when the front forwards an invocation and no other request of that model is
in flight in the front, MMS need not wait ``max_batch_delay_ms`` for a batch to fill, and torch-mme's
``Model.pollBatch`` (torch_mme/runtime/java/Model.java, which names it too) sends it at once and removes
the header. The front never forwards a client's own copy (it forwards only Content-Type, Accept and
``X-Amzn-*``); the handler drops it from a request's headers should it ever arrive (stock MMS, without
the compiled classes), so the model's code never sees it. Standard library only, like ``timing``.
"""

from __future__ import annotations

HEADER = "X-Torch-Mme-Alone"


def drop(headers: dict) -> None:
    """Remove the header (any case) from one request's header dict, in place."""
    name = HEADER.lower()
    for key in [k for k in headers if isinstance(k, str) and k.lower() == name]:
        del headers[key]
