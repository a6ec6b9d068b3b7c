"""Seeds and random-number-generator states: what makes a training run repeatable and exactly resumable.

``set_seed`` seeds every global generator a training step may draw from (Python ``random``, NumPy's global
generator, torch on CPU and CUDA). ``capture_rng_state`` / ``restore_rng_state`` move those generators' states in and
out of a dict of tensors and plain Python values, so a checkpoint holding them can be read back with
``torch.load(..., weights_only=True)`` (no pickled objects).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from learnq.errors import CheckpointError, ConfigError

_MAX_SEED = 2**32 - 1  # NumPy's global generator takes seeds in [0, 2**32)


def set_seed(seed: int) -> None:
    """Seed Python ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    Also turns on the cheap determinism switches: cuDNN picks deterministic kernels and does not benchmark. (The
    global ``torch.use_deterministic_algorithms`` is left alone: it makes some CUDA ops raise and needs an environment
    variable set before CUDA starts.) Same seed, same machine, same thread count: same result.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise ConfigError(f"seed must be an int in [0, {_MAX_SEED}], got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (for data loaders: shuffling never touches the global RNG)."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The state of every global generator (and of the named extra ``generators``), as tensors and plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Put back what ``capture_rng_state`` returned (and the named extra ``generators``' states).

    Raises ``CheckpointError`` when ``state`` misses a part or a named generator.
    """
    try:
        torch.set_rng_state(state["torch"].cpu())
        cuda_states = state["cuda"]
        if cuda_states and torch.cuda.is_available():
            if len(cuda_states) != torch.cuda.device_count():
                raise CheckpointError(
                    f"the checkpoint holds the RNG state of {len(cuda_states)} CUDA devices but this machine has "
                    f"{torch.cuda.device_count()}; resume on the same kind of machine or start a fresh run"
                )
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        npy = state["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        saved_generators = state["generators"]
        for name, gen in (generators or {}).items():
            gen.set_state(saved_generators[name].cpu())
    except KeyError as exc:
        raise CheckpointError(
            f"the RNG state in the checkpoint misses {exc}; the file was not written by this version of "
            "learnq.pipeline.train: start a fresh run"
        ) from exc


__all__ = ["set_seed", "make_generator", "capture_rng_state", "restore_rng_state"]
