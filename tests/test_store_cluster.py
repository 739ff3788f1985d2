"""The store under a cluster's load, on SQLite and on a real PostgreSQL server (scripts/local-postgres.sh):
many writer processes, schema versions and migrations, liveness across hosts, refusals that leave
the database untouched."""

import hashlib
import multiprocessing
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from vlbench.config import RunConfig, UserError
from vlbench.fingerprint import first_difference
from vlbench.store import Base, ClaimError, OwnershipError, Store, filesystem_type, schema_head

BASE_DUMP = Path(__file__).parent / "data" / "store-v0.1.0.sql"  # written by vlbench 0.1.0 itself
PROV = {"host": "testhost", "device": "cpu", "git_commit": "abc123", "versions": {"torch": "2.13.0"}}
WRITERS, RUNS_PER_WRITER, EPOCHS = 8, 6, 3


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return Store.default_url(tmp_path)
    return request.getfixturevalue("fresh_postgres_url")


def cfg(seed, method="adapter"):
    return RunConfig(method=method, sharing="single", hidden_dim=8, seed=seed)


def _execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()


def test_schema_equals_its_migrations(url):
    store = Store(url)
    assert store.schema_version() == schema_head()
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    if store.engine.dialect.name == "sqlite":  # SQLite types are affinities (no VARCHAR lengths, 64-bit INTEGER)
        diffs = [d for d in diffs if not (isinstance(d, list) and d[0][0] == "modify_type")]
    assert diffs == []


def _writer(url: str, index: int, start, sweep_id: int) -> None:
    store = Store(url)
    start.wait()  # every writer begins at the same moment
    for i in range(RUNS_PER_WRITER):
        run_id, owner = store.claim_run(sweep_id, cfg(1000 * index + i), PROV)
        store.record_params(run_id, owner, 10, 100, "test", {})
        for epoch in range(EPOCHS):
            store.heartbeat(run_id, owner, {"epoch": epoch, "step": epoch, "total_steps": EPOCHS})
            store.record_metrics(run_id, owner, "val", epoch, {"vqa": {"score": float(epoch)}})
        store.record_metrics(run_id, owner, "test", EPOCHS - 1, {"vqa": {"score": float(index)}})
        store.finish_run(run_id, owner, {"train_seconds": 1.0})


def test_many_writer_processes_lose_nothing(url):
    store = Store(url)  # schema created once, before the writers start
    sweep_id = store.get_or_create_sweep("s", "image-text", "tiny", "cmd")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    writers = [ctx.Process(target=_writer, args=(url, i, start, sweep_id)) for i in range(WRITERS)]
    for p in writers:
        p.start()
    start.set()
    for p in writers:
        p.join(120)
    assert [p.exitcode for p in writers] == [0] * WRITERS  # a "database is locked" would have failed one
    done = store.runs(status="done")
    assert len(done) == WRITERS * RUNS_PER_WRITER
    scores = store.test_scores()
    assert scores.groupby("value").size().to_dict() == {float(i): RUNS_PER_WRITER for i in range(WRITERS)}
    assert all(len(store.val_history(r.id)) == EPOCHS for r in done)
    assert {r.progress["step"] for r in done} == {EPOCHS - 1}


def _load_base_dump(path: Path) -> None:
    con = sqlite3.connect(path)
    con.executescript(BASE_DUMP.read_text())
    con.close()


def test_base_revision_sqlite_upgrades_in_place(tmp_path):
    db = tmp_path / "old.db"
    _load_base_dump(db)
    con = sqlite3.connect(db)
    before = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("sweeps", "runs", "metrics", "param_counts")}
    con.close()
    store = Store(f"sqlite:///{db}")
    assert store.schema_version() == schema_head()
    con = sqlite3.connect(db)
    for table, rows in before.items():  # every old row, every old column, unchanged
        width = len(rows[0])
        assert [r[:width] for r in con.execute(f"SELECT * FROM {table} ORDER BY 1")] == rows, table
    con.close()
    runs = {r.label: r for r in store.runs()}
    assert {k: r.status for k, r in runs.items()} == {
        "full-s0": "done", "adapter-single-d8-s0": "done", "lora-multiple-d8-s0": "failed"}  # fmt: skip
    assert runs["adapter-single-d8-s0"].percent == 2.0 and runs["full-s0"].heartbeat_at is None
    assert store.test_scores()["value"].tolist() == [310.25, 41.5, 310.25, 42.5]
    # and it is a working store of this version: the failed run can be retried, a new one added
    sweep = store.get_or_create_sweep("image-text-tiny", "image-text", "tiny", "cmd")
    run_id, owner = store.claim_run(sweep, RunConfig(method="lora", sharing="multiple", hidden_dim=8), PROV)
    store.interrupt_run(run_id, owner, "interrupted by SIGTERM")
    assert Store(f"sqlite:///{db}").runs(status="interrupted")[0].label == "lora-multiple-d8-s0"
    # its runs carry no fingerprint: a sweep supersedes them (kept, renamed, out of the scores) to train them again
    full = runs["full-s0"]
    assert full.fingerprint is None and first_difference(full.fingerprint, {}) == "recorded before runs carried fingerprints"
    assert store.supersede(full.key, "recorded before runs carried fingerprints")
    (old,) = store.runs(status="superseded")
    assert old.id == full.id and old.superseded_of == full.key and old.key == f"{full.key}~{full.id}"
    assert len(store.test_scores(include_superseded=True)) == 4 and len(store.test_scores()) == 2
    assert not store.supersede(full.key, "again")  # no current run of that config is left to supersede


def test_base_revision_postgres_upgrades_in_place(fresh_postgres_url):
    from alembic import command

    from vlbench.store import _alembic_config

    engine = sa.create_engine(fresh_postgres_url)
    with engine.begin() as conn:  # the base schema exactly as revision 0001 creates it, without a version table
        command.upgrade(_alembic_config(conn), "0001")
        conn.execute(sa.text("DROP TABLE alembic_version"))
        conn.execute(sa.text("INSERT INTO sweeps (name, suite, profile, created_at, command) "
                             "VALUES ('s', 'image-text', 'tiny', '2026-11-30 10:00', 'cmd')"))  # fmt: skip
        conn.execute(sa.text(
            "INSERT INTO runs (key, sweep_id, method, seed, profile, suite, label, config_json, status) "
            "SELECT 'k1', id, 'full', 0, 'tiny', 'image-text', 'full-s0', '{}', 'done' FROM sweeps"))  # fmt: skip
        conn.execute(sa.text("INSERT INTO metrics (run_id, split, epoch, task, name, value) "
                             "SELECT id, 'test', 0, 'vqa', 'score', 55.5 FROM runs"))  # fmt: skip
    engine.dispose()
    store = Store(fresh_postgres_url)
    assert store.schema_version() == schema_head()
    (run,) = store.runs()
    assert (run.key, run.status, run.heartbeat_at) == ("k1", "done", None)
    assert store.test_scores()["value"].tolist() == [55.5]
    sweep = store.get_or_create_sweep("s", "image-text", "tiny", "cmd")
    run_id, owner = store.claim_run(sweep, cfg(1), PROV)
    store.interrupt_run(run_id, owner, "x")  # 'interrupted' needs the widened status column
    assert store.runs(keys=[cfg(1).key()])[0].status == "interrupted"


def test_newer_schema_is_refused(url):
    Store(url)
    _execute(url, "UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(UserError) as e:
        Store(url)
    msg = str(e.value)
    assert "\n" not in msg and "0099" in msg and schema_head() in msg and "newer vlbench" in msg


def test_another_applications_sqlite_file_is_refused_untouched(tmp_path):
    db = tmp_path / "photos.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
    con.commit()
    con.close()
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(UserError, match=r"another application's tables \(photos\).*untouched"):
        Store(f"sqlite:///{db}")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos.db"]  # no -wal, no -shm


def test_another_applications_postgres_database_is_refused_untouched(fresh_postgres_url):
    _execute(fresh_postgres_url, "CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    with pytest.raises(UserError, match=r"another application's tables \(photos\)"):
        Store(fresh_postgres_url)
    tables = sa.inspect(sa.create_engine(fresh_postgres_url)).get_table_names()
    assert tables == ["photos"]


def test_not_a_database_file(tmp_path):
    (tmp_path / "notes.db").write_text("these are my notes\n" * 100)
    with pytest.raises(UserError, match="file is not a database"):
        Store(f"sqlite:///{tmp_path / 'notes.db'}")


def test_immutable_database_refused_for_writing_readable_for_reading(tmp_path):
    url = Store.default_url(tmp_path)
    Store(url)
    db = tmp_path / "vlbench.db"
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE): cannot make an immutable file")
    try:
        with pytest.raises(UserError) as e:
            Store(url)
        assert "readonly" in str(e.value) and "\n" not in str(e.value)
        assert Store(url, create=False, writer=False).runs() == []  # report/status still read it
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)


def test_reading_a_missing_sqlite_file_says_so(tmp_path):
    with pytest.raises(UserError, match="no database at"):
        Store(Store.default_url(tmp_path / "runs"), create=False, writer=False)
    assert not (tmp_path / "runs").exists()


def test_sqlite_on_a_network_file_system_warns(tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path} nfs4 rw 0 0\n")
    assert filesystem_type(tmp_path / "runs", mounts) == "nfs4"
    assert filesystem_type(Path("/usr"), mounts) == "ext4"
    monkeypatch.setattr("vlbench.store.filesystem_type", lambda path: "nfs4")
    store = Store(Store.default_url(tmp_path / "runs"))
    assert len(store.notices) == 1 and "network file system (nfs4)" in store.notices[0]
    assert "PostgreSQL" in store.notices[0]


def test_stale_run_on_another_host_is_reclaimed_after_its_heartbeat_times_out(url):
    store = Store(url, stale_after=300)
    sweep = store.get_or_create_sweep("s", "image-text", "tiny", "cmd")
    run_id, owner = store.claim_run(sweep, cfg(1), PROV)
    store.heartbeat(run_id, owner, {"epoch": 0, "step": 5, "total_steps": 10})
    fresh = (datetime.now(timezone.utc) - timedelta(seconds=60)).replace(tzinfo=None)
    _execute(url, f"UPDATE runs SET owner = 'node17:4242:abc', heartbeat_at = '{fresh.isoformat(' ')}'")
    (r,) = store.runs()
    assert (r.status, r.state, r.progress["step"]) == ("running", "running", 5)  # beating a minute ago: alive
    with pytest.raises(ClaimError, match="being run by node17"):
        store.claim_run(sweep, cfg(1), PROV)

    old = (datetime.now(timezone.utc) - timedelta(seconds=600)).replace(tzinfo=None)
    _execute(url, f"UPDATE runs SET heartbeat_at = '{old.isoformat(' ')}'")
    (r,) = store.runs()
    assert (r.status, r.state) == ("running", "stale")
    run_id2, owner2 = store.claim_run(sweep, cfg(1), PROV)  # no steal needed
    assert run_id2 == run_id and owner2 != owner
    with pytest.raises(OwnershipError):  # the old owner, should it wake up, can write nothing
        store.heartbeat(run_id, "node17:4242:abc")


def test_dead_local_owner_is_stale_at_once(tmp_path):
    store = Store(Store.default_url(tmp_path))
    sweep = store.get_or_create_sweep("s", "image-text", "tiny", "cmd")
    run_id, owner = store.claim_run(sweep, cfg(1), PROV)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = owner.split(":")[0]
    _execute(store.url, f"UPDATE runs SET owner = '{host}:{dead.pid}:x'")
    assert store.runs()[0].state == "stale"


def test_interrupted_resumes_and_failed_waits_for_retry(url):
    store = Store(url)
    sweep = store.get_or_create_sweep("s", "image-text", "tiny", "cmd")
    run_id, owner = store.claim_run(sweep, cfg(1), PROV, run_dir="/x/runs/s/k1")
    store.record_metrics(run_id, owner, "val", 0, {"vqa": {"score": 1.0}})
    store.interrupt_run(run_id, owner, "interrupted by SIGINT at epoch 1, step 3")
    assert store.runs()[0].status == "interrupted" and store.runs()[0].run_dir == "/x/runs/s/k1"
    run_id, owner = store.claim_run(sweep, cfg(1), PROV, retry_failed=False)
    store.note_resume(run_id, owner, {"epoch": 0, "step": 3})
    store.fail_run(run_id, owner, "OutOfMemoryError: CUDA out of memory")
    assert store.runs()[0].resumed_from == [{"epoch": 0, "step": 3}]
    with pytest.raises(ClaimError, match="--retry-failed"):
        store.claim_run(sweep, cfg(1), PROV, retry_failed=False)
    store.claim_run(sweep, cfg(1), PROV, retry_failed=True)
    assert store.runs()[0].status == "running" and store.runs()[0].run_dir == "/x/runs/s/k1"


def test_run_documents_round_trip(url, tmp_path):
    store = Store(url)
    sweep = store.get_or_create_sweep("s", "image-text", "tiny", "vlbench sweep image-text")
    for seed in (1, 2):
        run_id, owner = store.claim_run(sweep, cfg(seed), {**PROV, "world_size": 2}, run_dir=f"runs/s/{seed}")
        store.record_params(run_id, owner, 10, 100, "conv", {"adapter": {"trainable": 10, "total": 10}})
        store.record_metrics(run_id, owner, "val", 0, {"vqa": {"score": 0.5}})
        store.record_metrics(run_id, owner, "test", 0, {"vqa": {"score": 0.25 * seed}})
        store.finish_run(run_id, owner, {"train_seconds": 2.0, "peak_memory_mb": 10.0})
    docs = store.run_documents()
    copy = Store(Store.default_url(tmp_path / "copy"))
    assert [copy.import_run(d) for d in docs] == [True, True]
    assert [copy.import_run(d) for d in docs] == [False, False]  # already there: left alone
    assert copy.run_documents() == docs
    assert copy.runs()[0].world_size == 2
