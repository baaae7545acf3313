"""`mox eval --benchmark lm-eval`: lm-evaluation-harness on the already-loaded model, a local task end to end."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from mox_unlearn.cli import main
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate import harness

TASK = """task: mox_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def tasks_dir(tmp_path):
    """A six-item multiple-choice task in lm-eval's YAML format, with its data beside it."""
    data = tmp_path / "mc.jsonl"
    rows = [
        {"question": f"Where was Alia Vorn born ({i})?", "choices": ["Quellport", "Osk", "Brell"], "answer": i % 3}
        for i in range(6)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "mox_mc.yaml").write_text(TASK.format(data=data))
    return folder


def test_results_in_moxs_shape_by_hand():
    raw = {
        "results": {
            "mmlu": {"alias": "mmlu", "acc,none": 0.5, "acc_stderr,none": 0.01},
            "wmdp_bio": {"acc,none": 0.25, "acc_stderr,none": 0.02, "acc_norm,none": 0.3, "acc_norm_stderr,none": 0.03},
            "gsm8k": {"exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": "N/A", "sample_len": 5},
            "wikitext": {"word_perplexity,none": 30.0, "bits_per_byte,none": 1.1},
        },
        "n-samples": {"mmlu": {"original": 10, "effective": 10}},
        "n-shot": {"mmlu": 5, "wmdp_bio": 0, "gsm8k": 5, "wikitext": 0},
        "higher_is_better": {"wikitext": {"word_perplexity": False, "bits_per_byte": False}, "mmlu": {"acc": True}},
    }
    out = harness.to_result(raw, ["mmlu", "wmdp_bio", "gsm8k", "wikitext", "missing"])
    assert out["summary"] == {"mmlu": 0.5, "wmdp_bio": 0.25, "gsm8k": 0.1, "wikitext": 30.0, "missing": None}
    assert out["metrics"]["wmdp_bio acc_norm,none"] == {"value": 0.3, "stderr": 0.03, "per_item": None}
    assert "gsm8k sample_len" not in out["metrics"]  # a count, not a metric
    # what each summary number is, which way is better, and the shots lm-eval used (it keeps a task's own 0)
    assert out["summary_metric"]["wikitext"] == {"metric": "word_perplexity,none", "higher_is_better": False}
    assert out["summary_metric"]["mmlu"] == {"metric": "acc,none", "higher_is_better": True}
    assert out["summary_metric"]["missing"] is None and out["n_shot"] == raw["n-shot"]
    assert "no aggregate" in out["not_reported"]["missing"]
    assert out["metrics"]["gsm8k exact_match,strict-match"]["stderr"] is None
    assert harness.main_metric({"alias": "x", "sample_len": 3, "bleu,none": 12.0}) == ("bleu,none", 12.0)
    # --metric acc_norm: where a task reports it (its "none" filter first), else the usual choice, said so
    preferred = harness.to_result(raw, ["mmlu", "wmdp_bio"], prefer="acc_norm")
    assert preferred["summary"] == {"mmlu": 0.5, "wmdp_bio": 0.3}
    assert preferred["summary_metric"]["wmdp_bio"]["metric"] == "acc_norm,none"
    assert preferred["summary_metric_missing"] == {"mmlu": "reports no acc_norm; its summary number is acc,none"}
    both = {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.2, "exact_match,none": 0.3}
    assert harness.main_metric(both, "exact_match") == ("exact_match,none", 0.3)
    assert harness.main_metric(both, "exact_match,flexible-extract") == ("exact_match,flexible-extract", 0.2)
    assert "summary_metric_missing" not in out
    with pytest.raises(MoxError, match="needs --tasks"):
        harness.parse_tasks(" , ")


def test_a_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MoxError, match=r'not installed: pip install "mox-unlearn\[lm-eval\]"'):
        harness.check_installed()


@pytest.mark.slow
def test_a_local_multiple_choice_task_end_to_end(tiny_model_dir, tasks_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness (mox-unlearn[lm-eval])")
    out = tmp_path / "r.json"
    args = ["eval", "--benchmark", "lm-eval", "--model", str(tiny_model_dir), "--tasks-dir", str(tasks_dir)]
    assert main([*args, "--tasks", "mox_mc", "--batch-size", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "lm-eval" and result["tasks"] == ["mox_mc"]
    acc = result["summary"]["mox_mc"]
    assert acc in {k / 6 for k in range(7)}  # six items, each right or wrong
    assert result["metrics"]["mox_mc acc,none"]["value"] == acc and result["metrics"]["mox_mc acc,none"]["stderr"] > 0
    assert result["n_samples"]["mox_mc"]["effective"] == 6
    assert result["lm_eval"]["chat_template"] is False
    # the model's chat template on request (a tokenizer without one is refused): a template that raises
    # shows lm-eval really renders every prompt with it
    chat = tmp_path / "chat-model"
    shutil.copytree(tiny_model_dir, chat)
    chat_args = [*args[:4], str(chat), *args[5:], "--tasks", "mox_mc", "--chat-template", "always"]
    capsys.readouterr()
    assert main([*chat_args, "--out", str(tmp_path / "n.json")]) == 2
    assert "--chat-template always: the tokenizer of" in capsys.readouterr().err
    tok = AutoTokenizer.from_pretrained(chat)
    tok.chat_template = "{{ raise_exception('rendered by the chat template') }}"
    tok.save_pretrained(chat)
    assert main([*chat_args, "--out", str(tmp_path / "n.json")]) != 0
    assert "rendered by the chat template" in capsys.readouterr().err
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    tok.save_pretrained(chat)
    assert main([*chat_args, "--metric", "acc_norm", "--out", str(tmp_path / "t.json")]) == 0
    chat_result = json.loads((tmp_path / "t.json").read_text())
    assert chat_result["lm_eval"]["chat_template"] is True and chat_result["lm_eval"]["metric"] == "acc_norm"
    # this task reports acc only: its summary stays acc, and the output says so
    assert chat_result["summary_metric_missing"] == {"mox_mc": "reports no acc_norm; its summary number is acc,none"}
    assert "mox_mc: reports no acc_norm" in capsys.readouterr().out
    assert not (tmp_path / "n.json").exists()
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "lm-eval.md").read_text()
    assert "| result | mox_mc (acc) |" in table and "| r | " in table
    # refusals, before any model loads
    assert main([*args, "--tasks", "mox_mcq", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown lm-eval task 'mox_mcq'; did you mean mox_mc?" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "x.json")]) == 2
    assert "needs --tasks" in capsys.readouterr().err
    (tasks_dir / "mox_group.yaml").write_text("group: mox_group\ntask:\n  - mox_mc\n")
    assert main([*args, "--tasks", "mox_group,mox_mc", "--out", str(tmp_path / "x.json")]) == 2
    assert "--tasks: task 'mox_mc' is in both 'mox_group' and 'mox_mc'" in capsys.readouterr().err
    assert main([*args, "--tasks", "mox_mc", "--data", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert "--data is not used by --benchmark lm-eval" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_overlapping_tasks_are_found_in_the_index_by_hand():
    """Groups nest and hold tags; a tag named on --tasks is its tasks, each on its own (as lm-eval reads it)."""
    from types import SimpleNamespace as E

    kind = lambda k: E(name=k)  # noqa: E731
    index = {
        "g": E(kind=kind("GROUP"), cfg={"task": ["sub", {"task": "inline"}]}, tags=set()),
        "sub": E(kind=kind("GROUP"), cfg={"task": ["t_tag"]}, tags=set()),
        "a": E(kind=kind("TASK"), cfg={}, tags={"t_tag"}),
        "b": E(kind=kind("TASK"), cfg={}, tags={"t_tag"}),
        "c": E(kind=kind("TASK"), cfg={}, tags=set()),
        "t_tag": E(kind=kind("TAG"), cfg=None, tags=set()),
    }
    manager = E(task_index=index)
    harness.check_overlap(manager, ["g", "c"])
    harness.check_overlap(manager, ["t_tag", "a", "c", "c"])  # a tag's task named again is the same item
    with pytest.raises(MoxError, match="task 'a' is in both 'g' and 'a'"):
        harness.check_overlap(manager, ["g", "a"])
    with pytest.raises(MoxError, match="task 'inline' is in both 'g' and 'inline'"):
        harness.check_overlap(manager, ["g", "inline"])
    with pytest.raises(MoxError, match="task 'a' is in both 'sub' and 'a'"):
        harness.check_overlap(manager, ["sub", "t_tag"])
    harness.check_overlap(E(), ["g", "a"])  # an lm-eval without the index: lm-eval itself will say it


def test_metric_is_for_lm_eval_only(tmp_path, capsys):

    args = ["eval", "--benchmark", "tofu", "--model", str(tmp_path / "m"), "--metric", "acc_norm"]
    assert main([*args, "--out", str(tmp_path / "r.json")]) == 2
    assert "--metric chooses lm-eval's summary number, not tofu's" in capsys.readouterr().err
