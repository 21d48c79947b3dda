"""Triton Python-backend model: runs the `model.onnx` beside it with ONNX Runtime on the CPU.

The source of every `model_repository/<model>/<version>/model.py` (copied there by
`python -m services.detector.triton_repository`). Used by the embedded CPU server: the
`nvidia-pytriton` wheel has no ONNX Runtime backend. Input `images` uint8 [batch, H, W, 3];
output: the graph's one output, `detections` float32 (or the crop classifier's `probabilities`).
A graph that takes one image at a time (Faster R-CNN) is run image by image and its [n, 6] boxes
are padded to [max_boxes, 6] with zero rows, so a batch stays one tensor. Config parameters:
`ort_intra_op_threads` (0 = all cores), `max_boxes`.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        threads = int(parameters.get("ort_intra_op_threads", {}).get("string_value", "0"))
        self.max_boxes = int(parameters.get("max_boxes", {}).get("string_value", "100"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        model_path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.per_image = self.session.get_inputs()[0].shape[0] == 1
        self.output_name = self.session.get_outputs()[0].name

    def _run(self, images):
        if not self.per_image:
            return self.session.run([self.output_name], {"images": images})[0].astype(np.float32)
        padded = np.zeros((len(images), self.max_boxes, 6), np.float32)
        for i in range(len(images)):
            boxes = self.session.run(["detections"], {"images": images[i : i + 1]})[0][: self.max_boxes]
            padded[i, : len(boxes)] = boxes
        return padded

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
            output = pb_utils.Tensor(self.output_name, self._run(images))
            responses.append(pb_utils.InferenceResponse([output]))
        return responses
