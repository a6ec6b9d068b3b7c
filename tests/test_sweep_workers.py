"""Several sweep workers started at the same moment on a new study (docs/sweep.md, "Several workers, one study"):
none dies while creating the study, and every trial completes exactly once. On SQLite always; on a real
PostgreSQL server when its binaries are installed (``make test-postgres`` installs them), skipped with the reason
otherwise."""

from __future__ import annotations

import functools
import os
import sqlite3

import pytest

optuna = pytest.importorskip("optuna")
sqlalchemy = pytest.importorskip("sqlalchemy")

from sweep_util import race_workers, sweep_of  # noqa: E402

from learnq.pipeline.sweep import default_storage, open_study  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

TRIALS = 3


def check_every_trial_completed_once(results: list[list[dict]], rounds: list[tuple]) -> None:
    """No worker died; per round the study has TRIALS complete trials (or one more per extra worker that finished
    at the same moment), each run by one worker in its own directory, none failed, no two with the same knobs."""
    for (storage, study, out), per_worker in zip(rounds, results, strict=True):
        errors = [r["error"] for r in per_worker if "error" in r]
        assert not errors, errors
        ran = [n for r in per_worker for n in r["new"]]
        assert len(ran) == len(set(ran)), f"a trial was run by two workers: {per_worker}"
        trials = optuna.load_study(study_name=study, storage=storage).get_trials()
        states = optuna.trial.TrialState
        complete = [t for t in trials if t.state == states.COMPLETE]
        assert not [t for t in trials if t.state in (states.FAIL, states.RUNNING, states.WAITING)], trials
        assert TRIALS <= len(complete) <= TRIALS + len(per_worker) - 1
        assert sorted(t.number for t in complete) == sorted(ran)
        assert len({tuple(sorted(t.params.items())) for t in complete}) == len(complete)
        for t in complete:
            assert (out / f"trial-{t.number}" / "metrics.json").is_file()


def test_workers_started_together_on_a_new_sqlite_study_all_finish(tmp_path):
    # 4 rounds of 2 workers released by one barrier each: every round is a fresh database and study, so each
    # round races on creating the tables, the schema version row and the study.
    rounds = [(default_storage(tmp_path / f"s{k}"), f"race-{k}", tmp_path / f"s{k}") for k in range(4)]
    results = race_workers(rounds, trials=TRIALS)
    check_every_trial_completed_once(results, rounds)


RACE_ERRORS = {
    "sqlite": lambda: sqlalchemy.exc.OperationalError(
        "CREATE TABLE studies (...)", {}, sqlite3.OperationalError("table studies already exists")),
    "postgresql": lambda: sqlalchemy.exc.IntegrityError(
        "CREATE TYPE studydirection AS ENUM ('NOT_SET', 'MINIMIZE', 'MAXIMIZE')", {}, Exception(
            'duplicate key value violates unique constraint "pg_type_typname_nsp_index"\nDETAIL:  Key (typname, '
            "typnamespace)=(studydirection, 2200) already exists.")),
    "version row": lambda: sqlalchemy.exc.IntegrityError(
        "INSERT INTO alembic_version", {}, sqlite3.IntegrityError("UNIQUE constraint failed: "
                                                                  "alembic_version.version_num")),
}


@pytest.mark.parametrize("kind", sorted(RACE_ERRORS))
def test_open_study_retries_when_another_worker_creates_the_schema_first(kind, tmp_path, monkeypatch):
    """What the second worker sees when the first one creates the schema between its check and its own CREATE:
    open_study tries again (the schema is there now) and loads the study."""
    real = optuna.storages.RDBStorage
    calls = []

    class Racing(real):
        @functools.wraps(real.__init__)
        def __init__(self, url, *args, **kwargs):
            calls.append(url)
            super().__init__(url, *args, **kwargs)  # "the other worker": the schema now exists
            if len(calls) == 1:
                raise RACE_ERRORS[kind]()

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    url = default_storage(tmp_path)
    study = open_study(sweep_of(), url, "raced")
    assert len(calls) == 2 and study.study_name == "raced"
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["raced"]


def test_open_study_does_not_retry_other_database_errors(tmp_path, monkeypatch):
    real = optuna.storages.RDBStorage
    calls = []

    class Broken(real):
        @functools.wraps(real.__init__)
        def __init__(self, url, *args, **kwargs):
            calls.append(url)
            raise sqlalchemy.exc.OperationalError("connect", {}, Exception("password authentication failed"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", Broken)
    from learnq.errors import ConfigError

    with pytest.raises(ConfigError, match="password authentication failed"):
        open_study(sweep_of(), default_storage(tmp_path), "x")
    assert len(calls) == 1


# -- PostgreSQL ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 (and a Unix socket in its data directory), trust auth for the
    role ``learnq``; yields a function making a fresh database and returning its URL. Skipped with the reason when
    the binaries, the driver or a non-root user to run the server are missing; ``LEARNQ_TEST_POSTGRES=require``
    (``make test-postgres``) turns a skip into a failure."""
    from pg_util import PostgresUnavailable, start_postgres

    try:
        server = start_postgres()
    except PostgresUnavailable as why:
        if os.environ.get("LEARNQ_TEST_POSTGRES") == "require":
            pytest.fail(str(why))
        pytest.skip(str(why))
    try:
        yield server
    finally:
        server.stop()


def test_workers_started_together_on_a_new_postgresql_study_all_finish(postgres, tmp_path):
    # round 0 with the URL docs/sweep.md gives (the psycopg 3 driver named), round 1 with a bare postgresql://,
    # which SQLAlchemy >= 2.1 also maps to psycopg 3
    rounds = [(postgres.database("race0", driver="+psycopg"), "race-0", tmp_path / "p0"),
              (postgres.database("race1", driver=""), "race-1", tmp_path / "p1")]
    results = race_workers(rounds, trials=TRIALS)
    check_every_trial_completed_once(results, rounds)


def test_a_missing_driver_names_the_postgres_extra_and_the_psycopg_url(tmp_path, monkeypatch):
    real = optuna.storages.RDBStorage

    class NoDriver(real):
        @functools.wraps(real.__init__)
        def __init__(self, url, *args, **kwargs):
            try:
                raise ModuleNotFoundError("No module named 'psycopg'")
            except ImportError as exc:  # what optuna raises when SQLAlchemy cannot import the URL's driver
                raise ImportError("Failed to import DB access module for the specified storage URL.") from exc

    monkeypatch.setattr(optuna.storages, "RDBStorage", NoDriver)
    from learnq.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        open_study(sweep_of(), "postgresql://learnq:secret@dbhost/sweeps", "x")
    text = str(info.value)
    assert "pip install 'learnq[postgres]'" in text and "postgresql+psycopg://" in text
    assert "No module named 'psycopg'" in text and "psycopg2" not in text and "secret" not in text
