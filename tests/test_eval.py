"""Evaluation: model statistics are batch-invariant; TOFU and MUSE end to end on 10-item slices."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from mox_unlearn.cli import main
from mox_unlearn.data.formatting import PromptFormat, encode_qa, prompt_ids
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate.benchmarks import BENCHMARKS, METRICS
from mox_unlearn.evaluate.stats import (
    answer_stats,
    cut_at_stop,
    generate_greedy,
    score_continuations,
    text_token_logprobs,
)
from mox_unlearn.evaluate.tofu import read_retain_truth_ratios

FMT = PromptFormat()
QUESTIONS = ["Where was Alia Vorn born?", "What does Bram Teller write?", "Who?", "When was Cato Rime born, and where?"]
ANSWERS = ["In Quellport.", "Poems about winter and long trains.", "A baker.", "1961"]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_answer_stats_match_a_single_unpadded_forward(model, tokenizer):
    stats = answer_stats(model, tokenizer, QUESTIONS, ANSWERS, FMT, batch_size=3)
    for q, a, s in zip(QUESTIONS, ANSWERS, stats):
        ex = encode_qa(tokenizer, q, a, FMT, 512)
        ids = torch.tensor([ex["input_ids"]])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        labels = torch.tensor(ex["labels"][1:])
        keep = labels != -100
        expected = logps[keep].gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1)
        assert s.n_tokens == int(keep.sum())  # answer tokens + EOS, prompt excluded
        assert np.allclose(s.token_logps, expected.numpy(), atol=1e-4)
        argmax = logps[keep].argmax(-1) == labels[keep]
        assert np.array_equal(s.correct, argmax.numpy())


def test_greedy_generation_is_the_same_batched_and_alone(model, tokenizer):
    prompts = [prompt_ids(tokenizer, q, FMT) for q in QUESTIONS]
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=12, batch_size=4)
    alone = [generate_greedy(model, tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == alone


def test_text_logprobs_are_batch_invariant(model, tokenizer):
    texts = ["The quick brown fox.", "A much longer text about a sailor and a baker in Quellport, 1961."]
    a = text_token_logprobs(model, tokenizer, texts, batch_size=2)
    b = [text_token_logprobs(model, tokenizer, [t], batch_size=1)[0] for t in texts]
    assert all(np.allclose(x, y, atol=1e-4) for x, y in zip(a, b))
    assert a[0].size == len(tokenizer(texts[0])["input_ids"]) - 1


def test_cut_at_stop():
    assert cut_at_stop(" Paris.\n\nQuestion: next", ["\n\n", "Question"]) == "Paris."
    assert cut_at_stop("no stop here ", ["\n\n"]) == "no stop here"


def test_open_unlearning_retain_log_is_read(tmp_path):
    f = tmp_path / "TOFU_EVAL.json"
    f.write_text(
        json.dumps(
            {
                "forget_truth_ratio": {
                    "agg_value": 0.6,
                    "value_by_index": {"10": {"score": 0.3}, "2": {"score": 0.9}, "0": {"score": 0.5}},
                }
            }
        )
    )
    values, _ = read_retain_truth_ratios(f)
    assert values.tolist() == [0.5, 0.9, 0.3]  # ordered by index
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(MoxError, match="no per-item forget truth ratios"):
        read_retain_truth_ratios(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(MoxError, match="no per-item forget truth ratios"):
        read_retain_truth_ratios(bad)
    with pytest.raises(MoxError, match="retain result file not found"):
        read_retain_truth_ratios(tmp_path / "missing.json")
    bad.write_text(json.dumps({"forget_truth_ratio": {"value_by_index": {"a": {"score": 0.5}}}}))
    with pytest.raises(MoxError, match="must map item indices"):
        read_retain_truth_ratios(bad)
    bad.write_text(json.dumps({"metrics": {"forget_truth_ratio": {"per_item": ["x", 1]}}}))
    with pytest.raises(MoxError, match="not a list of numbers"):
        read_retain_truth_ratios(bad)


@pytest.fixture(scope="module")
def tofu_result(tiny_model_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "tofu.json"
    code = main(
        [
            "eval",
            "--benchmark",
            "tofu",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data_dir / "tofu"),
            "--forget-split",
            "forget01",
            "--limit",
            "10",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


@pytest.mark.slow
def test_tofu_end_to_end_produces_every_summary_key(tofu_result):
    result = json.loads(tofu_result.read_text())
    assert set(result["summary"]) == {"forget_quality", "model_utility", "forget_rouge", "retain_rouge", "privleak"}
    assert tuple(result["summary"]) == BENCHMARKS["tofu"].summary and set(result["summary"]) <= set(METRICS)
    assert result["summary"]["forget_quality"] is None and "retain" in result["metrics"]["forget_quality"]["reason"]
    assert result["summary"]["privleak"] is None and "min-k AUC" in result["metrics"]["privleak"]["reason"]
    mia = result["metrics"]["mia_min_k"]
    assert mia["auc_open_unlearning"] == pytest.approx(1 - mia["value"]) and "MUSE" in mia["convention"]
    assert set(result["convention"]) == {"prompt", "positions", "tokenizer_sha", "probe_sha"}
    for name in ("forget", "retain", "ra", "wf"):
        for kind in ("probability", "truth_ratio", "rouge"):
            metric = result["metrics"][f"{name}_{kind}"]
            assert len(metric["per_item"]) == 10 and np.isfinite(metric["value"])
    assert 0 <= result["summary"]["model_utility"] <= 1
    assert set(result["metrics"]["model_utility"]["parts"]) >= {"retain_probability", "ra_truth_ratio", "wf_rouge"}
    for name in ("mia_min_k", "extraction_strength", "exact_memorization"):
        assert np.isfinite(result["metrics"][name]["value"])


@pytest.mark.slow
def test_tofu_model_against_itself_has_forget_quality_one_and_is_deterministic(
    tofu_result, tiny_model_dir, data_dir, tmp_path
):
    out = tmp_path / "again.json"
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "tofu",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data_dir / "tofu"),
                "--forget-split",
                "forget01",
                "--limit",
                "10",
                "--batch-size",
                "8",
                "--retain-result",
                str(tofu_result),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    first, second = json.loads(tofu_result.read_text()), json.loads(out.read_text())
    assert second["summary"]["forget_quality"] == 1.0
    assert second["summary"]["privleak"] == 0.0
    assert second["metrics"]["forget_quality"]["convention_check"] == "same prompt convention and tokenizer"
    for key in ("model_utility", "forget_rouge", "retain_rouge"):
        assert first["summary"][key] == second["summary"][key]
    assert first["metrics"]["forget_truth_ratio"]["per_item"] == second["metrics"]["forget_truth_ratio"]["per_item"]


@pytest.mark.slow
def test_tofu_refusals(tiny_model_dir, data_dir, tofu_result, tmp_path, capsys):
    base = ["eval", "--benchmark", "tofu", "--model", str(tiny_model_dir), "--out", str(tmp_path / "r.json")]
    assert main([*base, "--data", str(data_dir / "tofu"), "--forget-split", "forget02"]) == 2
    assert "valid: forget01, forget05, forget10" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path), "--limit", "2"]) == 2
    assert "local folder without forget10_perturbed.jsonl" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "--data",
                str(data_dir / "tofu"),
                "--forget-split",
                "forget01",
                "--limit",
                "5",
                "--retain-result",
                str(tofu_result),
            ]
        )
        == 2
    )
    assert "same forget split and --limit" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_muse_end_to_end_produces_every_summary_key(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "muse.json"
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "muse",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data_dir / "muse-news"),
                "--limit",
                "10",
                "--batch-size",
                "4",
                "--retain-result",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["summary"]) == {"verbmem_f", "knowmem_f", "knowmem_r", "privleak"}
    assert all(v is not None and np.isfinite(v) for v in result["summary"].values())
    assert len(result["metrics"]["verbmem_f"]["per_item"]) == 10
    assert 0 <= result["metrics"]["privleak_auc"]["value"] <= 1
    # its own result file as the retain model: PrivLeak 0
    again = tmp_path / "again.json"
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "muse",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data_dir / "muse-news"),
                "--limit",
                "10",
                "--batch-size",
                "4",
                "--retain-result",
                str(out),
                "--out",
                str(again),
            ]
        )
        == 0
    )
    assert json.loads(again.read_text())["summary"]["privleak"] == 0.0
    summary = json.loads(again.read_text())["summary"]
    assert tuple(summary) == BENCHMARKS["muse"].summary and set(summary) <= set(METRICS)  # the registry is complete


def test_batch_size_8_equals_batch_size_1(model, tokenizer):
    """The evaluation's batching (length-sorted batches, right padding for scoring, left padding and a
    KV cache for generation) changes no number: answer log-probs within 1e-4 and identical greedy texts
    between batch size 1 and 8, over 10 items of different lengths (so padding differs per batch)."""
    questions = [f"{q} ({i})" * (1 + i % 3) for i, q in enumerate(QUESTIONS * 3)][:10]
    answers = [a * (1 + i % 2) for i, a in enumerate(ANSWERS * 3)][:10]
    one = answer_stats(model, tokenizer, questions, answers, FMT, batch_size=1)
    eight = answer_stats(model, tokenizer, questions, answers, FMT, batch_size=8)
    for a, b in zip(one, eight):
        assert a.n_tokens == b.n_tokens and np.array_equal(a.correct, b.correct)
        assert np.abs(a.token_logps - b.token_logps).max() <= 1e-4
    prompts = [prompt_ids(tokenizer, q, FMT) for q in questions]
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=16, batch_size=8) == generate_greedy(
        model, tokenizer, prompts, max_new_tokens=16, batch_size=1
    )


def test_eval_refuses_to_write_into_the_model_folder(tiny_model_dir, capsys):
    before = sorted(p.name for p in tiny_model_dir.iterdir())
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "tofu",
                "--model",
                str(tiny_model_dir),
                "--data",
                "unused",
                "--out",
                str(tiny_model_dir / "config.json"),
            ]
        )
        == 2
    )
    assert "is inside the --model input" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == before


# ----------------------------------------------------------------------------- issue 21: parity with open-unlearning


def _open_unlearning_tokenwise(model, example: dict) -> tuple[np.ndarray, np.ndarray]:
    """open-unlearning's `tokenwise_logprobs` / `tokenwise_vocab_logprobs` as its code defines them, written out
    here: log-probs of the labelled positions except the last one (`actual_indices[:-1]`, "ignore eos
    prediction"), and the argmax predictions of the same positions against their labels."""
    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor(example["labels"])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].double(), -1)[:-1]
    target = log_probs.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    actual = (labels != -100).nonzero(as_tuple=True)[0][:-1]
    start, end = int(actual[0]), int(actual[-1])
    preds = log_probs[start - 1 : end].argmax(-1)
    return target[start - 1 : end].numpy(), (preds == labels[actual]).numpy()


def _ou_extraction_strength(correct: np.ndarray) -> float:
    n = len(correct)
    for k in range(n):  # open-unlearning memorization.extraction_strength's loop, quirk included
        if correct[k:].all():
            break
    return 1 - k / n


def _ou_min_k(logps: np.ndarray, k: float = 0.4) -> float:
    num = max(1, int(len(logps) * k))  # open-unlearning mia/min_k.py: -mean of the lowest num
    return float(-np.sort(logps)[:num].mean())


def test_es_em_and_min_k_reproduce_open_unlearning_definitions(model, tokenizer):
    """On made-up QA pairs: our EOS-free statistics equal open-unlearning's definitions computed directly."""
    from mox_unlearn.evaluate import metrics as M

    stats = answer_stats(model, tokenizer, QUESTIONS, ANSWERS, FMT, batch_size=3)
    for q, a, s in zip(QUESTIONS, ANSWERS, stats):
        logps, correct = _open_unlearning_tokenwise(model, encode_qa(tokenizer, q, a, FMT, 512))
        assert s.ends_with_eos and s.content_logps.size == s.n_tokens - 1 == logps.size
        assert np.allclose(s.content_logps, logps, atol=1e-4)
        assert np.array_equal(s.content_correct, correct)
        assert M.extraction_strength([s.content_correct])[0] == pytest.approx(_ou_extraction_strength(correct))
        assert M.exact_memorization([s.content_correct])[0] == pytest.approx(correct.mean())
        assert M.min_k_score(s.content_logps, 0.4) == pytest.approx(_ou_min_k(logps), abs=1e-4)


def test_eos_is_dropped_only_where_the_answer_ends_in_eos(model, tokenizer):
    from mox_unlearn.evaluate.stats import AnswerStats

    s = AnswerStats(np.array([-1.0, -2.0, -3.0]), np.array([True, False, True]), ends_with_eos=True)
    assert s.content_logps.tolist() == [-1.0, -2.0] and s.content_correct.tolist() == [True, False]
    assert s.nll_sum == 6.0  # probability and truth ratio keep the EOS position
    cut = AnswerStats(np.array([-1.0, -2.0]), np.array([True, True]), ends_with_eos=False)  # truncated: no EOS
    assert cut.content_logps.tolist() == [-1.0, -2.0]
    # a truncated answer is scored whole: its last label is an answer token, not EOS
    room = len(prompt_ids(tokenizer, QUESTIONS[1], FMT)) + 3
    short = answer_stats(model, tokenizer, [QUESTIONS[1]], [ANSWERS[1]], FMT, max_length=room)[0]
    assert not short.ends_with_eos and short.content_logps.size == short.n_tokens == 3


@pytest.mark.slow
def test_tofu_min_k_es_em_drop_eos_in_the_result(tofu_result, model, tokenizer, data_dir):
    """The result file's ES / EM / min-k scores are those of the EOS-free positions of every forget answer."""
    from mox_unlearn.evaluate import metrics as M
    from mox_unlearn.evaluate.tofu import load_tofu_split

    result = json.loads(tofu_result.read_text())
    forget = load_tofu_split(str(data_dir / "tofu"), "forget01_perturbed").records[:10]
    stats = answer_stats(model, tokenizer, [r["question"] for r in forget], [r["answer"] for r in forget], FMT)
    correct = [s.content_correct for s in stats]
    assert result["metrics"]["extraction_strength"]["per_item"] == pytest.approx(
        M.extraction_strength(correct).tolist()
    )
    assert result["metrics"]["exact_memorization"]["per_item"] == pytest.approx(M.exact_memorization(correct).tolist())
    scores = M.min_k_scores([s.content_logps for s in stats])
    assert result["metrics"]["mia_min_k"]["forget_scores"] == pytest.approx(scores.tolist(), abs=1e-6)


def test_tofu_privleak_hand_values():
    """PrivLeak = (AUC - AUC_retain) / AUC_retain * 100 in our convention, which is open-unlearning's
    ((1 - auc_ou) - (1 - ref_ou)) / (1 - ref_ou) * 100 on its flipped AUCs."""
    from mox_unlearn.evaluate.tofu import _privleak

    assert _privleak(0.6, 0.5, "r.json")["value"] == pytest.approx(20.0)
    assert _privleak(0.0, 0.4, "r.json")["value"] == pytest.approx(-100.0)  # memorised: forget far more likely
    auc_ou, ref_ou = 0.9, 0.55  # open-unlearning's own numbers for the same two models
    expected = ((1 - auc_ou) - (1 - ref_ou)) / (1 - ref_ou) * 100
    assert _privleak(1 - auc_ou, 1 - ref_ou, "r.json")["value"] == pytest.approx(expected)
    assert _privleak(0.6, None, "r.json")["value"] is None
    assert "divides by it" in _privleak(0.6, 0.0, "r.json")["reason"]


def _eval_args(tiny_model_dir, data_dir, out, retain):
    return [
        "eval",
        "--benchmark",
        "tofu",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data_dir / "tofu"),
        "--forget-split",
        "forget01",
        "--limit",
        "10",
        "--batch-size",
        "8",
        "--retain-result",
        str(retain),
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_retain_result_with_another_convention_is_refused_unless_allowed(
    tofu_result, tiny_model_dir, data_dir, tmp_path, capsys
):
    other = json.loads(tofu_result.read_text())
    other["convention"]["prompt"]["question_template"] = "Question: {question}\nAnswer: "  # open-unlearning's
    other["convention"]["tokenizer_sha"] = "0" * 16
    retain = tmp_path / "other.json"
    retain.write_text(json.dumps(other))
    out = tmp_path / "r.json"
    assert main(_eval_args(tiny_model_dir, data_dir, out, retain)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different prompt and tokenizer" in err and "--allow-convention-mismatch" in err
    assert not out.exists()
    assert main([*_eval_args(tiny_model_dir, data_dir, out, retain), "--allow-convention-mismatch"]) == 0
    assert "mox: warning:" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["summary"]["forget_quality"] == 1.0  # same model: compared anyway, as asked
    assert "different prompt" in result["metrics"]["forget_quality"]["convention_check"]


@pytest.mark.slow
def test_open_unlearning_retain_result_warns_and_gives_privleak(
    tofu_result, tiny_model_dir, data_dir, tmp_path, capsys
):
    """A TOFU_EVAL.json records no convention: accepted with a one-line warning; its mia_min_k (open-unlearning's
    flipped AUC) gives PrivLeak."""
    ours = json.loads(tofu_result.read_text())
    ratios = ours["metrics"]["forget_truth_ratio"]["per_item"]
    auc = ours["metrics"]["mia_min_k"]["value"]
    retain = tmp_path / "TOFU_EVAL.json"
    retain.write_text(
        json.dumps(
            {
                "forget_truth_ratio": {"value_by_index": {str(i): {"score": r} for i, r in enumerate(ratios)}},
                "mia_min_k": {"agg_value": 1 - auc},
            }
        )
    )
    out = tmp_path / "r.json"
    assert main(_eval_args(tiny_model_dir, data_dir, out, retain)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mox: warning:")]
    assert len(warnings) == 1 and "records no prompt convention" in warnings[0] and "Answer: " in warnings[0]
    summary = json.loads(out.read_text())["summary"]
    assert summary["forget_quality"] == 1.0 and summary["privleak"] == pytest.approx(0.0, abs=1e-9)


def test_convention_tells_prompt_and_tokenizer_apart(tokenizer):
    from mox_unlearn.evaluate.convention import convention_differences, scoring_convention
    from mox_unlearn.tiny import build_tokenizer

    base = scoring_convention(tokenizer, FMT)
    assert scoring_convention(tokenizer, PromptFormat()) == base  # deterministic
    other_prompt = scoring_convention(tokenizer, PromptFormat(question_template="Q: {question}\nA:"))
    assert set(convention_differences(base, other_prompt)) == {"prompt", "tokenization of a probe question"}
    other_tok = scoring_convention(
        build_tokenizer(["a few other words entirely", "and more of them"], vocab_size=80), FMT
    )
    assert "tokenizer" in convention_differences(base, other_tok)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--forget-split", "forget07"], "unknown TOFU forget split 'forget07'"),
        (["--data", "./no/such/tofu"], "--data ./no/such/tofu: no such local folder; expected a folder in the TOFU"),
        (["--data", "FILE"], "is a file; expected a folder in the TOFU layout (e.g. forget10_perturbed.jsonl)"),
        (["--data", "EMPTY"], ": local folder without forget10_perturbed.jsonl (5 of 5 files missing)"),
        (["--benchmark", "muse", "--data", "EMPTY"], ": local folder without verbmem/forget.json (7 of 7"),
    ],
)
def test_eval_checks_split_and_data_before_loading_the_model(
    tiny_model_dir, tmp_path, monkeypatch, capsys, args, message
):
    """A wrong split name or a wrong local --data (missing, a file, another layout) is refused in one line
    before the model is loaded, and never reported as a hub error."""
    import mox_unlearn.evaluate.run as run
    from mox_unlearn.cli import main

    def never(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(run, "load_eval_model", never)
    (tmp_path / "data.csv").write_text("question,answer\n")
    (tmp_path / "empty").mkdir()
    args = [{"FILE": str(tmp_path / "data.csv"), "EMPTY": str(tmp_path / "empty")}.get(a, a) for a in args]
    base = {"--benchmark": "tofu", "--model": str(tiny_model_dir), "--out": str(tmp_path / "r.json")}
    given = dict(zip(args[::2], args[1::2]))
    argv = ["eval", *[x for k, v in {**base, **given}.items() for x in (k, v)]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "hub" not in err[0].replace("or a hub id", "")
    assert not (tmp_path / "r.json").exists()


def test_metric_table_drives_the_report_headers():
    from mox_unlearn.report import COLUMNS, HEADERS

    assert COLUMNS[3:] == BENCHMARKS["tofu"].columns
    assert [HEADERS[c] for c in COLUMNS[3:]] == ["FQ (↑)", "MU (↑)", "F-RL (↓)", "R-RL (↑)"]
    assert METRICS["privleak"].header == "PrivLeak (→0)"
    assert all(m.better in ("higher", "lower", "zero") and m.definition for m in METRICS.values())
    for bench in BENCHMARKS.values():
        assert set(bench.summary) <= set(METRICS) and set(bench.columns) <= set(bench.summary)


def _word_level_model(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainer=trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(wrapped), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), wrapped


def test_stop_strings_work_with_any_tokenizer_and_only_shorten_generation(model, tokenizer):
    """Issue 16: transformers' stop_strings criterion raised 'substring not found' on a word-level tokenizer
    (mox eval --benchmark muse died). Generation now stops on the decoded text, and stopping early gives
    exactly the text a full generation cut at the first stop string gives."""
    texts = ["Question: Where was Alia born? Answer: In Quellport .", "Question: Who? Answer: A baker"]
    stops = ["\n\n", "Question:", "Answer"]
    for m, tok in ((model, tokenizer), _word_level_model(texts)):
        prompts = [tok(t)["input_ids"] for t in ("Question: Where was Alia born? Answer:", "Question: Who?")]
        stopped = generate_greedy(m, tok, prompts, max_new_tokens=12, stop_strings=stops)
        full = generate_greedy(m, tok, prompts, max_new_tokens=12)
        assert stopped == [cut_at_stop(f, stops) for f in full]


@pytest.mark.parametrize(
    "split, retain, message",
    [
        ("forget01", {"forget_split": "forget10", "n": 3}, "retain.json is for forget10, not forget01"),
        ("forget01", {"forget_split": "forget01", "n": 3}, "retain.json has 3 forget items, this evaluation 40"),
        ("forget01", {"n": 0}, "no per-item"),
    ],
)
def test_eval_checks_the_retain_result_before_loading_the_model(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys, split, retain, message
):
    """Issue 16 class 6: a retain result of another split or size used to be refused only after the whole
    evaluation had run; it is now refused before the model is loaded."""
    import mox_unlearn.evaluate.run as run
    from mox_unlearn.cli import main

    def never(*a, **k):
        raise AssertionError("the model was loaded before the retain result was checked")

    monkeypatch.setattr(run, "load_eval_model", never)
    result = tmp_path / "retain.json"
    body = {"metrics": {"forget_truth_ratio": {"per_item": [0.5] * retain["n"]}}} if retain["n"] else {}
    result.write_text(json.dumps({**body, **{k: v for k, v in retain.items() if k != "n"}}))
    argv = ["eval", "--benchmark", "tofu", "--model", str(tiny_model_dir), "--data", str(data_dir / "tofu")]
    argv += ["--forget-split", split, "--retain-result", str(result), "--out", str(tmp_path / "r.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1], "a row must be an object, got list"),
        ({"name": 3}, '"name" must be text, got 3'),
        ({"name": "a", "method": 7}, '"method" must be text'),
        ({"name": "a", "alpha": "4"}, '"alpha" must be a number or null'),
        ({"name": "a", "forget_quality": True}, '"forget_quality" must be a number or null, got True'),
    ],
)
def test_report_rows_are_checked_before_they_are_tabulated(row, message):
    from mox_unlearn.report import check_row

    with pytest.raises(MoxError, match=re.escape(f"r.json: rows[0]: {message}")):
        check_row(row, "r.json: rows[0]")
    assert check_row({"name": "a", "alpha": 2, "forget_quality": None}, "x")["alpha"] == 2


def test_loading_info_refuses_weights_that_do_not_fit_the_config():
    from mox_unlearn.io.loading import check_loading_info

    check_loading_info("m", {"missing_keys": [], "unexpected_keys": set(), "mismatched_keys": []})
    with pytest.raises(
        MoxError, match=r"model m: 2 tensor\(s\) its config.json needs but the weights lack \(first: a.w\)"
    ):
        check_loading_info("m", {"missing_keys": ["b.w", "a.w"]})
    with pytest.raises(MoxError, match=r"2 tensor\(s\) the weights hold but its config.json does not use"):
        check_loading_info("m", {"unexpected_keys": {"x", "y"}})
    with pytest.raises(
        MoxError, match=r"m do not fit its config.json: w \(\[2, 2\] in the weights, \[4, 2\] in config.json\)"
    ):
        check_loading_info("m", {"mismatched_keys": [("w", (2, 2), (4, 2))]})


@pytest.mark.parametrize(
    "batch_size, fmt",
    [(1, FMT), (3, FMT), (16, FMT), (3, PromptFormat(preset="open-unlearning-qa"))],
    ids=["1", "3", "16", "3-joint"],
)
def test_shared_prompt_scoring_equals_scoring_each_answer_alone(model, tokenizer, batch_size, fmt):
    """score_continuations runs each question's prompt once (left-padded, KV cache copied per answer) and
    gives every answer the statistics answer_stats gives it from the whole sequence: same token ids and EOS
    flag, identical argmax correctness, log-probs equal to rounding; also where max_length truncates. With
    open-unlearning's joint boundary an answer's first token can be unscored context that differs between
    the answers of one question: only the ids they all share are cached."""
    questions = [f"{q} ({i})" * (1 + i % 3) for i, q in enumerate(QUESTIONS * 3)][:7]
    lists = [[a * (1 + j % 2) for j, a in enumerate(ANSWERS[: 1 + i % 4])] for i in range(7)]
    from mox_unlearn.evaluate.stats import _cache_keyword

    assert _cache_keyword(model) is not None  # the shared-prompt path is the one under test, not the fallback
    longest_prompt = max(len(prompt_ids(tokenizer, q, fmt)) for q in questions)
    for max_length in (512, longest_prompt + 2):
        shared = score_continuations(
            model, tokenizer, questions, lists, fmt, batch_size=batch_size, max_length=max_length
        )
        flat_q = [q for q, answers in zip(questions, lists) for _ in answers]
        alone = answer_stats(model, tokenizer, flat_q, [a for ans in lists for a in ans], fmt, max_length=max_length)
        got = [s for row in shared for s in row]
        assert [len(row) for row in shared] == [len(answers) for answers in lists]
        for a, b in zip(got, alone):
            assert a.input_ids == b.input_ids and a.ends_with_eos == b.ends_with_eos
            assert np.array_equal(a.correct, b.correct)
            assert np.abs(a.token_logps - b.token_logps).max() <= 1e-5
        # truncation was exercised (with the joint boundary, EOS is appended after it, as open-unlearning does)
        assert any(not s.ends_with_eos for s in got) == (max_length < 512 and fmt.boundary == "separate")
    empty = score_continuations(model, tokenizer, ["Who?", QUESTIONS[0]], [[], ANSWERS[:1]], fmt, batch_size=batch_size)
    assert empty[0] == [] and len(empty[1]) == 1  # a question without answers is skipped, not an error


def test_shared_prompt_scoring_falls_back_for_models_without_a_cache(model, tokenizer):
    """A model whose forward takes no position_ids / cache is scored one sequence per answer, as before."""

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    from mox_unlearn.evaluate.stats import _cache_keyword

    assert _cache_keyword(Plain(model)) is None
    lists = [ANSWERS[:2], ANSWERS[2:]]
    got = score_continuations(Plain(model), tokenizer, QUESTIONS[:2], lists, FMT)
    want = answer_stats(model, tokenizer, [QUESTIONS[0]] * 2 + [QUESTIONS[1]] * 2, ANSWERS, FMT)
    assert [np.array_equal(a.token_logps, b.token_logps) for a, b in zip(got[0] + got[1], want)] == [True] * 4


def test_attention_kernel_and_device_map_reach_the_loaded_model(tiny_model_dir, monkeypatch):
    """--attn-implementation and --device-map go to from_pretrained; flash-attention without its package is
    one line before anything loads."""
    from transformers import AutoModelForCausalLM as Auto

    from mox_unlearn.evaluate.run import load_eval_model

    seen, original = {}, Auto.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Auto, "from_pretrained", classmethod(spy))
    model, _ = load_eval_model(str(tiny_model_dir), "float32", attn_implementation="eager", device_map="auto")
    assert (seen["attn_implementation"], seen["device_map"]) == ("eager", "auto")
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]], device=model.device)).logits.shape[:2] == (1, 3)
    with pytest.raises(MoxError, match="attn_implementation=flash_attention_2 needs the flash_attn package"):
        load_eval_model(str(tiny_model_dir), attn_implementation="flash_attention_2")
    with pytest.raises(MoxError, match="attn_implementation must be one of eager, sdpa"):
        load_eval_model(str(tiny_model_dir), attn_implementation="fast")


BOOKS_TEXT = [
    "The lighthouse keeper counted the ships every evening and wrote their names in a green ledger.",
    "Mara found the key under the third stair, where her grandmother had always said it would be.",
    "Snow fell on the harbour town for nine days, and the baker gave bread away to anyone who asked.",
    "The old map showed an island that no sailor in the village had ever seen with their own eyes.",
]


def _books_slice(folder):
    """A MUSE-Books-shaped folder (its knowmem retain files are retain_qa*, not News's retain2_qa*)."""
    qa = [{"question": f"Who counted the ships ({i})?", "answer": "The lighthouse keeper."} for i in range(3)]
    files = {
        "verbmem/forget.json": [{"prompt": t[:40], "gt": t[40:]} for t in BOOKS_TEXT[:3]],
        "knowmem/forget_qa.json": qa,
        "knowmem/forget_qa_icl.json": qa[:2],
        "knowmem/retain_qa.json": qa,
        "knowmem/retain_qa_icl.json": qa[:2],
        "privleak/forget.json": BOOKS_TEXT[:3],
        "privleak/holdout.json": BOOKS_TEXT[1:],
    }
    for name, rows in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(rows))
    return folder


@pytest.mark.slow
def test_muse_books_runs_on_a_local_slice_in_its_layout(tiny_model_dir, tmp_path, capsys):
    data = _books_slice(tmp_path / "books")
    out = tmp_path / "books.json"
    args = ["eval", "--benchmark", "muse-books", "--model", str(tiny_model_dir), "--data", str(data)]
    assert main([*args, "--retain-result", "0.5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "muse-books" and set(result["summary"]) == {
        "verbmem_f",
        "knowmem_f",
        "knowmem_r",
        "privleak",
    }
    assert (
        len(result["metrics"]["knowmem_r"]["per_item"]) == 3
        and len(result["metrics"]["privleak_auc"]["forget_scores"]) == 3
    )
    (data / "knowmem" / "retain_qa.json").unlink()
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "again.json")]) == 2
    assert "without knowmem/retain2_qa.json or knowmem/retain_qa.json" in capsys.readouterr().err


def test_muse_retain_auc_is_read_only_from_a_result_cut_at_the_same_length(tmp_path):
    from mox_unlearn.evaluate.muse import read_retain_auc

    def result(name, **auc):
        path = tmp_path / name
        path.write_text(json.dumps({"metrics": {"privleak_auc": {"value": 0.25, **auc}}}))
        return str(path)

    assert read_retain_auc(result("same.json", max_length=2048), 2048) == (0.25, str(tmp_path / "same.json"))
    assert read_retain_auc(result("older.json"), 2048)[0] == 0.25  # made before the length was recorded
    auc, reason = read_retain_auc(result("other.json", max_length=8192), 2048)
    assert auc is None and "up to 8192 tokens, this model up to 2048" in reason and "--max-length" in reason
    assert read_retain_auc("0.5", 2048) == (0.5, "given")


@pytest.mark.slow
def test_muse_max_length_cuts_the_privleak_texts(tiny_model_dir, data_dir, tmp_path, capsys):
    """--max-length N scores each privleak text's first N tokens (open-unlearning's MUSE setting is 2048);
    PrivLeak is not computed against a retain result cut at another length; TOFU refuses the option."""
    args = ["eval", "--benchmark", "muse", "--model", str(tiny_model_dir), "--data", str(data_dir / "muse-news")]
    args += ["--limit", "4", "--batch-size", "4"]
    short, full = tmp_path / "short.json", tmp_path / "full.json"
    assert main([*args, "--max-length", "16", "--retain-result", "0.5", "--out", str(short)]) == 0
    assert main([*args, "--retain-result", str(short), "--out", str(full)]) == 0
    cut, whole = (json.loads(p.read_text())["metrics"] for p in (short, full))
    assert cut["privleak_auc"]["max_length"] == 16 and whole["privleak_auc"]["max_length"] > 16
    assert cut["privleak_auc"]["forget_scores"] != whole["privleak_auc"]["forget_scores"]
    assert cut["verbmem_f"] == whole["verbmem_f"]  # only the privleak texts are cut
    assert whole["privleak"]["value"] is None and "up to 16 tokens" in whole["privleak"]["reason"]
    capsys.readouterr()
    tofu = ["eval", "--benchmark", "tofu", "--model", str(tiny_model_dir), "--data", str(data_dir / "tofu")]
    assert main([*tofu, "--max-length", "16", "--out", str(tmp_path / "t.json")]) == 2
    assert "--max-length is for MUSE's privleak texts, not tofu" in capsys.readouterr().err
    assert main([*args, "--max-length", "1", "--out", str(tmp_path / "m.json")]) == 2
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "m.json").exists()
