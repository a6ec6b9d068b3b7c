"""learnq.pipeline.sweep / sweep_space: the [sweep] table (validation naming keys), resolving and conditionally
sampling knobs, seeded determinism (also across a resume), resuming without repeating trials, a killed worker's
trial failed and retried, failures, duplicates, and `learnq sweep` end to end on a tiny recipe."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from sweep_util import BASE, SPACE, VARIANT, fake_runner, sweep_of  # noqa: E402

import learnq.pipeline.sweep as sweep_module  # noqa: E402
from learnq.cli import main  # noqa: E402
from learnq.errors import ConfigError, LearnqError  # noqa: E402
from learnq.pipeline.sweep import (  # noqa: E402
    default_storage,
    hide_password,
    open_study,
    run_sweep,
    trial_seed,
)
from learnq.pipeline.sweep_space import parse_sweep_recipe, parse_target, short_params  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

@pytest.fixture()
def tmp(tmp_path):
    """A temporary directory on tmpfs when there is one: SQLite syncs the disk at each of a trial's ~20 commits."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(dir=shm, prefix="learnq-test-sweep-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def trials_of(out: Path, name: str = "tiny-sweep"):
    return optuna.load_study(study_name=name, storage=default_storage(out)).get_trials()


# -- the [sweep] table ---------------------------------------------------------------------------------------------


def test_knobs_parse_into_choices_and_ranges():
    sweep = sweep_of()
    knobs = {k.path: k for k in sweep.knobs}
    assert knobs["variant.method"].is_method and knobs["variant.method"].choices == ("minmax", "diffq", "float")
    assert knobs["variant.bits"].target == ("variants", 0, "bits") and not knobs["variant.bits"].is_method
    pen = knobs["variant.options.penalty"]
    assert (pen.low, pen.high, pen.log, pen.integer) == (1e-4, 1e-1, True, False)
    assert parse_target("regularizers[1].options.alpha") == ("regularizers", 1, "options", "alpha")
    ints = sweep_of(SPACE.replace('"variant.bits" = [2, 3, 4, 8]', '"variant.bits" = { low = 2, high = 8 }'))
    bits = next(k for k in ints.knobs if k.path == "variant.bits")
    assert bits.integer and bits.candidates() == [2, 8]


@pytest.mark.parametrize("space, message", [
    ('[sweep]\nsamplr = "tpe"\n[sweep.space]\n"variant.bits" = [2]', r"sweep\.samplr: unknown key"),
    ('[sweep]\nsampler = "grid"\n[sweep.space]\n"variant.bits" = [2]', r"sweep\.sampler: unknown sampler 'grid'"),
    ('[sweep.space]\n"variant.bits" = { low = 2, hi = 8 }', r'sweep\.space\."variant\.bits"\.hi: unknown key'),
    ('[sweep.space]\n"variant.bits" = { low = 8, high = 2 }', r"low \(8\) must be below high \(2\)"),
    ('[sweep.space]\n"variant.bits" = []', r'"variant\.bits": no choices'),
    ('[sweep.space]\n"variant.bits" = [2, 2]', "listed twice"),
    ('[sweep.space]\n"variant.bits" = [2, 20]', r'"variant\.bits": value 20 .*variants\[0\]\.bits'),
    ('[sweep.space]\n"variant.options.penalty" = [0.1]', r'"variant\.options\.penalty": no searched method'),
    ('[sweep.space]\n"qat.options.threshold" = [0.1]', r'"qat\.options\.threshold": the recipe has no table qat'),
    ('[sweep.space]\n"trian.lr" = [0.1]', "the recipe has no table trian"),
    ('[sweep.space]\n"sed" = [1]', "sed: unknown key"),
    ('[sweep.space]\n"variant..bits" = [2]', "is not a key"),
    ('[sweep.space]\n"variant.method" = ["minmax", "nope"]', "unknown quantization method 'nope'"),
    ("[sweep]\nstartup_trials = -1\n[sweep.space]\n\"variant.bits\" = [2]", r"sweep\.startup_trials: must be >= 0"),
    ("[sweep]\n", r"sweep\.space: empty"),
])
def test_bad_sweep_tables_name_the_key(space, message):
    with pytest.raises(ConfigError, match=message) as info:
        sweep_of(space)
    assert str(info.value).startswith("r.toml: ")


def test_a_sweep_recipe_makes_exactly_one_model():
    two = VARIANT + '[[variants]]\nmethod = "float"\n'
    with pytest.raises(ConfigError, match="exactly one \\[\\[variants\\]\\] table or a \\[qat\\] table; it has 2"):
        sweep_of('[sweep.space]\n"variant.bits" = [2]', variant=two)
    with pytest.raises(ConfigError, match="sweep: missing"):
        parse_sweep_recipe(BASE + VARIANT, "r.toml")


def test_resolve_drops_what_the_method_does_not_take():
    sweep = sweep_of()
    diffq = sweep.resolve({"variant.method": "diffq", "variant.options.penalty": 0.01})
    assert diffq.variants[0].bits is None  # the template's bits = 4: diffq learns its widths
    assert diffq.variants[0].options["penalty"] == 0.01
    minmax = sweep.resolve({"variant.bits": 2, "train.lr": 0.002}, name="t")
    assert (minmax.variants[0].method, minmax.variants[0].bits, minmax.train.lr, minmax.name) == ("minmax", 2, 0.002,
                                                                                                   "t")
    assert sweep.recipe.variants[0].bits == 4  # the base recipe is not changed


def test_sampling_is_conditional_on_the_method():
    sweep = sweep_of()
    fixed = {"variant.method": "diffq", "variant.bits": 8, "variant.options.penalty": 0.01,
             "variant.options.epochs": 1, "train.lr": 0.005}
    assert sweep.sample(optuna.trial.FixedTrial(fixed)) == {k: v for k, v in fixed.items() if k != "variant.bits"}
    fixed["variant.method"] = "minmax"
    assert sweep.sample(optuna.trial.FixedTrial(fixed)) == {"variant.method": "minmax", "variant.bits": 8,
                                                            "train.lr": 0.005}
    fixed["variant.method"] = "float"
    assert sweep.sample(optuna.trial.FixedTrial(fixed)) == {"variant.method": "float", "train.lr": 0.005}


QAT = """
[qat]
method = "nested"
granularity = "row"
[[regularizers]]
name = "kure"
strength = 0.01
"""
QAT_SPACE = """
[sweep]
sampler = "random"
[sweep.space]
"qat.method" = ["nested", "ste"]
"qat.bits" = [2, 4]
"qat.options.threshold" = { low = 1e-12, high = 1e-8, log = true }
"regularizers[0].strength" = { low = 1e-4, high = 1e-1, log = true }
"""


def test_a_qat_recipe_searches_its_qat_table_and_a_method_switch_takes_the_bits_knob():
    sweep = sweep_of(QAT_SPACE, variant=QAT)  # ste needs bits, which the template (nested) has not: the knob has
    fixed = {"qat.method": "ste", "qat.bits": 4, "qat.options.threshold": 1e-10, "regularizers[0].strength": 0.02}
    values = sweep.sample(optuna.trial.FixedTrial(fixed))
    assert values == {"qat.method": "ste", "qat.bits": 4, "regularizers[0].strength": 0.02}
    recipe = sweep.resolve(values)
    assert (recipe.qat.method, recipe.qat.bits, recipe.regularizers[0].strength) == ("ste", 4, 0.02)
    fixed["qat.method"] = "nested"
    assert sweep.resolve(sweep.sample(optuna.trial.FixedTrial(fixed))).qat.options["threshold"] == 1e-10
    with pytest.raises(ConfigError, match=r"sweep\.space: with qat\.method = 'ste', .*qat\.bits: missing"):
        sweep_of(QAT_SPACE.replace('"qat.bits" = [2, 4]\n', ""), variant=QAT)


def test_short_params_and_hidden_passwords():
    assert short_params({"variant.method": "diffq", "variant.bits": 4, "variant.options.penalty": 0.012345,
                         "train.lr": 0.003, "variant.granularity": "tensor"}) == \
        "penalty=0.0123, train.lr=0.003, granularity=tensor"
    assert hide_password("postgresql://me:s3cr@t@db.example:5432/optuna") == "postgresql://me:***@db.example:5432/optuna"
    assert hide_password("sqlite:////tmp/x/study.db") == "sqlite:////tmp/x/study.db"


# -- running studies (fake runner) ---------------------------------------------------------------------------------


def test_seeded_sweeps_sample_the_same_knobs_and_resuming_does_not_change_them(tmp):
    sweep = sweep_of()
    a = run_sweep(sweep, tmp / "a", trials=4, runner=fake_runner)
    b = run_sweep(sweep, tmp / "b", trials=2, runner=fake_runner)
    b = run_sweep(sweep, tmp / "b", trials=4, runner=fake_runner)
    c = run_sweep(sweep.with_seed(7), tmp / "c", trials=4, runner=fake_runner)
    params = [t["params"] for t in a.trials]
    assert len(params) == 4 and [t["params"] for t in b.trials] == params
    assert [t["params"] for t in c.trials] != params
    assert trial_seed(1, 3) == trial_seed(1, 3) != trial_seed(1, 4)
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 4
    for t in a.trials:  # each trial's run directory, its record and the study agree
        assert t["state"] == "complete" and t["run_dir"] == f"trial-{t['number']}"
        info = json.loads((tmp / "a" / t["run_dir"] / "trial.json").read_text())
        assert info["params"] == t["params"] and info["study"] == "tiny-sweep"
        bits = 5 if t["method"] != "minmax" else t["params"]["variant.bits"]
        assert t["file_bytes"] == 100 * bits + 7
    done = [(t["accuracy"], t["file_bytes"]) for t in a.trials]
    assert a.front and all(not any(o[0] >= d[0] and o[1] <= d[1] and o != d for o in done)
                           for d in (done[n] for n in a.front))


def test_failed_trials_do_not_count_and_too_many_stop_the_sweep(tmp):
    calls = []

    def flaky(recipe, out):
        calls.append(out.name)
        if len(calls) == 2:
            raise ConfigError("QAT fine-tuning diverged")
        return fake_runner(recipe, out)

    result = run_sweep(sweep_of(), tmp / "a", trials=3, runner=flaky)
    assert [t["state"] for t in result.trials] == ["complete", "fail", "complete", "complete"]
    assert "diverged" in result.trials[1]["error"] and result.new == [0, 1, 2, 3]

    def broken(recipe, out):
        raise ConfigError("no data")

    with pytest.raises(LearnqError, match="3 trials failed in this sweep .*no data"):
        run_sweep(sweep_of(), tmp / "b", trials=5, runner=broken)


def test_ctrl_c_fails_the_running_trial_and_a_resume_reruns_its_knobs(tmp):
    def interrupted(recipe, out):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep_of(), tmp, trials=2, runner=interrupted)
    result = run_sweep(sweep_of(), tmp, trials=2, runner=fake_runner)
    assert [t["state"] for t in result.trials] == ["fail", "complete", "complete"]
    assert result.trials[1]["retry_of"] == 0 and result.trials[1]["params"] == result.trials[0]["params"]
    assert result.new == [1, 2]


def test_duplicates_are_pruned_and_an_exhausted_space_stops(tmp, monkeypatch):
    monkeypatch.setattr(sweep_module, "MAX_DUPLICATES", 3)
    space = '[sweep]\nsampler = "random"\n[sweep.space]\n"variant.bits" = [2, 4]\n'
    lines: list[str] = []
    result = run_sweep(sweep_of(space), tmp, trials=3, runner=fake_runner, log=lines.append)
    done = [t for t in result.trials if t["state"] == "complete"]
    assert sorted(t["params"]["variant.bits"] for t in done) == [2, 4]
    pruned = [t for t in result.trials if t["state"] == "pruned"]
    assert len(pruned) == 3 and all(t["duplicate_of"] in (0, 1) or t["duplicate_of"] == done[1]["number"]
                                     for t in pruned)
    assert sorted(p.name for p in tmp.glob("trial-*")) == sorted(f"trial-{t['number']}" for t in done)
    assert lines[-1].startswith("stopping: the last 3 sampled trials repeated finished ones")


def test_an_out_dir_belongs_to_one_study_and_a_study_to_one_recipe(tmp):
    run_sweep(sweep_of(), tmp / "a", trials=1, runner=fake_runner)
    with pytest.raises(ConfigError, match="holds the trials of study 'tiny-sweep'"):
        run_sweep(sweep_of(), tmp / "a", trials=1, study="other", runner=fake_runner)
    more = sweep_of(SPACE.replace('sampler = "random"', 'sampler = "random"\ntrials = 9\nmax_failed = 1'))
    assert run_sweep(more, tmp / "a", trials=1, runner=fake_runner).new == []  # run-time keys may change
    changed = sweep_of(SPACE.replace("[1]", "[2]"))
    with pytest.raises(ConfigError, match="started from another recipe .*sweep.space"):
        run_sweep(changed, tmp / "a", trials=2, runner=fake_runner)
    with pytest.raises(ConfigError, match="started from another recipe .*recipe.seed"):
        run_sweep(sweep_of().with_seed(3), tmp / "a", trials=2, runner=fake_runner)
    with pytest.raises(ConfigError, match="--trials: missing"):
        run_sweep(sweep_of(), tmp / "b", runner=fake_runner)
    with pytest.raises(ConfigError, match="--storage .*cannot open the study"):
        run_sweep(sweep_of(), tmp / "c", trials=1, storage="nosuchdb://x", runner=fake_runner)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def stuck_trial(sweep, out: Path, host: str, pid: int, params: dict):
    """A trial left RUNNING in the storage, as a worker killed mid-trial leaves it."""
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(sweep, default_storage(out), "tiny-sweep")
    study.enqueue_trial(params)
    trial = study.ask()
    trial.set_user_attr("worker", {"host": host, "pid": pid})
    sweep.sample(trial)
    return study, trial


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # study.ask() in stuck_trial
def test_a_trial_killed_on_this_host_is_failed_and_rerun_with_its_knobs(tmp):
    sweep = sweep_of()
    fixed = {"variant.method": "minmax", "variant.bits": 3, "train.lr": 0.004}
    study, trial = stuck_trial(sweep, tmp, socket.gethostname(), dead_pid(), fixed)
    assert trial.params == fixed
    result = run_sweep(sweep, tmp, trials=2, runner=fake_runner)
    states = {t["number"]: t["state"] for t in result.trials}
    assert states[0] == "fail" and sum(s == "complete" for s in states.values()) == 2
    retry = result.trials[1]
    assert retry["retry_of"] == 0 and retry["params"] == fixed and result.trials[0]["retried_as"] == 1
    assert result.new == [1, 2]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # study.ask() in stuck_trial
def test_another_hosts_trial_waits_for_its_heartbeat_then_is_retried(tmp):
    sweep = sweep_of()
    fixed = {"variant.method": "float", "train.lr": 0.002}
    study, trial = stuck_trial(sweep, tmp, "elsewhere", 1, fixed)
    study._storage.record_heartbeat(trial._trial_id)  # a live worker on another machine
    alive = run_sweep(sweep, tmp, trials=1, runner=fake_runner)
    assert alive.new == [] and [t["state"] for t in alive.trials] == ["running"]  # counted, left alone
    with sqlite3.connect(tmp / "study.db") as db:  # its heartbeat stops: older than the grace period
        db.execute("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00.000000'")
    result = run_sweep(sweep, tmp, trials=1, runner=fake_runner)
    assert [t["state"] for t in result.trials] == ["fail", "complete"]
    assert result.trials[1]["retry_of"] == 0 and result.trials[1]["params"] == fixed


# -- the real pipeline ---------------------------------------------------------------------------------------------

REAL_SPACE = """
[sweep]
sampler = "tpe"
[sweep.space]
"variant.bits" = [2, 3, 4, 8]
"variant.granularity" = ["channel", "tensor"]
"""


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes()) for p in path.rglob("*") if p.is_file()}


def test_resume_runs_exactly_the_missing_trials_and_leaves_finished_ones_alone(tmp):
    sweep = sweep_of(REAL_SPACE)
    first = run_sweep(sweep, tmp, trials=2)
    done = [t for t in first.trials if t["state"] == "complete"]
    assert len(done) == 2
    before = {t["run_dir"]: snapshot(tmp / t["run_dir"]) for t in done}
    again = run_sweep(sweep, tmp, trials=2)
    assert again.new == [] and again.trials == first.trials
    third = run_sweep(sweep, tmp, trials=3)
    assert len(third.new) == 1 and sum(t["state"] == "complete" for t in third.trials) == 3
    for run_dir, files in before.items():
        assert snapshot(tmp / run_dir) == files
    new = third.trials[third.new[0]]
    metrics = json.loads((tmp / new["run_dir"] / "metrics.json").read_text())
    model_file = tmp / new["run_dir"] / new["file"]
    assert metrics["rows"][0]["file_bytes"] == new["file_bytes"] == model_file.stat().st_size
    assert (new["method"], new["bits"]) == ("minmax", new["params"]["variant.bits"])


def test_a_qat_trial_is_the_trained_quantized_model(tmp):
    result = run_sweep(sweep_of(QAT_SPACE, variant=QAT), tmp, trials=1)
    trial = result.trials[0]
    assert trial["state"] == "complete" and trial["file"] == "model.safetensors"
    assert trial["method"] == trial["params"]["qat.method"]
    if trial["method"] == "ste":
        assert trial["bits"] == trial["params"]["qat.bits"]


def test_sweep_and_report_commands(tmp, capsys):
    recipe = tmp / "s.toml"
    recipe.write_text(BASE + VARIANT + REAL_SPACE)
    out = tmp / "sw"
    assert main(["sweep", str(recipe), "--trials", "1", "--out", str(out), "--json", "--seed", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["study"] == "tiny-sweep" and result["new"] == [0] and result["front"] == [0]
    assert result["storage"] == f"sqlite:///{out.resolve() / 'study.db'}"
    assert json.loads((out / "trial-0" / "recipe.json").read_text())["seed"] == 3
    assert main(["sweep", str(recipe), "--trials", "1", "--out", str(out), "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "1 complete trials (0 run now), 1 on the Pareto front" in text
    assert main(["report", str(out), "--out", str(tmp / "rep")]) == 0
    assert "1 of 1 models on the Pareto front" in capsys.readouterr().out
    assert main(["sweep", str(tmp / "missing.toml"), "--trials", "1"]) == 2
    assert "no sweep recipe file" in capsys.readouterr().err


def test_a_sweep_over_the_issue15_ptq_methods_takes_each_ones_options():
    space = """
[sweep]
sampler = "random"
[sweep.space]
"variant.method" = ["gptq", "adaquant", "qdrop"]
"variant.options.damp" = { low = 0.001, high = 0.1, log = true }
"variant.options.drop_prob" = { low = 0.0, high = 1.0 }
"variant.options.iterations" = [50]
"""
    sweep = sweep_of(space)
    fixed = {"variant.method": "gptq", "variant.options.damp": 0.05, "variant.options.drop_prob": 0.3,
             "variant.options.iterations": 50}
    assert sweep.sample(optuna.trial.FixedTrial(fixed)) == {"variant.method": "gptq", "variant.options.damp": 0.05}
    fixed["variant.method"] = "qdrop"
    assert sweep.sample(optuna.trial.FixedTrial(fixed)) == {"variant.method": "qdrop", "variant.options.drop_prob": 0.3,
                                                            "variant.options.iterations": 50}
    gptq = sweep.resolve({"variant.method": "gptq", "variant.options.damp": 0.05})
    assert gptq.variants[0].options["damp"] == 0.05 and gptq.variants[0].options["block_size"] == 128
    qdrop = sweep.resolve({"variant.method": "qdrop", "variant.options.drop_prob": 0.3})
    assert qdrop.variants[0].options["drop_prob"] == 0.3 and qdrop.variants[0].options["iterations"] == 1000
