"""learnq.pipeline.report: report.md contents, valid PNG plots, and the error when matplotlib is missing."""

from __future__ import annotations

import builtins
import struct

import pytest

from learnq.errors import ConfigError
from learnq.pipeline.recipe import parse_recipe
from learnq.pipeline.report import (
    PNG_SIGNATURE,
    format_bytes,
    markdown_report,
    markdown_table,
    plot_accuracy_vs_size,
    write_report,
)

HISTORY = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 10, "test_loss": 1.1 / e,
            "test_acc": 0.45 + e / 10, "extra": {}, "lr": 0.01, "seconds": 0.1} for e in (1, 2, 3)]
ROWS = [{"method": "float", "bits": 32, "accuracy": 0.98, "file": "model.safetensors", "file_bytes": 20000,
         "ratio": 0.95},
        {"method": "minmax", "bits": 8, "accuracy": 0.975, "file": "minmax-w8.safetensors", "file_bytes": 6000,
         "ratio": 3.1666},
        {"method": "minmax", "bits": 2, "accuracy": 0.5, "file": "minmax-w2.safetensors", "file_bytes": 2048,
         "ratio": 9.2773}]
TEST = {"loss": 0.1234, "accuracy": 0.98, "n": 359}


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_write_report_writes_markdown_and_valid_pngs(tmp_path):
    recipe = parse_recipe('name = "r"\ndescription = "a test"\n')
    written = write_report(tmp_path, recipe=recipe, history=HISTORY, rows=ROWS, test=TEST)
    assert [p.name for p in written] == ["report.md", "training.png", "accuracy_vs_size.png"]
    assert _png_size(tmp_path / "training.png") == (900, 350)  # figsize 9x3.5 inches at 100 dpi
    assert _png_size(tmp_path / "accuracy_vs_size.png") == (600, 400)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# learnq run: r\n\na test\n")
    assert "| minmax | 8 | 97.50 | `minmax-w8.safetensors` | 6000 | 5.9 KiB | 3.17x |" in md
    assert "| 2 | 0.5000 | 70.00 | 0.5500 | 65.00 | 0.01 |" in md
    assert "![training curves](training.png)" in md and "accuracy 98.00% (n = 359), loss 0.1234" in md


def test_plots_false_writes_no_png(tmp_path):
    recipe = parse_recipe("[report]\nplots = false\n")
    written = write_report(tmp_path, recipe=recipe, history=HISTORY, rows=ROWS, test=TEST, plots=False)
    assert [p.name for p in written] == ["report.md"]
    assert not list(tmp_path.glob("*.png"))
    assert "training.png" not in (tmp_path / "report.md").read_text()


def test_history_without_test_split_and_single_point_plot(tmp_path):
    history = [{**h, "test_loss": None, "test_acc": None} for h in HISTORY]
    md = markdown_report(recipe=parse_recipe(""), history=history, rows=ROWS[:1], test=TEST)
    assert "| 1 | 1.0000 | 60.00 | - | - | 0.01 |" in md
    _png_size(plot_accuracy_vs_size(ROWS[:1], tmp_path / "one.png"))


def test_missing_matplotlib_is_a_config_error_naming_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match=r"pip install 'learnq\[plots\]'"):
        write_report(tmp_path, recipe=parse_recipe(""), history=HISTORY, rows=ROWS, test=TEST)
    assert not (tmp_path / "report.md").exists()  # nothing half-written
    write_report(tmp_path, recipe=parse_recipe(""), history=HISTORY, rows=ROWS, test=TEST, plots=False)
    assert (tmp_path / "report.md").is_file()


def test_helpers():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**20) == "3.0 MiB"
    assert markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n| --- | --- |\n| 1 | 2 |"
