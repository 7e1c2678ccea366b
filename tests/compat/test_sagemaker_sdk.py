"""The SageMaker Python SDK as a client of ``torch-mme endpoint``: what a notebook written for SageMaker runs.

``MultiDataModel.add_model`` uploads to the S3 prefix (moto on 127.0.0.1), ``list_models`` lists it, and
``Predictor`` / ``PyTorchPredictor`` call the local endpoint with ``target_model=`` and the SDK's own JSON,
CSV and NumPy serializers and deserializers. Nothing in the SDK is patched: its ``Session`` is given a
sagemaker-runtime client whose ``endpoint_url`` is the local endpoint, and S3 is reached through
``AWS_ENDPOINT_URL_S3``, as boto3 reads it.
"""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest
import torch

from tests.compat import zoo
from tests.s3 import KEY, REGION, moto_s3
from torch_mme.tools.local_server import LocalEndpoint
from torch_mme.tools.packaging import pack

sagemaker = pytest.importorskip("sagemaker", reason="the SageMaker Python SDK is in the test extras")

X = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]
PREFIX = "s3://models/mme/"


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory):
    """moto S3, an endpoint reading its prefix, a SageMaker ``Session`` pointed at both, a MultiDataModel."""
    from sagemaker.multidatamodel import MultiDataModel
    from sagemaker.session import Session

    base = tmp_path_factory.mktemp("sdk")
    zoo.build(base / "build")
    for name in ("default_linear", "lifecycle_context"):
        pack(str(base / "build" / name), str(base / f"{name}.tar.gz"))
    mp = pytest.MonkeyPatch()
    with moto_s3() as (s3_url, env):
        mp.setenv("AWS_ENDPOINT_URL_S3", s3_url)  # S3 only: the runtime client gets its own endpoint_url
        mp.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
        boto3.client(
            "s3", endpoint_url=s3_url, region_name=REGION, aws_access_key_id=KEY, aws_secret_access_key=KEY
        ).create_bucket(Bucket="models")
        with (
            open(base / "endpoint.log", "wb") as log,
            LocalEndpoint(PREFIX.rstrip("/"), str(base / "models"), env=env, log=log) as endpoint,
        ):
            boto_session = boto3.Session(aws_access_key_id=KEY, aws_secret_access_key=KEY, region_name=REGION)
            runtime = boto_session.client("sagemaker-runtime", endpoint_url=endpoint.url)
            session = Session(boto_session=boto_session, sagemaker_runtime_client=runtime, default_bucket="models")
            mdm = MultiDataModel(
                name="torch-mme",
                model_data_prefix=PREFIX,
                image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/torch-mme:1.0",
                role="arn:aws:iam::123456789012:role/SageMakerRole",
                sagemaker_session=session,
            )
            mdm.add_model(model_data_source=str(base / "default_linear.tar.gz"), model_data_path="linear.tar.gz")
            mdm.add_model(model_data_source=str(base / "lifecycle_context.tar.gz"), model_data_path="team/ctx.tar.gz")
            yield {"session": session, "mdm": mdm, "endpoint": endpoint, "base": base}
    mp.undo()


def expected() -> np.ndarray:
    with torch.no_grad():
        return zoo.linear()(torch.tensor(X)).numpy()


def test_multi_data_model_lists_what_add_model_uploaded(sdk):
    assert sorted(sdk["mdm"].list_models()) == ["linear.tar.gz", "team/ctx.tar.gz"]


def predictor(sdk, serializer, deserializer):
    from sagemaker.predictor import Predictor

    return Predictor("local", sagemaker_session=sdk["session"], serializer=serializer, deserializer=deserializer)


def test_json_serializer_and_deserializer(sdk):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import JSONSerializer

    result = predictor(sdk, JSONSerializer(), JSONDeserializer()).predict(X, target_model="linear.tar.gz")
    np.testing.assert_allclose(result, expected(), atol=1e-6)


def test_csv_serializer_and_deserializer(sdk):
    from sagemaker.deserializers import CSVDeserializer
    from sagemaker.serializers import CSVSerializer

    rows = predictor(sdk, CSVSerializer(), CSVDeserializer()).predict(X, target_model="linear.tar.gz")
    np.testing.assert_allclose(np.array(rows, dtype=np.float32), expected(), atol=1e-6)


def test_pytorch_predictor_with_numpy(sdk):
    from sagemaker.pytorch import PyTorchPredictor

    pytorch_predictor = PyTorchPredictor("local", sagemaker_session=sdk["session"])  # NumPy in and out
    result = pytorch_predictor.predict(np.array(X, dtype=np.float32), target_model="linear.tar.gz")
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected(), atol=1e-6)


def test_a_target_model_with_a_leading_slash_as_in_aws_examples(sdk):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import JSONSerializer

    result = predictor(sdk, JSONSerializer(), JSONDeserializer()).predict(X, target_model="/linear.tar.gz")
    np.testing.assert_allclose(result, expected(), atol=1e-6)


def test_custom_attributes_and_the_target_model_reach_the_hooks(sdk):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import JSONSerializer

    answer = predictor(sdk, JSONSerializer(), JSONDeserializer()).predict(
        X, target_model="team/ctx.tar.gz", custom_attributes="trace=sdk-1"
    )
    assert answer["context"]["custom_attributes"] == "trace=sdk-1"
    assert answer["context"]["target_model"] == "team/ctx.tar.gz"  # as the client sent it


def test_boto3_sees_the_custom_attributes_the_model_set(sdk):
    runtime = sdk["session"].sagemaker_runtime_client
    response = runtime.invoke_endpoint(
        EndpointName="local",
        TargetModel="team/ctx.tar.gz",
        ContentType="application/json",
        Accept="application/json",
        CustomAttributes="trace=boto-2",
        Body=json.dumps(X).encode(),
    )
    assert response["CustomAttributes"] == "answered=trace=boto-2"
