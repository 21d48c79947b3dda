"""Triton Python-backend model: runs `model.onnx` beside this file with ONNX Runtime on the CPU.

Used by the embedded CPU server (the `nvidia-pytriton` wheel has no ONNX Runtime backend).
Input `images` uint8 [batch, H, W, 3]; output `detections` float32, as the ONNX graph defines.
The `ort_intra_op_threads` config parameter bounds its CPU threads (0 = all cores).
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        threads = int(config.get("parameters", {}).get("ort_intra_op_threads", {}).get("string_value", "0"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        model_path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
            detections = self.session.run(["detections"], {"images": images})[0].astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("detections", detections)]))
        return responses
