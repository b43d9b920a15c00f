"""Triton python-backend model: raw text in, the encoder's token ids out.

The first step of the ``sidyp_encode`` ensemble (text -> ``sidyp_tokenizer`` -> ``sidyp_encoder``
-> probs, conditioning, embedding). It runs the bundle's ``tokenizer.json`` (copied next to it)
with ``tokenizers`` alone and pads each request to the width ``refine`` pads its rows to, so a
row sent alone gets the encoder outputs in-process ``refine`` computes for it. Written by
``sidyp-prod export --triton-repo``; imports only the torch-free part of sidyp-prod.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from tokenizers import Tokenizer

        from sidyp_prod.encoder import configure_tokenizer

        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = configure_tokenizer(
            Tokenizer.from_file(str(folder / "tokenizer.json")),
            int(parameters["max_length"]), parameters["pad_token"])
        self.pad_id = int(self.tokenizer.padding["pad_id"])

    def execute(self, requests: list) -> list:
        from sidyp_prod.encoder import pad_ids, padded_width, unpadded_ids

        responses = []
        for request in requests:
            texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in
                     pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)]
            encodings = self.tokenizer.encode_batch(texts)
            rows = unpadded_ids(np.array([e.ids for e in encodings], dtype=np.int64),
                                np.array([e.attention_mask for e in encodings], dtype=np.int64))
            ids, mask = pad_ids(rows, self.pad_id, padded_width(max(len(r) for r in rows)))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]))
        return responses
