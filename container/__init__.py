"""Container tooling: the image's requirements and the engine helpers for its tests and benchmark."""
