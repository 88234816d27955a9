# MLServer custom runtime for the tests of `cboserver --backend grpc://`: runs the bundled ONNX
# server model with onnxruntime. A second, independent implementation of the Open Inference
# Protocol (MLServer answers gRPC with typed `contents`, Triton with `raw_output_contents`).
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxClassifier(MLModel):
    async def load(self) -> bool:
        # The uri of model-settings.json, relative to that file.
        path = await get_model_uri(self.settings)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        scores = self.session.run(None, {self.input_name: images})[0]
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("logits", scores.astype(np.float32))],
        )
