"""Resumable results: appended and flushed per row; a torn line from a crash is dropped."""
from flagstack.annotate.output import ResultWriter, read_results


def test_resume_keeps_done_ids_and_drops_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultWriter(path) as w:
        w.write({"id": "a", "label": "x"})
        w.write({"id": "b", "label": "y"})
    with path.open("a") as f:
        f.write('{"id": "c", "lab')  # killed mid-write
    w = ResultWriter(path)
    assert w.done_ids == {"a", "b"}
    w.write({"id": "c", "label": "z"})
    w.close()
    assert [r["id"] for r in read_results(path)] == ["a", "b", "c"]
    assert ResultWriter(path, resume=False).done_ids == set()
