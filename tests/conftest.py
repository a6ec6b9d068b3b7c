"""Suite-wide settings: one torch thread per test process (the suite runs as 2 xdist workers on 2 cores; torch's
default thread pool oversubscribes the cores and makes tiny training steps 100x slower)."""

from __future__ import annotations

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
