"""On PYTHONPATH, this makes torch and transformers impossible to import in this process and in
every Python process it starts (Triton's python-backend stubs, Ray workers): as if the plain
``pip install sidyp-prod``, without the training extra, were all there is."""

import importlib.abc
import sys

BLOCKED = ("torch", "transformers")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: torch-free test)",
                                      name=name)
        return None


sys.meta_path.insert(0, _Blocker())
