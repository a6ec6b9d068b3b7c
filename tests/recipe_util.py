"""The tiny recipe of the pipeline tests: digits, a small MLP, a short training (docs/pipeline.md for the keys).

:func:`tiny_recipe` writes its TOML text; every test file that runs the pipeline starts from it and appends its own
tables (``[[variants]]``, ``[qat]``, ``[sweep]``...). A keyword set to None leaves its key out (the recipe default).
"""

from __future__ import annotations

from collections.abc import Sequence


def _line(key: str, value: object) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = f'"{value}"'
    else:
        text = repr(value)
    return f"{key} = {text}\n"


def tiny_recipe(name: str | None = "tiny", *, seed: int | None = None, version: int | None = None,
                limit: int | None = 200, calib_size: int | None = 32, test_fraction: float | None = None,
                hidden: Sequence[int] = (8,), epochs: int = 1, batch_size: int | None = 50, lr: float | None = 0.02,
                optimizer: str | None = None, plots: bool | None = False, tables: str = "") -> str:
    """The TOML text of the tiny recipe; ``tables`` is appended (more tables: variants, qat, sweep...)."""
    text = ""
    for key, value in (("version", version), ("name", name), ("seed", seed)):
        if value is not None:
            text += _line(key, value)
    text += '\n[data]\nname = "digits"\n'
    for key, value in (("limit", limit), ("calib_size", calib_size), ("test_fraction", test_fraction)):
        if value is not None:
            text += _line(key, value)
    text += f'\n[model]\nname = "mlp"\nargs = {{ hidden = [{", ".join(str(h) for h in hidden)}] }}\n'
    text += "\n[train]\n" + _line("epochs", epochs)
    for key, value in (("batch_size", batch_size), ("lr", lr), ("optimizer", optimizer)):
        if value is not None:
            text += _line(key, value)
    if plots is not None:
        text += "\n[report]\n" + _line("plots", plots)
    return text + ("\n" + tables if tables else "")


__all__ = ["tiny_recipe"]
