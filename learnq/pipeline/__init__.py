"""The pipeline: data, models, training, recipes, runs, sweeps and reports (``learnq run``; docs/pipeline.md)."""

from learnq._lazy import lazy_submodules

SUBMODULES = ("bn_fold", "data", "models", "pareto", "ptq_variants", "qat", "recipe", "report", "run", "run_lock",
              "schema", "sweep", "sweep_space", "train", "variants")
__getattr__, __dir__ = lazy_submodules(__name__, SUBMODULES, globals())  # learnq.pipeline.models etc. on first access
