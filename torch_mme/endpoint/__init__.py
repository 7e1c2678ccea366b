"""The platform side: plays SageMaker's part in front of the container.

TargetModel routing, download, safe extraction, LoadModel, eviction on 507.
"""
