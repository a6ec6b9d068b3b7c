"""`learnq report`: the Pareto front of run and sweep directories, as JSON and as a table, written to --out; user
errors end with exit status 2 and one line on stderr."""

from __future__ import annotations

import json
from pathlib import Path

from learnq.cli import main
from learnq.pipeline.report import PNG_SIGNATURE


def write_run(path: Path, rows: list[tuple[str, float, float, int]], trial: int | None = None) -> Path:
    path.mkdir(parents=True)
    records = []
    for method, bits, accuracy, size in rows:
        name = f"{method}-w{bits:g}.safetensors"
        (path / name).write_bytes(b"\0" * size)
        records.append({"method": method, "bits": bits, "accuracy": accuracy, "file": name, "file_bytes": size,
                        "ratio": 1000 / size})
    (path / "metrics.json").write_text(json.dumps({"version": 1, "rows": records}))
    if trial is not None:
        (path / "trial.json").write_text(json.dumps({"number": trial, "params": {"variant.bits": bits}}))
    return path


def test_report_json_and_files(tmp_path, capsys):
    run = write_run(tmp_path / "run", [("float", 32, 0.95, 900), ("minmax", 4, 0.93, 300), ("minmax", 2, 0.5, 200)])
    sweep = tmp_path / "sweep"
    write_run(sweep / "trial-0", [("ste", 2, 0.91, 210)], trial=0)
    write_run(sweep / "trial-1", [("ste", 3, 0.90, 260)], trial=1)  # beaten by ste-2 (more accurate, smaller)
    out = tmp_path / "rep"
    assert main(["report", str(run), str(sweep), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    labels = [f"{report['points'][i]['method']}{report['points'][i]['bits']}" for i in report["front"]]
    assert labels == ["minmax2", "ste2", "minmax4", "float32"]
    assert report["points"][3]["trial"] == 0 and report["points"][3]["run"] == str(sweep / "trial-0")
    assert report["files"] == [str(out / "pareto.md"), str(out / "pareto.png")] and report["skipped"] == []
    assert (out / "pareto.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "[trial 1](../sweep/trial-1)" in (out / "pareto.md").read_text()


def test_report_table(tmp_path, capsys):
    run = write_run(tmp_path / "run", [("minmax", 8, 0.9, 500), ("minmax", 4, 0.95, 300)])
    (tmp_path / "sweep" / "trial-0").mkdir(parents=True)  # an unfinished trial of a sweep
    assert main(["report", str(run), str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split() == ["method", "bits", "test", "acc", "file", "size", "run"]
    assert lines[2].split()[:3] == ["minmax", "4", "95.00%"] and len(lines[2].split()) == 6
    assert "1 of 2 models on the Pareto front; 1 unfinished trial directories skipped" in text


def test_report_errors_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("learnq report: error: ") and "no such directory" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "rep")]) == 2
    assert "neither a run directory" in capsys.readouterr().err
