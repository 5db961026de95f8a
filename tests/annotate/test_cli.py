"""`flagstack annotate` end to end on a tiny random model: run (engine backend, resumable), eval,
leaderboard, and clear errors for a bad spec or bad rows."""
import json

import pytest

from flagstack.cli import main
from tests.engine.model_helpers import tiny_hf_model
from tests.engine.test_llm import word_tokenizer

TASK = """name: words
instruction: w5 w6
text_field: body
labels: [w10, w11, w12]
label_field: gold
prompt: {input_prefix: "w1", answer_prefix: "w2"}
"""


def _rows(n, start):
    return [{"id": f"r{i}", "body": " ".join(f"w{20 + (i * 7 + k) % 70}" for k in range(12)),
             "gold": f"w{10 + i % 3}"} for i in range(start, start + n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = root / "model"
    tiny_hf_model("llama", max_position_embeddings=512).save_pretrained(model)
    word_tokenizer().save_pretrained(model)
    (root / "task.yaml").write_text(TASK)
    for name, rows in (("pool", _rows(9, 0)), ("dev", _rows(3, 100)), ("data", _rows(5, 200))):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (root / "data.jsonl").open("a") as f:
        f.write('{"id": "bad", "gold": "w10"}\n')
    return root


def test_run_resume_eval_leaderboard(setup, capsys):
    root = setup
    args = ["annotate", "run", "--task", str(root / "task.yaml"), "--data", str(root / "data.jsonl"),
            "--demos", str(root / "pool.jsonl"), "--dev", str(root / "dev.jsonl"), "--model", str(root / "model"),
            "--max-prompt-tokens", "300", "--query-tokens", "40", "--demo-tokens", "16", "--shots", "3",
            "--out", str(root / "out.jsonl"), "--review-threshold", "0.9"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "missing text field 'body'" in err and "5 labeled, 0 already done" in out
    rows = [json.loads(line) for line in (root / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(200, 205)]
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-5 and len(r["demos"]) == 3 for r in rows)
    assert rows[0]["model"].startswith("engine:")
    assert main(args) == 0
    assert "0 labeled, 5 already done" in capsys.readouterr().out
    assert main(["annotate", "eval", "--task", str(root / "task.yaml"), "--results", str(root / "out.jsonl"),
                 "--runs-dir", str(root / "runs")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["annotate", "leaderboard", "--runs-dir", str(root / "runs")]) == 0
    assert (root / "runs" / "leaderboard.html").exists() and (root / "runs" / "leaderboard.json").exists()


def test_clear_errors(setup, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninstruction: y\nlabels: {a: b}\n")
    assert main(["annotate", "run", "--task", str(bad), "--data", str(setup / "data.jsonl")]) == 2
    assert "field 'labels' must be a mapping or list of at least 2 labels" in capsys.readouterr().err
    assert main(["annotate", "leaderboard", "--runs-dir", str(tmp_path)]) == 2
    assert "no *.eval.json" in capsys.readouterr().err


def test_sweep_rejects_unknown_run_names(capsys):
    assert main(["annotate", "sweep", "--n-test", "2", "--n-dev", "2", "--only", "5-shot-knn,nope"]) == 2
    assert "unknown run name(s) ['nope']" in capsys.readouterr().err


def test_run_with_a_linear_readout(setup, tmp_path, capsys):
    root = setup
    args = ["annotate", "run", "--task", str(root / "task.yaml"), "--data", str(root / "data.jsonl"),
            "--model", str(root / "model"), "--max-prompt-tokens", "300", "--query-tokens", "40",
            "--readout", "linear", "--readout-top-k", "8", "--out", str(tmp_path / "out.jsonl")]
    assert main(args) == 2
    assert "--readout linear is fitted on the demo pool: give --demos" in capsys.readouterr().err
    assert main(args + ["--demos", str(root / "pool.jsonl"), "--dev", str(root / "dev.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(r["readout"] == "linear" and abs(sum(r["probs"].values()) - 1) < 1e-5 for r in rows)
    assert len((tmp_path / "out.pool-scores.jsonl").read_text().splitlines()) == 9  # kept for a rerun
    views = args[:-1] + [str(tmp_path / "views.jsonl"), "--demos", str(root / "pool.jsonl"), "--view-prefix", "w3"]
    assert main(views) == 0
    rows = [json.loads(line) for line in (tmp_path / "views.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(r["views"] == ["w3"] for r in rows)
    assert main(views + ["--view-prefix", "w2"]) == 2  # the task's own answer prefix
    assert "view_prefixes must differ" in capsys.readouterr().err
    assert main(views + ["--task-views"]) == 2
    assert "lists no prompt.view_prefixes" in capsys.readouterr().err
