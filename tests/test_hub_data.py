"""Local copies of hub data sets: the layouts data_path accepts, and one-line errors for the rest."""
import json

import pytest

from dllm_rl.errors import UsageError
from dllm_rl.hub_data import holdout, load_rows
from dllm_rl.task import keyed_random

ROWS = {"train": [{"q": "a", "n": 1}, {"q": "b", "n": 2}], "test": [{"q": "c", "n": 3}]}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def load(path, split, config=None):
    return load_rows("someone/data", split, task="t", config=config, data_path=str(path))


def test_folder_with_one_file_per_split(tmp_path):
    for split, rows in ROWS.items():
        write_jsonl(tmp_path / f"{split}.jsonl", rows)
    assert load(tmp_path, "train") == ROWS["train"] and load(tmp_path, "test") == ROWS["test"]


def test_hub_snapshot_with_several_configs_reads_the_configured_one(tmp_path):
    import datasets

    for config, bump in (("main", 0), ("socratic", 100)):
        for split, rows in ROWS.items():
            shifted = [{**r, "n": r["n"] + bump} for r in rows]
            datasets.Dataset.from_list(shifted).to_parquet(str(tmp_path / config / f"{split}-00000-of-00001.parquet"))
    assert load(tmp_path, "test", config="main") == ROWS["test"]
    assert [r["n"] for r in load(tmp_path, "train", config="socratic")] == [101, 102]
    with pytest.raises(UsageError, match="several folders"):
        load(tmp_path, "test")


def test_split_template_and_single_file(tmp_path):
    for split, rows in ROWS.items():
        write_jsonl(tmp_path / f"data-{split}.jsonl", rows)
    assert load(tmp_path / "data-{split}.jsonl", "train") == ROWS["train"]
    assert load(tmp_path / "data-test.jsonl", "test") == ROWS["test"]
    with pytest.raises(UsageError, match="read as the test split"):
        load(tmp_path / "data-test.jsonl", "train")


def test_bad_paths_and_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load(tmp_path / "nope", "test")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="is not a"):
        load(tmp_path / "notes.txt", "test")
    (tmp_path / "test.jsonl").write_text("{not json\n")
    with pytest.raises(UsageError, match="cannot read"):
        load(tmp_path, "test")


def test_holdout_is_keyed_and_disjoint():
    keep, held = holdout(10, 3, keyed_random(0, "x"))
    assert len(held) == 3 and sorted(keep + held) == list(range(10))
    assert holdout(10, 3, keyed_random(0, "x")) == (keep, held)
    assert holdout(10, 3, keyed_random(1, "x"))[1] != held or holdout(10, 3, keyed_random(2, "x"))[1] != held
    with pytest.raises(UsageError, match="validation_size"):
        holdout(2, 3, keyed_random(0))


def test_a_server_that_answers_is_reachable_whatever_its_status():
    """The probe asks whether anything answers (a 404 or 405 counts), not whether the path exists."""
    import http.server
    import socket
    import threading

    from dllm_rl.hub_data import unreachable

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # 501 to everything
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert unreachable(f"http://127.0.0.1:{server.server_port}/anything", timeout=5) is None
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert "refused" in unreachable(f"http://127.0.0.1:{port}/", timeout=5).lower()
