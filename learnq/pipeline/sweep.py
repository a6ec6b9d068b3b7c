"""Pareto sweeps: a multi-objective Optuna search over the knobs a recipe marks searchable (docs/sweep.md).

No paper. The objectives of a trial are its model's test accuracy (maximised) and true size, the bytes of its model
file (minimised); the knobs and how a trial resolves them are :mod:`learnq.pipeline.sweep_space`. Each trial runs
:func:`learnq.pipeline.run.run_recipe` into ``OUT/trial-<number>/``.

The study lives in any storage Optuna accepts (default ``sqlite:///OUT/study.db``); workers anywhere that name the
same ``--storage`` and ``--study`` share it. Resuming: ``trials`` counts completed trials in total; a trial left
RUNNING by a killed worker is failed and re-enqueued with the same parameters, at once when it was started on this
host by a process that is gone, otherwise when its heartbeat is older than the grace period (a worker on another
machine). The sampler is re-seeded before every trial from ``(seed, number of trials so far)``, so a resumed sweep
samples what an uninterrupted one would.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import re
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learnq.atomic_file import write_atomic
from learnq.errors import ConfigError, LearnqError
from learnq.pipeline.pareto import pareto_front
from learnq.pipeline.recipe import Recipe
from learnq.pipeline.run import RunResult, run_recipe
from learnq.pipeline.sweep_space import SweepRecipe, SweepSection, describe, load_sweep_recipe, short_params

MAX_RETRIES = 2  # a trial killed this many times in a row is left failed (it may be what kills the worker)
MAX_DUPLICATES = 50  # consecutive sampled trials repeating finished ones before a call stops: the space is exhausted
SWEEP_FILE = "sweep.json"
TRIAL_FILE = "trial.json"


@dataclass
class SweepResult:
    """What :func:`run_sweep` leaves. trials: one record per trial of the study (every worker's), see
    :func:`trial_record`; front: numbers of the complete trials on the Pareto front, by increasing file size;
    new: numbers of the trials this call ran (complete or failed; a sampled duplicate of a finished trial is pruned
    before it runs, and is not counted)."""

    out: Path
    study: str
    storage: str  # the URL with its password hidden
    trials: list[dict]
    front: list[int]
    new: list[int]


Runner = Callable[[Recipe, Path], RunResult]


class TrialFailed(LearnqError):
    """A trial's run raised a LearnqError: the trial is failed, the sweep goes on (up to ``max_failed``)."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise ConfigError("sweeps need optuna, which is not installed; install it with pip install 'learnq[sweep]'") \
            from exc
    return optuna


def default_storage(out: str | os.PathLike) -> str:
    """``sqlite:///OUT/study.db`` (absolute)."""
    return f"sqlite:///{Path(out).expanduser().resolve() / 'study.db'}"


def hide_password(url: str) -> str:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]+:)[^/]*@", r"\1***@", url)


def make_sampler(section: SweepSection, seed: int) -> Any:
    """The Optuna sampler ``section.sampler`` names, seeded."""
    samplers = _optuna().samplers
    if section.sampler == "nsga2":
        return samplers.NSGAIISampler(population_size=section.population_size, seed=seed)
    if section.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    return samplers.TPESampler(n_startup_trials=section.startup_trials, seed=seed, constant_liar=True)


def trial_seed(seed: int, count: int) -> int:
    """The sampler's seed before the study's trial number ``count`` (independent of where a sweep was resumed)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, count]).generate_state(1)[0])


def retry_trial(study: Any, trial: Any) -> None:
    """Enqueue a failed (killed) trial's parameters again, unless it was already retried ``MAX_RETRIES`` times."""
    optuna = _optuna()
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= MAX_RETRIES:
        return
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions,
                                              user_attrs={"retry_of": trial.number, "retries": retries + 1}))


RACE_ATTEMPTS = 10  # tries at creating the storage's schema and the study while other workers do the same
_RACE_SIGNS = ("already exists", "duplicate key", "unique constraint", "database is locked")


def lost_race(exc: BaseException) -> bool:
    """Whether ``exc`` says another worker created the same thing first: the storage's tables (SQLite ``table
    studies already exists``), PostgreSQL's enum type (``UniqueViolation ... CREATE TYPE studydirection``), the
    schema version row, or the study; or that SQLite was busy with it. Trying again then finds it and loads it."""
    try:
        from sqlalchemy import exc as sa
    except ImportError:
        return False
    if not isinstance(exc, (sa.IntegrityError, sa.OperationalError, sa.ProgrammingError)):
        return False
    return any(sign in str(exc).lower() for sign in _RACE_SIGNS)


def _connect(storage: str, study_name: str, section: SweepSection) -> Any:
    optuna = _optuna()
    rdb = optuna.storages.RDBStorage
    callback = ("heartbeat_stale_trial_callback"
                if "heartbeat_stale_trial_callback" in inspect.signature(rdb.__init__).parameters
                else "failed_trial_callback")  # optuna < 4.9
    store = rdb(storage, heartbeat_interval=section.heartbeat, grace_period=section.grace, **{callback: retry_trial})
    return optuna.create_study(study_name=study_name, storage=store, load_if_exists=True,
                               directions=["maximize", "minimize"])


def _storage_error(storage: str, exc: BaseException) -> str:
    where = f"--storage {hide_password(storage)}: cannot open the study"
    if isinstance(exc, ImportError):  # optuna: "Failed to import DB access module", the driver's error as cause
        cause = exc.__cause__ or exc
        return (f"{where}: its database driver is missing ({cause}); for PostgreSQL pip install "
                "'learnq[postgres]' (the psycopg 3 driver) and give postgresql+psycopg://user:pw@host/db")
    return (f"{where}: {exc} (a database URL such as sqlite:///path/study.db or "
            "postgresql+psycopg://user:pw@host/db; PostgreSQL needs pip install 'learnq[postgres]')")


def open_study(sweep: SweepRecipe, storage: str, study_name: str) -> Any:
    """Create or load (``load_if_exists``) the study, with heartbeats so that other workers can retry a killed
    worker's trial. ``ConfigError`` if the storage cannot be opened or the study was made by another recipe.

    Race-free: workers started together on a new storage all try to create its tables and the study; the ones that
    lose (:func:`lost_race`) try again after a short random pause, and then find and load what the winner made."""
    section = sweep.sweep
    jitter = random.Random()  # its own generator: the global ones stay as the recipe's seeds set them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are "experimental" in optuna
        for attempt in range(RACE_ATTEMPTS):
            try:
                study = _connect(storage, study_name, section)
                break
            except Exception as exc:  # sqlalchemy/driver errors have no common base class worth naming
                if lost_race(exc) and attempt + 1 < RACE_ATTEMPTS:
                    time.sleep(0.05 + 0.1 * attempt * jitter.random())
                    continue
                raise ConfigError(_storage_error(storage, exc)) from exc
    directions = [d.name.lower() for d in study.directions]
    if directions != ["maximize", "minimize"]:
        raise ConfigError(f"--study {study_name}: the study in the storage optimises {directions}, not learnq's "
                          "(accuracy, file bytes); give another --study")
    mine = sweep.fingerprint()
    theirs = study.user_attrs.get("learnq_sweep")
    if theirs is None:
        study.set_user_attr("learnq_sweep", mine)
    elif json.dumps(theirs, sort_keys=True) != json.dumps(mine, sort_keys=True):
        differ = sorted({f"{part}.{key}" for part in ("recipe", "sweep")
                         for key in set(mine[part]) | set(theirs.get(part, {}))
                         if mine[part].get(key) != theirs.get(part, {}).get(key)})
        raise ConfigError(f"--study {study_name}: the study was started from another recipe (it differs in "
                          f"{', '.join(differ) or 'its format'}); resume with the same recipe and --seed, or give "
                          "another --study")
    return study


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: a process of another user holds that id
        return True
    return True


def fail_dead_trials(study: Any) -> list[int]:
    """Fail and re-enqueue the RUNNING trials started on this host by a process that is gone (or by this one: it
    runs one trial at a time). Returns their numbers. Trials of other hosts are left to the heartbeat check."""
    optuna = _optuna()
    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if not isinstance(worker, dict) or worker.get("host") != host:
            continue
        if worker.get("pid") != os.getpid() and _alive(worker.get("pid")):
            continue
        try:  # the storage's own call: it says whether this process or another one failed the trial
            study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry_trial(study, trial)
        failed.append(trial.number)
    return failed


def trial_record(trial: Any) -> dict[str, Any]:
    """``{number, state, params, method, bits, accuracy, file_bytes, file, ratio, run_dir, error, retry_of,
    duplicate_of, retried_as}`` (state: complete, fail, running, waiting or pruned, the last for a duplicate;
    retried_as is filled in by :func:`sweep_result`)."""
    row = trial.user_attrs.get("row") or {}
    record = {"number": trial.number, "state": trial.state.name.lower(), "params": dict(trial.params)}
    record.update({k: row.get(k) for k in ("method", "bits", "accuracy", "file_bytes", "file", "ratio")})
    record.update({k: trial.user_attrs.get(k) for k in ("run_dir", "error", "retry_of", "duplicate_of")})
    record["retried_as"] = None
    return record


class _Objective:
    def __init__(self, sweep: SweepRecipe, out: Path, study_name: str, runner: Runner) -> None:
        self.sweep, self.out, self.study_name, self.runner = sweep, out, study_name, runner
        self.number: int | None = None

    def __call__(self, trial: Any) -> tuple[float, float]:
        self.number = trial.number
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        values = self.sweep.sample(trial)
        states = _optuna().trial.TrialState
        for other in trial.study.get_trials(deepcopy=False, states=(states.COMPLETE, states.RUNNING)):
            if other.number != trial.number and other.params == values:  # same knobs, same seeds: same model
                trial.set_user_attr("duplicate_of", other.number)
                raise _optuna().TrialPruned(f"same knobs as trial {other.number}")
        recipe = self.sweep.resolve(values, name=f"{self.sweep.recipe.name}-trial-{trial.number}")
        run_dir = self.out / f"trial-{trial.number}"
        if run_dir.exists():
            raise ConfigError(f"{run_dir} exists, but study {self.study_name!r} has just started its trial "
                              f"{trial.number}: the directory belongs to another study; give another --out")
        run_dir.mkdir(parents=True)
        _write_json(run_dir / TRIAL_FILE, {"study": self.study_name, "number": trial.number, "params": values,
                                           "retry_of": trial.user_attrs.get("retry_of")})
        trial.set_user_attr("run_dir", run_dir.name)
        try:
            result = self.runner(recipe, run_dir)
        except LearnqError as exc:
            trial.set_user_attr("error", str(exc))
            raise TrialFailed(f"trial {trial.number} ({describe(values)}): {exc}") from exc
        if len(result.rows) != 1:
            raise ConfigError(f"trial {trial.number}: the run made {len(result.rows)} rows, not one")
        row = result.rows[0]
        trial.set_user_attr("row", row)
        return float(row["accuracy"]), float(row["file_bytes"])


def _write_json(path: Path, obj: Any) -> None:
    """Write whole or not at all: a worker reading ``sweep.json`` while another writes it sees all of it or none."""
    write_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n").encode("utf-8"))


def _claim_out(out: Path, study_name: str, storage: str) -> None:
    """Write ``OUT/sweep.json``; ``ConfigError`` if ``out`` holds another study's trials."""
    path = out / SWEEP_FILE
    mine = {"study": study_name, "storage": hide_password(storage)}
    if path.is_file():
        try:
            theirs = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); give another --out") from exc
        if {k: theirs.get(k) for k in mine} != mine:
            raise ConfigError(f"{out} holds the trials of study {theirs.get('study')!r} in "
                              f"{theirs.get('storage')}; give another --out, or that --study and --storage")
        return
    _write_json(path, mine)


def _default_runner(recipe: Recipe, out: Path) -> RunResult:
    return run_recipe(recipe, out, progress=False)


def run_sweep(sweep: SweepRecipe, out: str | os.PathLike, *, trials: int | None = None, storage: str | None = None,
              study: str | None = None, runner: Runner | None = None,
              log: Callable[[str], None] | None = None) -> SweepResult:
    """Run trials until the study has ``trials`` complete ones (counting trials other workers are running).

    out: the sweep directory (``trial-<n>/`` run directories, ``sweep.json``, and by default ``study.db``);
    storage: an Optuna database URL (default :func:`default_storage`); study: its name (default the recipe's);
    runner(recipe, run_dir): the pipeline (tests pass a fake); log: called with one line per finished trial.
    The sampler's seed is the recipe's (``--seed``). ``LearnqError`` after ``max_failed`` failed trials.
    """
    from learnq.pipeline.run import prepare_out

    optuna = _optuna()
    total = trials if trials is not None else sweep.sweep.trials
    if total is None or total < 1:
        raise ConfigError(f"--trials: {'missing' if total is None else f'must be >= 1, got {total}'}; give "
                          "--trials N (completed trials in total) or set trials in the recipe's [sweep]")
    out_dir = prepare_out(out)
    name = study or sweep.recipe.name
    url = storage or default_storage(out_dir)
    st = open_study(sweep, url, name)
    _claim_out(out_dir, name, url)
    states = optuna.trial.TrialState
    new: list[int] = []
    failed = duplicates = 0
    while True:
        fail_dead_trials(st)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(st)
        now = st.get_trials(deepcopy=False)
        if sum(t.state in (states.COMPLETE, states.RUNNING) for t in now) >= total:
            break
        st.sampler = make_sampler(sweep.sweep, trial_seed(sweep.recipe.seed, len(now)))
        objective = _Objective(sweep, out_dir, name, runner or _default_runner)
        try:
            st.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
        except KeyboardInterrupt:
            interrupted = None if objective.number is None else st.trials[objective.number]
            if interrupted is not None and interrupted.state == states.FAIL:  # optuna failed it: rerun on resume
                retry_trial(st, interrupted)
            raise
        assert objective.number is not None  # optimize ran one trial
        record = trial_record(st.trials[objective.number])
        if record["state"] == "pruned":
            duplicates += 1
            if duplicates >= MAX_DUPLICATES:
                if log is not None:
                    log(f"stopping: the last {duplicates} sampled trials repeated finished ones (the space has "
                        "fewer distinct points than --trials, or the sampler has converged)")
                break
            continue
        duplicates = 0
        new.append(objective.number)
        if log is not None:
            log(_trial_line(record))
        if record["state"] == "fail":
            failed += 1
            if failed >= sweep.sweep.max_failed:
                raise LearnqError(f"{failed} trials failed in this sweep (last: {record['error']}); fix the "
                                  "recipe or its space (sweep.max_failed sets how many are tolerated)")
    return sweep_result(st, out_dir, url, new)


def sweep_result(study: Any, out: Path, storage: str, new: list[int] | None = None) -> SweepResult:
    records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    for record in records:
        if record["retry_of"] is not None and record["retry_of"] < len(records):
            records[record["retry_of"]]["retried_as"] = record["number"]
    done = [r for r in records if r["state"] == "complete" and r["accuracy"] is not None]
    front = [done[i]["number"] for i in pareto_front([(r["accuracy"], r["file_bytes"]) for r in done])]
    return SweepResult(out=out, study=study.study_name, storage=hide_password(storage), trials=records, front=front,
                       new=list(new or []))


def _trial_line(record: dict) -> str:
    head = f"trial {record['number']}"
    if record["state"] != "complete":
        return f"{head}: {record['state']} ({record['error']})"
    return (f"{head}: {record['method']} {record['bits']:g} bits, accuracy {100 * record['accuracy']:.2f}%, "
            f"{record['file_bytes']} bytes  [{short_params(record['params'])}]")


__all__ = ["SweepRecipe", "SweepResult", "TrialFailed", "Runner", "load_sweep_recipe", "default_storage",
           "hide_password", "make_sampler", "trial_seed", "retry_trial", "open_study", "fail_dead_trials",
           "trial_record", "run_sweep", "lost_race", "RACE_ATTEMPTS", "sweep_result", "SWEEP_FILE", "TRIAL_FILE",
           "MAX_RETRIES", "MAX_DUPLICATES"]
