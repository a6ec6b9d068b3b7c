"""learnq: make neural networks small without making them wrong.

Quantization-friendly training, learned quantization during training, post-training quantization and honest,
bit-packed model files. See README.md for the order of operations.
"""

from __future__ import annotations

__version__ = "0.1.0"

from learnq.activations import PACT as PACT  # noqa: E402
from learnq.checkpoint import load as load  # noqa: E402  (after __version__: modules may import it)
from learnq.checkpoint import save as save  # noqa: E402
from learnq.prepare import QuantHandle as QuantHandle  # noqa: E402
from learnq.prepare import prepare as prepare  # noqa: E402
from learnq.quantizers import LSQ as LSQ  # noqa: E402
from learnq.quantizers import QAT_METHODS as QAT_METHODS  # noqa: E402
from learnq.quantizers import STE as STE  # noqa: E402
from learnq.quantizers import DiffQ as DiffQ  # noqa: E402
from learnq.quantizers import Nested as Nested  # noqa: E402
