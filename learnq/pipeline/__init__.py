"""The pipeline: data, models, training, recipes, runs, sweeps and reports (``learnq run``; docs/pipeline.md)."""

from learnq._lazy import lazy_submodules

SUBMODULES = ("data", "model_files", "models", "pareto", "ptq_variants", "qat_variants", "recipe", "registry", "report",
              "run", "run_lock", "schema", "sections", "sweep", "sweep_space", "train", "training", "variants")
__getattr__, __dir__ = lazy_submodules(__name__, SUBMODULES, globals())  # learnq.pipeline.models etc. on first access
