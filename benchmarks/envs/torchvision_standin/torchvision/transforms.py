"""torchvision.transforms stand-in: Compose works; image transforms exist as types and raise when built."""

from torchvision._standin import not_provided


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class _Unavailable:
    _name = "transforms.?"

    def __init__(self, *args, **kwargs):
        raise not_provided(self._name)


class ToTensor(_Unavailable):
    _name = "transforms.ToTensor"


class Normalize(_Unavailable):
    _name = "transforms.Normalize"


class Resize(_Unavailable):
    _name = "transforms.Resize"


__all__ = ["Compose", "ToTensor", "Normalize", "Resize"]
