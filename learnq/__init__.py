"""learnq: make neural networks small without making them wrong.

Quantization-friendly training, learned quantization during training, post-training quantization and honest,
bit-packed model files. See README.md for the order of operations.

``import learnq`` loads the training-time API (``prepare``, the QAT configs, ``PACT``, ``save``, ``load``); the PTQ
config ``learnq.PTQ`` and the other subpackages (``learnq.ptq``, ``learnq.analysis``, ``learnq.pipeline``,
``learnq.export`` ...) are imported on first attribute access (PEP 562), so ``import learnq; learnq.ptq.quantize(...)``
works without making ``import learnq`` slower. docs/architecture.md is the map of the package.
"""

from __future__ import annotations

__version__ = "0.1.0"

from learnq._lazy import lazy_submodules  # noqa: E402
from learnq.act import PACT as PACT  # noqa: E402
from learnq.checkpoint import load as load  # noqa: E402  (after __version__: modules may import it)
from learnq.checkpoint import save as save  # noqa: E402
from learnq.qat import QuantHandle as QuantHandle  # noqa: E402
from learnq.qat import prepare as prepare  # noqa: E402
from learnq.quantizers import DKM as DKM  # noqa: E402
from learnq.quantizers import IPQ as IPQ  # noqa: E402
from learnq.quantizers import LSQ as LSQ  # noqa: E402
from learnq.quantizers import QAT_METHODS as QAT_METHODS  # noqa: E402
from learnq.quantizers import STE as STE  # noqa: E402
from learnq.quantizers import DiffQ as DiffQ  # noqa: E402
from learnq.quantizers import DoReFa as DoReFa  # noqa: E402
from learnq.quantizers import IPQLayerwise as IPQLayerwise  # noqa: E402
from learnq.quantizers import Nested as Nested  # noqa: E402
from learnq.quantizers import QuantNoise as QuantNoise  # noqa: E402

SUBMODULES = ("accounting", "act", "analysis", "atomic_file", "attach", "batches", "bn_fold", "bounded_json",
              "checkpoint", "checks", "cli", "clipping", "clustering", "errors", "evaluation", "export", "fields",
              "entropy_codec", "code_packing",
              "pco_codec",
              "file_layout", "file_records", "granularity", "grid", "layers", "model_file", "optim", "packing",
              "palette", "parametrization", "pipeline", "ptq", "qat", "quantized", "quantizers", "regularizers", "size",
              "ste", "fx_trace",
              "sorted_mse", "kl_histogram")
"""The public subpackages and modules, each reachable as ``learnq.<name>`` after ``import learnq``."""

LAZY_NAMES = {"PTQ": "learnq.ptq.config"}
"""Public names defined in lazy subpackages: ``learnq.PTQ`` is :class:`learnq.ptq.PTQ` (imported on first access)."""

__getattr__, __dir__ = lazy_submodules(__name__, SUBMODULES, globals(), LAZY_NAMES)
