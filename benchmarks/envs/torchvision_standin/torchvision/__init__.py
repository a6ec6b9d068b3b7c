"""Stand-in for the torchvision names that peer libraries import in learnq's benchmark venv (.venv-bench).

This is NOT torchvision. PyPI's torchvision wheels are CUDA builds that fail beside the CPU torch==2.13.0
("RuntimeError: operator torchvision::nms does not exist"), yet aimet-torch imports torchvision at module level
(aimet_torch/utils.py, onnx_utils.py, _base/nn/modules/custom.py) and coremltools.optimize.torch's graph utilities
refuse to trace without it. Only the names those imports touch exist here: the tiny ones are implemented exactly
(``ops.stochastic_depth``, ``ops.misc.Permute``, ``transforms.Compose``); everything else raises NotImplementedError
when used, naming this stand-in, so a benchmark can never silently run on a fake.
"""

from torchvision import datasets, ops, transforms

__version__ = "0.0.0+learnq.standin"
STANDIN = True

__all__ = ["datasets", "ops", "transforms", "STANDIN", "__version__"]
