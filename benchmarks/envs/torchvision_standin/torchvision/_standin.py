"""The one error every unimplemented stand-in name raises."""


def not_provided(name: str) -> NotImplementedError:
    return NotImplementedError(
        f"torchvision.{name} is not available: this is learnq's benchmark-only torchvision stand-in "
        "(benchmarks/envs/torchvision_standin), installed because PyPI's torchvision does not load beside "
        "torch==2.13.0+cpu. Benchmarks must not use torchvision."
    )
