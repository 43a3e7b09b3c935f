"""The local queue record (runs/queues/<queue-id>/queue.json): a JSON round trip, finding a queue
by what a user types, a damaged record refused without a traceback, and edits from several
threads at once (a pool's hosts record from their own threads)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from kohyawrap.errors import UsageError
from kohyawrap.launcher.manifest import FinishRecord
from kohyawrap.launcher.queuerecord import QueueHost, QueueJob, QueueRecord, QueueStore

QID = "20261129-120000-jobs-1a2b3c"


def record(queue_id: str = QID, source: str = "/data/jobs.toml") -> QueueRecord:
    return QueueRecord(
        queue_id=queue_id,
        created_at="2026-11-29T12:00:00+00:00",
        source=source,
        hosts=(
            QueueHost("gpu-box", {"port": 22022}, "/root/kohyawrap/queues/x-h1", "python3",
                      ("GPU-a", "GPU-b"), ("GPU 0", "GPU 1"), 0.9, started_at=1.0,
                      finish=FinishRecord("shutdown", "shutdown", "shutting down", "laptop",
                                          missing=("a",), result="ok")),
        ),
        jobs=(QueueJob("柴犬", "20261129-120000-柴犬-aaaaaa", 0, "0001", "gpu-box GPU 0",
                       ("box-b dropped out: started again",)),),
        on_finish="shutdown",
        estimate={"seconds": 10.0},
    )  # fmt: skip


def test_the_record_round_trips(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    store.create(record())
    assert store.load(QID) == record()
    data = json.loads((tmp_path / "queues" / QID / "queue.json").read_text(encoding="utf-8"))
    assert data["jobs"][0]["name"] == "柴犬", "names are kept as written"
    with pytest.raises(UsageError, match="already exists"):
        store.create(record())


def test_a_queue_is_found_by_id_prefix_or_file_name(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    store.create(record())
    later = "20261130-080000-jobs-ffffff"
    store.create(record(later))
    store.create(record("20261130-090000-more-eeeeee", "/data/more.toml"))
    assert store.find(QID) == QID
    assert store.find("20261129") == QID
    assert store.find("jobs") == later, "the newest queue of that file"
    assert store.find("more") == "20261130-090000-more-eeeeee"
    assert store.find("1a2b3c") == QID and store.find("1a2b3c", loose=False) is None
    with pytest.raises(UsageError, match="no queue matches 'nothing'"):
        store.get("nothing")


@pytest.mark.parametrize("text", ["{", "[]", '{"queue_id": 1}', '{"hosts": 3, "jobs": []}'])
def test_a_damaged_record_is_refused(tmp_path: Path, text: str) -> None:
    store = QueueStore(tmp_path)
    folder = tmp_path / "queues" / QID
    folder.mkdir(parents=True)
    (folder / "queue.json").write_text(text)
    with pytest.raises(UsageError) as err:
        store.load(QID)
    assert "queue.json" in str(err.value)


def test_edits_from_several_threads_are_all_kept(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    store.create(record())

    def add(n: int) -> None:
        with store.editing(QID) as box:
            box[0] = box[0].with_job(QueueJob(f"job {n}", f"run-{n}", 0))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j.run_id for j in store.load(QID).jobs)[:3] == ["20261129-120000-柴犬-aaaaaa",
                                                                  "run-0", "run-1"]  # fmt: skip
    assert len(store.load(QID).jobs) == 21
