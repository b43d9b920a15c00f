"""ONNX export and Triton model-repository generation (installed as ``sidyp_prod.export``)."""
