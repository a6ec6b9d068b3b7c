"""learnq.pipeline.pareto: the front of hand-made points (dominated points, ties, duplicates), collecting rows from
run and sweep directories, and the Markdown/PNG report with relative links."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from learnq.errors import ConfigError
from learnq.pipeline.pareto import collect_points, markdown_pareto, pareto_front, write_pareto_report
from learnq.pipeline.report import PNG_SIGNATURE


def brute_front(points):
    """Non-dominated indices by the definition, O(n^2)."""
    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])
    return {i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)}


def test_front_of_a_hand_made_set():
    points = [(0.90, 100), (0.80, 50), (0.85, 120), (0.95, 300), (0.70, 60), (0.95, 400)]
    # (0.85, 120) is beaten by (0.90, 100); (0.70, 60) by (0.80, 50); (0.95, 400) by (0.95, 300) (a tie in accuracy)
    assert pareto_front(points) == [1, 0, 3]


def test_ties_in_size_keep_the_more_accurate_point_only():
    assert pareto_front([(0.5, 10), (0.7, 10), (0.6, 10)]) == [1]


def test_duplicates_on_the_front_are_all_kept_and_dominated_duplicates_all_dropped():
    points = [(0.9, 100), (0.8, 50), (0.9, 100), (0.7, 80), (0.7, 80)]
    assert pareto_front(points) == [1, 0, 2]


def test_one_point_and_none():
    assert pareto_front([(0.1, 5)]) == [0]
    assert pareto_front([]) == []


def test_front_matches_the_definition_on_random_points_with_ties():
    rng = random.Random(0)
    for _ in range(50):
        points = [(rng.choice([0.5, 0.6, 0.7, 0.8]), rng.choice([10, 20, 30])) for _ in range(rng.randint(1, 12))]
        front = pareto_front(points)
        assert set(front) == brute_front(points)
        sizes = [points[i][1] for i in front]
        assert sizes == sorted(sizes)


@pytest.mark.parametrize("bad", [[(float("nan"), 1)], [(0.5, float("inf"))], [(0.5,)], [("a", 1)]])
def test_bad_points_are_refused(bad):
    with pytest.raises(ConfigError, match="point 0"):
        pareto_front(bad)


def write_run(path: Path, rows: list[dict], trial: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"version": 1, "rows": rows}))
    for row in rows:
        if "file" in row:
            (path / row["file"]).write_bytes(b"x" * row["file_bytes"])
    if trial is not None:
        (path / "trial.json").write_text(json.dumps(trial))
    return path


def row(method, bits, accuracy, file_bytes, file=None):
    return {"method": method, "bits": bits, "accuracy": accuracy, "file": file or f"{method}-w{bits}.safetensors",
            "file_bytes": file_bytes, "ratio": 4000 / file_bytes}


@pytest.fixture()
def dirs(tmp_path):
    run = write_run(tmp_path / "run a", [row("float", 32, 0.97, 4000, "model.safetensors"),
                                          row("minmax", 8, 0.97, 1200), row("minmax", 2, 0.40, 500)])
    sweep = tmp_path / "sweep"
    write_run(sweep / "trial-0", [row("ste", 2, 0.90, 520)], {"number": 0, "params": {"variant.bits": 2}})
    write_run(sweep / "trial-10", [row("diffq", 3.5, 0.95, 800, "diffq.safetensors")],
              {"number": 10, "params": {"variant.method": "diffq", "variant.options.penalty": 0.5}})
    (sweep / "trial-2").mkdir()  # killed before it wrote anything
    (sweep / "study.db").write_bytes(b"")
    return run, sweep


def test_collect_points_reads_runs_and_sweep_trials_in_number_order(dirs):
    run, sweep = dirs
    points, skipped = collect_points([run, sweep, run])  # a directory given twice counts once
    assert [(p["method"], p["bits"]) for p in points] == [("float", 32), ("minmax", 8), ("minmax", 2), ("ste", 2),
                                                            ("diffq", 3.5)]
    assert [p["trial"] for p in points] == [None, None, None, 0, 10]
    assert points[4]["params"] == {"variant.method": "diffq", "variant.options.penalty": 0.5}
    assert skipped == [str(sweep / "trial-2")]


def test_collect_points_errors(tmp_path, dirs):
    with pytest.raises(ConfigError, match="no such directory"):
        collect_points([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a run directory"):
        collect_points([tmp_path / "empty"])
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "metrics.json").write_text(json.dumps({"version": 1, "test": {}}))
    with pytest.raises(ConfigError, match="has no rows"):
        collect_points([trained])
    broken = write_run(tmp_path / "broken", [{"method": "minmax", "accuracy": 0.5}])
    with pytest.raises(ConfigError, match="rows\\[0\\] lacks bits, file, file_bytes"):
        collect_points([broken])


def test_report_files_front_and_relative_links(tmp_path, dirs):
    run, sweep = dirs
    out = tmp_path / "report"
    report = write_pareto_report([run, sweep], out)
    points = report["points"]
    # front by size: minmax-2 (500, 0.40), ste (520, 0.90), diffq (800, 0.95), minmax-8 (1200, 0.97); the float
    # model (4000, 0.97) ties minmax-8 in accuracy and is larger
    assert [points[i]["method"] + str(points[i]["bits"]) for i in report["front"]] == \
        ["minmax2", "ste2", "diffq3.5", "minmax8"]
    assert (out / "pareto.png").read_bytes()[:8] == PNG_SIGNATURE
    text = (out / "pareto.md").read_text()
    links = re.findall(r"\]\(<?([^)>]+)>?\)", text)
    assert "pareto.png" in links
    for link in links:  # every link resolves from the report's folder
        assert (out / link).exists(), link
    assert "[trial 10](../sweep/trial-10)" in text
    assert "(<../run a/minmax-w8.safetensors>)" in text  # a path with a space is bracketed
    assert "penalty=0.5" in text and "variant.method" not in text
    assert "trial-2" in text.split("## Skipped")[1]
    front_table = text.split("## Front")[1].split("## All models")[0]
    assert front_table.count("\n| ") == 2 + 4  # header, rule and the four front models
    all_table = text.split("## All models")[1].split("## Skipped")[0]
    assert all_table.count("| yes |") == 4 and all_table.count("\n| ") == 2 + 5


def test_markdown_without_plot_has_no_image(dirs, tmp_path):
    run, _ = dirs
    points, _ = collect_points([run])
    text = markdown_pareto(points, pareto_front([(p["accuracy"], p["file_bytes"]) for p in points]), tmp_path,
                           plot=False)
    assert "pareto.png" not in text
    assert "3 models from 1 run directories; 2 on the front" in text


def test_report_refuses_an_out_that_is_a_file_and_dirs_without_rows(tmp_path, dirs):
    run, _ = dirs
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        write_pareto_report([run], tmp_path / "f")
    only_killed = tmp_path / "sw"
    (only_killed / "trial-0").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no rows"):
        write_pareto_report([only_killed], tmp_path / "out")
