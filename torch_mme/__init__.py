"""torch-mme: host many PyTorch models behind one SageMaker multi-model endpoint.

The rooms, one role each (ARCHITECTURE.md walks a request through them):

- ``handler/`` (a top-level package): what runs inside an MMS worker, one model per process; light to import.
- ``torch_mme.runtime``: the container's main process: ``serve``, the public port's front, model
  lifecycle, admission, the MMS client and its Java decoder, the fork server.
- ``torch_mme.endpoint``: plays SageMaker's part on a developer's machine (``torch-mme endpoint``).
- ``torch_mme.tools``: developer tools: packaging, the demo, the example builders, a local server helper.
- Shared by all of them, each light to import: ``settings`` (the only reader of the environment),
  ``errors`` (the error hierarchy and its JSON body), ``memory`` (the load estimate),
  ``load_report`` (what a worker tells the front about a failed load) and ``common`` (``is_inside``,
  ``format_size``).
"""

__version__ = "0.1.0"
