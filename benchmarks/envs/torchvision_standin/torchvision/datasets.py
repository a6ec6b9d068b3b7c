"""torchvision.datasets stand-in: FakeData exists as a type (aimet's fake loader names it) and raises when built."""

from torchvision._standin import not_provided


class FakeData:
    def __init__(self, *args, **kwargs):
        raise not_provided("datasets.FakeData")


__all__ = ["FakeData"]
