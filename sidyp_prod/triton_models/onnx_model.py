"""Triton python-backend model: runs ``model.onnx`` from this version folder in ONNX Runtime.

For servers without the onnxruntime backend (the tritonserver of the nvidia-pytriton wheel).
Written by ``sidyp-prod export --triton-repo``; the same ONNX file serves NVIDIA's images through
the native backend (``config.pbtxt``).
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.outputs = [o["name"] for o in config["output"]]
        # The encoder's python configuration names its int8 graph (parameter onnx_file).
        parameters = config.get("parameters", {})
        filename = parameters.get("onnx_file", {}).get("string_value", "model.onnx")
        path = Path(args["model_repository"]) / args["model_version"] / filename
        options = ort.SessionOptions()
        # One thread per instance when the config runs several (batches side by side).
        threads = parameters.get("intra_op_thread_count", {}).get("string_value", "0")
        options.intra_op_num_threads = int(threads)
        # Idle threads must not spin: other models share this host's cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def execute(self, requests: list) -> list:
        """Requests whose tensors agree beyond the batch axis run as one batch."""
        feeds = [
            {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
            for r in requests
        ]
        groups: dict[tuple, list[int]] = {}
        for i, feed in enumerate(feeds):
            groups.setdefault(tuple(feed[n].shape[1:] for n in self.inputs), []).append(i)
        responses: list = [None] * len(requests)
        for members in groups.values():
            sizes = [len(feeds[i][self.inputs[0]]) for i in members]
            merged = {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
            try:
                values = self.session.run(self.outputs, merged)
            except Exception as exc:  # the caller gets the runtime's message, the server lives
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            bounds = np.cumsum([0, *sizes])
            for k, i in enumerate(members):
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(v[bounds[k] : bounds[k + 1]]))
                    for name, v in zip(self.outputs, values, strict=True)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses
