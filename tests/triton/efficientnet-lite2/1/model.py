# Triton Python-backend model that runs an ONNX classifier with onnxruntime: what the tests use in
# place of Triton's onnxruntime backend, which the PyPI Triton build lacks. It serves the tensors
# of the ONNX file unchanged (one input, one output, FP32, batch first), so cboserver sees the same
# metadata as from the onnxruntime backend.
import json
import os
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params["onnx_model"])
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        # A slow backend for the deadline tests: each batch is announced in the log, then held.
        self.delay_s = float(params.get("delay_ms", "0")) / 1000.0
        # A broken model for the failure tests: every batch fails while this file exists.
        self.fail_while = params.get("fail_while")
        # Batches announced, then held while this file exists (the concurrency test).
        self.hold_while = params.get("hold_while")

    def execute(self, requests):
        # Requests Triton batched together run as one ONNX Runtime call, then are split again.
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [x.shape[0] for x in inputs]
        if self.fail_while and os.path.exists(self.fail_while):
            error = pb_utils.TritonError("cbo-test: the model fails on purpose")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        if self.delay_s > 0:
            pb_utils.Logger.log_info(f"cbo-test: batch of {sum(sizes)} started")
            time.sleep(self.delay_s)
        if self.hold_while:
            pb_utils.Logger.log_info(f"cbo-test: batch of {sum(sizes)} held")
            while os.path.exists(self.hold_while):
                time.sleep(0.01)
        batch = np.concatenate(inputs, axis=0).astype(np.float32, copy=False)
        scores = self.session.run([self.output_name], {self.input_name: batch})[0]
        responses = []
        start = 0
        for n in sizes:
            out = pb_utils.Tensor(self.output_name, scores[start : start + n].astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += n
        return responses
