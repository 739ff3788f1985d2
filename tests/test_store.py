"""The results database: claim/record/finish round trips, ownership, retries, concurrency, bad URLs;
on SQLite and on a real PostgreSQL server (tests/services.py)."""

import sqlite3
import threading
from datetime import timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from vlbench.config import RunConfig, UserError
from vlbench.store import ClaimError, OwnershipError, Store

PROV = {"host": "testhost", "device": "cpu", "git_commit": "abc123", "versions": {"torch": "2.5.0"}}
COST = {"train_seconds": 12.5, "eval_seconds": 1.5, "samples_per_second": 300.0, "peak_memory_mb": 512.0,
        "checkpoint_bytes": 4096}  # fmt: skip


def cfg(method="adapter", sharing="single", hidden_dim=8, seed=1, **kw):
    return RunConfig(method=method, sharing=sharing, hidden_dim=hidden_dim, seed=seed, **kw)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return Store(Store.default_url(tmp_path / "runs"))
    return Store(request.getfixturevalue("fresh_postgres_url"))


def execute(store, statement: str, **params) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


@pytest.fixture
def sweep(store):
    return store.get_or_create_sweep("s1", "image-text", "tiny", "vlbench sweep --profile tiny")


def complete(store, sweep_id, config, score=0.5):
    run_id, owner = store.claim_run(sweep_id, config, PROV)
    store.record_params(run_id, owner, 100, 1000, "test convention", {"adapter": {"trainable": 100, "total": 100}})
    store.record_metrics(run_id, owner, "val", 1, {"vqa": {"score": score - 0.1}})
    store.record_metrics(run_id, owner, "test", 1, {"vqa": {"score": score}, "caption": {"CIDEr": 2 * score}})
    store.finish_run(run_id, owner, COST)
    return run_id


def test_default_url_and_db_file(tmp_path):
    url = Store.default_url(tmp_path / "runs")
    assert url == f"sqlite:///{tmp_path}/runs/vlbench.db"
    Store(url)
    assert (tmp_path / "runs" / "vlbench.db").exists()  # the parent directory was created


def test_round_trip(store, sweep):
    c = cfg()
    assert store.runs(keys=[c.key()]) == []
    run_id, owner = store.claim_run(sweep, c, PROV)
    assert store.runs(keys=[c.key()])[0].status == "running"
    store.record_params(run_id, owner, 100, 1000, "test convention", {"adapter": {"trainable": 100, "total": 100}})
    store.record_metrics(run_id, owner, "val", 1, {"vqa": {"score": 0.3}, "gqa": {"score": 0.2}})
    store.record_metrics(run_id, owner, "val", 2, {"vqa": {"score": 0.4}, "gqa": {"score": 0.25}})
    store.record_metrics(run_id, owner, "test", 2, {"vqa": {"score": 0.45}})
    store.finish_run(run_id, owner, COST)
    assert store.runs(keys=[c.key()])[0].status == "done"

    (r,) = store.runs()
    assert (r.id, r.key, r.sweep_id, r.sweep, r.status, r.owner) == (run_id, c.key(), sweep, "s1", "done", owner)
    assert (r.method, r.sharing, r.hidden_dim, r.seed, r.label) == ("adapter", "single", 8, 1, c.label())
    assert RunConfig.from_dict(r.config) == c
    assert (r.host, r.device, r.git_commit, r.versions) == ("testhost", "cpu", "abc123", {"torch": "2.5.0"})
    assert (r.trainable, r.total, r.percent, r.convention) == (100, 1000, 10.0, "test convention")
    assert r.components == {"adapter": {"trainable": 100, "total": 100}}
    assert {k: getattr(r, k) for k in COST} == COST
    assert r.started_at.tzinfo == timezone.utc and r.finished_at >= r.started_at
    assert r.error is None

    hist = store.val_history(run_id)
    assert list(hist.columns) == ["epoch", "task", "name", "value"]
    assert hist.values.tolist() == [[1, "gqa", "score", 0.2], [1, "vqa", "score", 0.3],
                                    [2, "gqa", "score", 0.25], [2, "vqa", "score", 0.4]]  # fmt: skip


def test_reclaim_failed_run_resets_it(store, sweep):
    c = cfg()
    run_id, owner = store.claim_run(sweep, c, PROV)
    store.record_params(run_id, owner, 1, 10, "conv", {})
    store.record_metrics(run_id, owner, "val", 1, {"vqa": {"score": 0.1}})
    store.fail_run(run_id, owner, "CUDA out of memory")
    (r,) = store.runs()
    assert (r.status, r.error) == ("failed", "CUDA out of memory")

    sweep2 = store.get_or_create_sweep("s2", "image-text", "tiny", "vlbench sweep --retry")
    run_id2, owner2 = store.claim_run(sweep2, c, {**PROV, "git_commit": "def456"})
    assert run_id2 == run_id and owner2 != owner
    (r,) = store.runs()
    assert (r.status, r.error, r.finished_at, r.trainable, r.sweep, r.git_commit) == (
        "running", None, None, None, "s2", "def456")  # fmt: skip
    assert store.val_history(run_id).empty
    with pytest.raises(OwnershipError):  # the old owner cannot write into the retry
        store.record_metrics(run_id, owner, "val", 1, {"vqa": {"score": 0.9}})


def test_claiming_done_run_raises(store, sweep):
    c = cfg()
    complete(store, sweep, c)
    with pytest.raises(ClaimError, match="done"):
        store.claim_run(sweep, c, PROV)
    assert store.runs(keys=[c.key()])[0].status == "done"


def test_running_run_is_taken_over_only_when_stale(store, sweep, tmp_path):
    c = cfg()
    run_id, owner = store.claim_run(sweep, c, PROV)
    with pytest.raises(ClaimError, match="being run"):  # this process is alive
        store.claim_run(sweep, c, PROV)

    # a run left "running" by a process on another host: only taken over when asked to
    execute(store, "UPDATE runs SET owner = 'otherhost:123:x' WHERE id = :id", id=run_id)
    with pytest.raises(ClaimError):
        store.claim_run(sweep, c, PROV)
    run_id2, owner2 = store.claim_run(sweep, c, PROV, steal=True)
    assert run_id2 == run_id
    store.finish_run(run_id, owner2, {})
    assert store.runs(keys=[c.key()])[0].status == "done"


def test_wrong_owner_cannot_write(store, sweep):
    run_id, owner = store.claim_run(sweep, cfg(), PROV)
    for write in (
        lambda o: store.finish_run(run_id, o, COST),
        lambda o: store.fail_run(run_id, o, "boom"),
        lambda o: store.record_metrics(run_id, o, "val", 1, {"vqa": {"score": 0.1}}),
        lambda o: store.record_params(run_id, o, 1, 10, "conv", {}),
    ):
        with pytest.raises(OwnershipError):
            write("somebody:1:else")
    assert store.runs(keys=[cfg().key()])[0].status == "running"
    store.finish_run(run_id, owner, COST)
    with pytest.raises(OwnershipError):  # a finished run takes no more writes, even from its owner
        store.record_metrics(run_id, owner, "val", 2, {"vqa": {"score": 0.1}})


def test_runs_filters(store, sweep):
    other = store.get_or_create_sweep("s2", "image-text", "paper", "cmd")
    assert store.get_or_create_sweep("s1", "image-text", "tiny", "another cmd") == sweep
    with pytest.raises(UserError, match="already exists"):
        store.get_or_create_sweep("s1", "image-text", "paper", "cmd")

    complete(store, sweep, cfg(seed=1))
    run_id, owner = store.claim_run(sweep, cfg(seed=2), PROV)
    store.fail_run(run_id, owner, "nan loss")
    complete(store, other, cfg(seed=3, profile="paper"))

    def seeds(records):
        return sorted(r.seed for r in records)

    assert seeds(store.runs()) == [1, 2, 3]
    assert seeds(store.runs(sweep="s1")) == [1, 2]
    assert seeds(store.runs(status="done")) == [1, 3]
    assert seeds(store.runs(sweep="s1", status="failed")) == [2]
    assert seeds(store.runs(profile="paper")) == [3]
    assert seeds(store.runs(suite="image-text")) == [1, 2, 3]
    assert store.runs(suite="video-text") == []
    with pytest.raises(UserError, match="unknown status"):
        store.runs(status="finished")


def test_test_scores(store, sweep):
    a = complete(store, sweep, cfg(seed=1), score=0.5)
    b = complete(store, sweep, cfg(method="lora", seed=2), score=0.7)
    run_id, owner = store.claim_run(sweep, cfg(seed=3), PROV)  # running: not in the scores
    store.record_metrics(run_id, owner, "test", 1, {"vqa": {"score": 0.9}})

    df = store.test_scores()
    assert list(df.columns) == ["run_id", "key", "sweep", "method", "sharing", "hidden_dim", "seed", "label",
                                "task", "name", "value", "trainable", "total", "percent"]  # fmt: skip
    assert df[["run_id", "method", "task", "name", "value"]].values.tolist() == [  # test split only
        [a, "adapter", "caption", "CIDEr", 1.0], [a, "adapter", "vqa", "score", 0.5],
        [b, "lora", "caption", "CIDEr", 1.4], [b, "lora", "vqa", "score", 0.7],
    ]  # fmt: skip
    assert set(df["sweep"]) == {"s1"} and set(df["percent"]) == {10.0}
    empty = store.test_scores(sweep="nope")
    assert empty.empty and list(empty.columns) == list(df.columns)


def test_two_stores_write_concurrently(tmp_path):
    url = Store.default_url(tmp_path)
    stores = [Store(url), Store(url)]  # two engines on one file, as two processes would have
    sweep = stores[0].get_or_create_sweep("s", "image-text", "tiny", "cmd")
    errors = []

    def worker(store, seed):
        try:
            for i in range(10):
                c = cfg(seed=100 * seed + i)
                run_id, owner = store.claim_run(sweep, c, PROV)
                for epoch in range(3):
                    store.record_metrics(run_id, owner, "val", epoch, {"vqa": {"score": 0.1 * epoch}})
                store.record_metrics(run_id, owner, "test", 2, {"vqa": {"score": seed}})
                store.finish_run(run_id, owner, COST)
        except Exception as e:  # surfaced below: pytest does not see exceptions in threads
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s, i + 1)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    records = Store(url).runs(status="done")
    assert len(records) == 20
    assert Store(url).test_scores().groupby("value").size().to_dict() == {1.0: 10, 2.0: 10}
    with sqlite3.connect(tmp_path / "vlbench.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    "url, problem",
    [
        ("not a url", "Could not parse"),
        ("nosuchdb://user:secret@host/db", "Can't load plugin"),
        ("sqlite:///{tmp}", "is a folder, not a database file"),
        ("sqlite:///{tmp}/afile/vlbench.db", "File exists"),  # its parent "directory" is a file
    ],
)
def test_bad_url_is_a_user_error(tmp_path, url, problem):
    (tmp_path / "afile").write_text("not a directory")
    url = url.format(tmp=tmp_path)
    with pytest.raises(UserError) as e:
        Store(url)
    msg = str(e.value)
    assert "\n" not in msg and problem in msg
    assert msg.startswith(f"--db {url.replace('secret', '***')}:")  # named, without its password


def test_failed_write_leaves_nothing(store, sweep, tmp_path):
    run_id, owner = store.claim_run(sweep, cfg(), PROV)
    store.record_metrics(run_id, owner, "val", 1, {"vqa": {"score": 0.5}})
    for bad in ("0.7", None, float("nan"), True):
        with pytest.raises(ValueError, match="gqa/score"):
            store.record_metrics(run_id, owner, "val", 2, {"vqa": {"score": 0.6}, "gqa": {"score": bad}})
    # a duplicate row fails inside the transaction: the new gqa row before it is rolled back too
    with pytest.raises(IntegrityError):
        store.record_metrics(run_id, owner, "val", 1, {"gqa": {"score": 0.3}, "vqa": {"score": 0.5}})
    assert store.val_history(run_id).values.tolist() == [[1, "vqa", "score", 0.5]]

    if store.engine.dialect.name == "sqlite":
        with sqlite3.connect(tmp_path / "runs" / "vlbench.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.finish_run(run_id, owner, {})  # the store is still usable
    assert store.runs(keys=[cfg().key()])[0].status == "done"
