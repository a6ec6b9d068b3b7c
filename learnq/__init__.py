"""learnq: make neural networks small without making them wrong.

Quantization-friendly training, learned quantization during training, post-training quantization and honest,
bit-packed model files. See README.md for the order of operations.
"""

from __future__ import annotations

__version__ = "0.1.0"

from learnq.checkpoint import load as load  # noqa: E402  (after __version__: modules may import it)
from learnq.checkpoint import save as save  # noqa: E402
