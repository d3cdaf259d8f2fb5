"""
test_align.py -- the project's tests. Run:  python -m pytest -q test_align.py

What is checked against what:
  - the grader against a table of known traps (GSM-Hard floats, commas, dollars, LaTeX, missing answers);
  - the data loaders on ../shared/data (or $ALIGN_DATA_DIR) and on malformed files;
  - the generation path on a tiny random Llama with an in-memory tokenizer, saved to a folder and loaded
    through llm.py: cached-prefix sampling equals plain sampling under greedy decoding;
  - MCTS against hand computations on a fake model with scripted steps;
  - Hedge against its closed form, and the theorems on synthetic games;
  - the MLPO loss against a hand computation, and one real optimiser step;
  - the command-line entry points in subprocesses, including one run on the real embedded model.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import llm
from evaluate import DataError, arith_problems, load_problems, read_records, wilson_interval
from utility import (Sample, extract_answer, group_into_classes, is_correct, majority_answer, same_answer,
                     self_consistency_utility)

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_DATA = os.environ.get("ALIGN_DATA_DIR") or os.path.join(HERE, "..", "shared", "data")
needs_shared_data = pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="no ../shared/data here")


# ---------------------------------------------------------------- fixtures

def make_tiny_model(folder: str) -> str:
    """A tiny random Llama and a byte-level BPE tokenizer trained in memory, saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["Tom has 3 apples and buys 5 more. The answer is 8.", "Step 1: 12 - 5 = 7\nThe answer is 7.",
              "Is this solution correct? Yes No", "<think> </think> <answer> </answer>"] * 20
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|im_start|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.5,  # large weights: outputs depend visibly on positions and masks
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         bos_token_id=fast.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_llm(tiny_model_dir):
    return llm.load_llm(tiny_model_dir, device="cpu")


def run_cli(*args, timeout=900, env=None):
    """Run a command-line entry point of the project; fail with its output when it fails."""
    result = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


# ---------------------------------------------------------------- utility.py: the grader

@pytest.mark.parametrize("text, kind, expected", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "number", "18"),
    ("The answer is $1,000.", "number", "1000"),
    ("The answer is $18.00.", "number", "18"),
    ("So the total is 5 cm. The answer is 5 cm.", "number", "5"),
    ("The answer is -9867630.", "number", "-9867630"),
    ("First 3 + 4 = 7, then 7 * 2 = 14 apples", "number", "14"),          # last-number fallback
    ("The answer is 12. Later text mentions 99.", "number", "12"),          # a stated answer beats the last number
    ("Therefore \\boxed{42}.", "number", "42"),
    ("I cannot tell.", "number", None),
    ("So $x = \\boxed{\\dfrac{1}{2}}$.", "math", "\\frac{1}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "math", "(3,\\frac{\\pi}{2})"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "math", "\\frac{\\sqrt{3}}{2}"),        # nested braces
    ("The area is \\boxed{10\\text{ cm}^2}", "math", "10"),
    ("no box here", "math", None),
])
def test_extract_answer_traps(text, kind, expected):
    assert extract_answer(text, kind) == expected


@pytest.mark.parametrize("a, b, same", [
    ("18", "18.00", True), ("1000", "1,000", True), ("-9867630", "-9867630.0", True),
    ("9280000000000", "9.28e12", True),               # GSM-Hard's huge targets, printed another way
    ("2.3333", "2.33333333", True), ("2.3", "2.33333333", False), ("-5", "5", False),
    ("0.5", "\\frac{1}{2}", True), ("\\dfrac{3}{4}", "\\frac34", True), ("-\\frac{1}{2}", "-0.5", True),
    ("\\left(3,\\frac{\\pi}{2}\\right)", "(3, \\frac{\\pi}{2})", True), ("10\\text{ cm}", "10", True),
    ("x=3", "3", True), ("\\sqrt{2}", "\\sqrt{3}", False),
    (None, "5", False), ("5", None, False), (None, None, False),  # a missing answer equals nothing
])
def test_same_answer_traps(a, b, same):
    assert same_answer(a, b) is same
    assert same_answer(b, a) is same


def test_gsm_hard_targets_grade_against_printed_predictions():
    assert is_correct(extract_answer("The answer is -9,867,630."), str(-9867630.0))
    assert is_correct(extract_answer("The answer is 1.25."), str(1.25))
    assert not is_correct(extract_answer("The answer is 1.3."), str(1.25))


def test_self_consistency_classes_and_majority():
    samples = [Sample("8", "a"), Sample("8.0", "b"), Sample("9", "c"), Sample(None, "d")]
    classes = group_into_classes(samples)
    assert [(c.answer, len(c.samples)) for c in classes] == [("8", 2), ("9", 1)]
    assert [c.utility for c in classes] == [0.5, 0.25]        # the answerless sample counts in the total
    assert majority_answer(samples) == "8"
    assert majority_answer([Sample(None, "x")]) is None
    assert self_consistency_utility(0, 0) == 0.0


def test_wilson_interval_against_known_values():
    low, high = wilson_interval(15, 30)                        # p = 0.5, n = 30: [0.332, 0.668]
    assert (round(low, 3), round(high, 3)) == (0.332, 0.668)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


# ---------------------------------------------------------------- evaluate.py: data

@needs_shared_data
def test_loaders_on_shared_data():
    gsm8k = load_problems("gsm8k", SHARED_DATA)
    assert len(gsm8k) == 1319 and gsm8k[0]["answer"] == "18" and gsm8k[0]["kind"] == "number"
    hard = load_problems("gsm_hard", SHARED_DATA)
    assert len(hard) == 1319 and float(hard[0]["answer"]) == -9867630.0
    assert "4933828" in hard[0]["question"]
    math500 = load_problems("math500", SHARED_DATA, limit=500)
    assert len(math500) == 500 and math500[0]["kind"] == "math"
    assert math500[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert len(load_problems("gsm8k_train", SHARED_DATA, limit=7)) == 7


def test_loader_errors_name_the_file_and_line(tmp_path):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q", oops\n')
    with pytest.raises(DataError, match=r"test.jsonl, line 2: not valid JSON"):
        load_problems("gsm8k", str(tmp_path))
    (folder / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match=r"line 2: missing field\(s\) \['answer'\]"):
        load_problems("gsm8k", str(tmp_path))
    with pytest.raises(DataError, match=r"no file .*gsm_hard/gsmhardv2.jsonl"):
        load_problems("gsm_hard", str(tmp_path))
    with pytest.raises(DataError, match="unknown dataset"):
        load_problems("gsm9k", str(tmp_path))


def test_arith_is_seeded_and_train_never_repeats_test():
    first, again = arith_problems(50, "test", seed=3), arith_problems(50, "test", seed=3)
    assert first == again
    assert all(p["answer"].isdigit() and int(p["answer"]) > 0 for p in first)  # whole, positive answers
    test_questions = {p["question"] for p in arith_problems(1000, "test", seed=0)}
    assert not test_questions & {p["question"] for p in arith_problems(300, "train", seed=0)}
    assert len({p["id"] for p in first}) == 50


# ---------------------------------------------------------------- llm.py: the generation path

def test_cached_prefix_greedy_equals_uncached(tiny_llm):
    prompt = tiny_llm.chat("Tom has 3 apples and buys 5 more.", examples=[("Is this correct?", "Yes")])
    suffixes = ["", "Step 1", "The answer is 7.\nStep 1: 12 - 5"]     # different lengths, one empty
    cached = tiny_llm.generate(prompt, suffixes, 2, max_new_tokens=12)
    plain = tiny_llm.generate(prompt, suffixes, 2, max_new_tokens=12, use_prefix_cache=False)
    one_by_one = tiny_llm.generate(prompt, suffixes, 1, max_new_tokens=12, use_prefix_cache=False,
                                   max_batch_size=1)
    assert cached == plain
    assert [texts[0] for texts in cached] == [texts[0] for texts in one_by_one]
    assert len({texts[0] for texts in cached}) == 3                    # the suffixes really change the output


def test_sampling_is_seeded_and_counted(tiny_llm):
    prompt = tiny_llm.chat("Tom has 3 apples.")
    before = tiny_llm.counters.snapshot()
    a = tiny_llm.sample(prompt, 4, temperature=1.0, max_new_tokens=8, seed=7)
    b = tiny_llm.sample(prompt, 4, temperature=1.0, max_new_tokens=8, seed=7)
    c = tiny_llm.sample(prompt, 4, temperature=1.0, max_new_tokens=8, seed=8)
    assert a == b and a != c
    spent = tiny_llm.counters.since(before)
    assert spent["calls"] == 12
    assert spent["prompt_tokens"] == 12 * len(tiny_llm.encode(prompt))
    assert 0 < spent["generated_tokens"] <= 12 * 8 and spent["seconds"] > 0


def test_stop_strings_cut_the_text(tiny_llm):
    prompt = tiny_llm.chat("Tom has 3 apples.")
    free = tiny_llm.sample(prompt, 1, max_new_tokens=40)[0]
    stop = next(ch for ch in free[2:] if ch.strip())                   # a character greedy decoding will emit
    cut = tiny_llm.sample(prompt, 1, max_new_tokens=40, stop=[stop])[0]
    assert stop not in cut and free.startswith(cut)


def test_score_equals_a_manual_log_probability(tiny_llm):
    prompt, continuation = tiny_llm.chat("Is this solution correct?"), "Yes"
    ids = tiny_llm.encode(prompt) + tiny_llm.encode(continuation)
    with torch.no_grad():
        logits = tiny_llm.model(torch.tensor([ids])).logits[0].float()
    n = len(tiny_llm.encode(continuation))
    manual = sum(torch.log_softmax(logits[len(ids) - n - 1 + i], -1)[ids[len(ids) - n + i]].item() for i in range(n))
    yes, no = tiny_llm.score(prompt, [continuation, "No answer"])
    assert yes == pytest.approx(manual, abs=1e-4)
    assert no < 0


def test_one_copy_per_backbone(tiny_model_dir, tiny_llm):
    assert llm.load_llm(tiny_model_dir, device="cpu") is tiny_llm


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(llm.ModelLoadError, match="could not load model"):
        llm.load_llm(str(tmp_path / "no-such-model"))
    with pytest.raises(llm.ModelLoadError, match="does not exist"):
        llm.load_llm(str(tmp_path / "missing.gguf"))


# ---------------------------------------------------------------- evaluate.py: runs in subprocesses

def _comparable(records):
    """Records without their timings, keyed by (problem, method)."""
    return {(r["problem_id"], r["method"]): {k: v for k, v in r.items() if k != "seconds"} for r in records}


def test_evaluate_resume_after_a_kill_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    args = ["evaluate.py", "--dataset", "arith", "--methods", "cot,sc", "--limit", "6", "--model",
            tiny_model_dir, "--sc-samples", "3", "--max-new-tokens", "24", "--no-progress"]
    whole = tmp_path / "whole.jsonl"
    out = run_cli(*args, "--output", str(whole))
    assert "cot" in out and "sc" in out and "95% CI" in out

    part = tmp_path / "part.jsonl"
    process = subprocess.Popen([sys.executable, *args, "--output", str(part)], cwd=HERE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_records(str(part))) < 4 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with open(part, "a") as f:
        f.write('{"problem_id": "arith-test-0-5", "meth')                 # a line cut short by the kill
    killed_at = len(read_records(str(part)))
    out = run_cli(*args, "--output", str(part), "--resume")
    resumed = read_records(str(part))
    assert len(resumed) == 12 and len(_comparable(resumed)) == 12         # nothing counted twice
    assert _comparable(resumed) == _comparable(read_records(str(whole)))
    assert killed_at < 12 or process.returncode == 0
    assert out.count("\ncot ") == 1


def test_evaluate_refuses_to_clobber_and_explains_bad_input(tiny_model_dir, tmp_path):
    existing = tmp_path / "r.jsonl"
    existing.write_text("")
    bad = subprocess.run([sys.executable, "evaluate.py", "--dataset", "arith", "--output", str(existing),
                          "--model", tiny_model_dir], cwd=HERE, capture_output=True, text=True)
    assert bad.returncode != 0 and "--resume" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "evaluate.py", "--dataset", "arith", "--methods", "cot,nope",
                          "--output", str(tmp_path / "x.jsonl"), "--model", tiny_model_dir],
                         cwd=HERE, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown method" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "evaluate.py", "--dataset", "gsm8k", "--data-dir", str(tmp_path),
                          "--output", str(tmp_path / "y.jsonl"), "--model", tiny_model_dir],
                         cwd=HERE, capture_output=True, text=True)
    assert bad.returncode != 0 and "gsm8k/test.jsonl" in bad.stderr and "Traceback" not in bad.stderr


def test_torchrun_data_parallel_merges_ranks(tiny_model_dir, tmp_path):
    output = tmp_path / "ddp.jsonl"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "evaluate.py", "--dataset", "arith", "--methods", "cot", "--limit", "5",
                             "--model", tiny_model_dir, "--max-new-tokens", "8", "--output", str(output),
                             "--no-progress", "--device", "cpu"],
                            cwd=HERE, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(str(output))
    assert sorted(r["problem_id"] for r in records) == [f"arith-test-0-{i}" for i in range(5)]
    assert not [p for p in os.listdir(tmp_path) if ".rank" in p]
    assert result.stdout.count("\ncot ") == 1                              # one table, from rank 0


def test_evaluate_end_to_end_on_the_embedded_model(tmp_path):
    output = tmp_path / "e2e.jsonl"
    out = run_cli("evaluate.py", "--dataset", "arith", "--methods", "cot,sc", "--limit", "2",
                  "--sc-samples", "3", "--max-new-tokens", "96", "--output", str(output), "--no-progress")
    records = read_records(str(output))
    assert {(r["method"], r["problem_id"]) for r in records} == {
        (m, f"arith-test-0-{i}") for m in ("cot", "sc") for i in range(2)}
    assert all(r["calls"] >= 1 and r["generated_tokens"] > 0 for r in records)
    assert all(r["prediction"] is not None for r in records if r["method"] == "cot")   # the real model answers
    assert "accuracy" in out and "calls/q" in out
