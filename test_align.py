"""
test_align.py -- the project's tests. Run:  python -m pytest -q test_align.py

What is checked against what:
  - the grader against a table of known traps (GSM-Hard floats, commas, dollars, LaTeX, missing answers);
  - every MATH-500, GSM8K, GSM-Hard, BBH and MMLU reference, written as a model writes it, grades equal to
    itself; LaTeX normalisation is idempotent on seeded generated answers;
  - the data loaders on the data folder ($ALIGN_DATA_DIR, else a folder `shared/data` beside the repository)
    and on malformed files; the download path offline, through file:// URLs;
  - the generation path on a tiny random Llama with an in-memory tokenizer, saved to a folder and loaded
    through llm.py: cached-prefix sampling equals plain sampling under greedy decoding; the same, and one seeded
    search, on tiny random models of the paper preset's classes (Mistral, Ministral, Phi-3, Qwen2); prompts through
    a chat template as strict as Mistral's; the known parameter counts against models built from the published
    configs on the meta device;
  - bad input: every entry point answers it with one line `error: ...`, before any model or data is loaded;
    `evaluate.py --check` loads, downloads and connects to nothing;
  - MCTS against hand computations on a fake model with scripted steps;
  - Hedge against its closed form; the theorems on the synthetic games of theory.py, checked to reject impostor
    learners (follow-the-leader, last-round-only);
  - the MLPO loss against a hand computation, and one real optimiser step;
  - the command-line entry points in subprocesses, including one run on the real embedded model.
"""
from __future__ import annotations

import collections
import csv
import glob
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
import warnings
import weakref

import numpy as np
import pytest
import torch

import align
import evaluate
import llm
import mcts
import mlpo
from align import (DELEGATION_RULES, GameConfig, Player, Pool, best_response_is_dominated, counterfactual_utilities,
                   delegate, expected_utilities, nash_gap, pareto_share, play_delegation_game, rank_feedback)
from data import ARCHIVES, BBH_TASKS, MMLU_SUBJECTS, SOURCES, DataError, arith, load_problems
import engine
from engine import Generated, Request, run_programs
from evaluate import (METHODS, Context, EvalConfig, batch_and_window, parse_methods, principal_correlations,
                      read_records, run_methods, summarize, wilson_interval)
from hedge import Hedge, adversarial_regret, hedge_regret_bound, softmax, tuned_learning_rate
from mcts import Agent, Node, SearchConfig, render_tree, search, select, uct_score
from mlpo import (choose_aggregations, completion_logprobs, drop_easy_questions, group_advantages, keep_completion,
                  leader_answer, leader_reward, mlpo_loss, sft_loss, template_completion)
from principal import PRINCIPAL_MODES, PrincipalOrder, parse_listwise, plackett_luce_order, rank_classes, select_final
from theory import (STUDY_LEVELS, break_even, delivered_classes, principal_quality_study, replay_game, replay_problems,
                    simulate, synthetic_question, theorem1_margin)
from utility import (Sample, answer_kind_of_target, canonical_answer, explicit_answer, extract_answer,
                     group_into_classes, is_correct, majority_answer, normalize_math, same_answer,
                     self_consistency_utility)

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_DATA = os.environ.get("ALIGN_DATA_DIR") or os.path.join(HERE, "..", "shared", "data")
needs_shared_data = pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="no data folder here (set ALIGN_DATA_DIR)")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def arenas_start_as_nan(monkeypatch):
    """Every engine arena in these tests starts filled with NaN, as memory fresh from torch.empty may on another
    machine (CI once read NaN there where this machine's fresh pages were zeros): a slot read before the forward
    that writes it then turns the logits into NaN, here as there, instead of passing by luck."""
    allocate = engine.Arena._allocate

    def allocate_poisoned(self, capacity):
        used = self.length
        allocate(self, capacity)
        self.storage[..., used:, :] = float("nan")
    monkeypatch.setattr(engine.Arena, "_allocate", allocate_poisoned)


# The model classes of the `paper` preset, tiny and random: (config class, model class, settings). The windows of
# the sliding-window classes are set by the tests (TINY_WINDOW unless a test says otherwise).
TINY_WINDOW = 128
TINY_ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),                               # SmolLM2, the embedded model
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": TINY_WINDOW}),  # zephyr-7b-beta
    "ministral": ("MinistralConfig", "MinistralForCausalLM",                          # Ministral-8B-Instruct-2410
                  {"sliding_window": TINY_WINDOW, "head_dim": 16,
                   "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"sliding_window": TINY_WINDOW}),     # Phi-3-mini-4k-instruct
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),                               # Qwen2.5-7B-Instruct: no window
}
# A chat template with the rules real ones enforce (Mistral-7B-Instruct's, older Gemma's): no system role, and
# user and assistant strictly alternating, starting with the user.
STRICT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")


def make_tiny_model(folder: str, architecture: str = "llama", chat_template: str | None = None, **settings) -> str:
    """A tiny random model of one of TINY_ARCHITECTURES and a byte-level BPE tokenizer trained in memory, saved
    with save_pretrained. `settings` override the model's config (e.g. sliding_window=16)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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
    fast.chat_template = chat_template or (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    config_class, model_class, architecture_settings = TINY_ARCHITECTURES[architecture]
    config = getattr(transformers, config_class)(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        initializer_range=0.5,  # large weights: outputs depend visibly on positions and masks
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id,
        **{**architecture_settings, **settings})
    torch.manual_seed(0)
    getattr(transformers, model_class)(config).save_pretrained(folder)
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


# Issue 13: each trap below is a public failure of some grader; each row says what is right.
@pytest.mark.parametrize("text, kind, expected", [
    ("The answer is 3. Wait, no: the answer is 5.", "number", "5"),        # the last of several answers wins
    ("\\boxed{1} is wrong; correct: \\boxed{2}", "math", "2"),
    ("The answer is **73**.", "number", "73"), ("The answer is **73**.", "math", "73"),   # markdown bold
    ("**Answer:** 73", "number", "73"),
    ("\\[ \\boxed{42} \\]", "math", "42"), ("\\[ \\boxed{42} \\]", "number", "42"),       # display math, no $
    ("The answer is 2.0107e-06.", "number", "0.0000020107"),               # GSM-Hard's scientific notation
    ("The answer is 9.28 \\times 10^{12}.", "number", "9280000000000"),
    ("The answer is 1,22.", "number", None),                               # a decimal comma: neither 122 nor 1
    ("The answer is -9,867,630.", "number", "-9867630"),
    ("\\boxed{\\frac 59}", "math", "\\frac{5}{9}"), ("\\boxed{\\sqrt3}", "math", "\\sqrt{3}"),
    ("\\boxed{2x}", "math", "2x"), ("\\boxed{3i}", "math", "3i"),          # a variable is no unit
    ("The answer is $y = -2x$.", "math", "-2x"), ("The answer is $\\pm 2$.", "math", "\\pm2"),
    ("\\boxed{\\text{13}}", "math", "13"), ("\\boxed{864 \\mbox{ inches}^2}", "math", "864"),
    ("The answer is $\\boxed{5}$. I am sure the answer is correct.", "math", "5"),  # a box beats prose
])
def test_extract_answer_traps_of_issue_13(text, kind, expected):
    assert extract_answer(text, kind) == expected


@pytest.mark.parametrize("a, b, same", [
    ("\\frac{1}{99}", "\\frac{1}{100}", False), ("0.0009", "2.0107e-06", False),   # tolerances were too loose
    ("123456789", "123456790", False), ("123456789", "123456790.0", False),
    ("2.33", "2.3333333", True), ("2.01e-06", "2.0107e-06", True), ("0.0000020107", "2.0107e-06", True),
    ("0.0", "2.0107e-06", False), ("1.3", "1.25", False), ("0.33", "\\frac{1}{3}", False),  # too few digits
    ("0.333", "\\frac{1}{3}", True),                                        # a decimal rounds an exact answer
    ("0.3", "0.30000000000000004", True), ("9189480", "9189480.000000002", True),  # binary-float noise
    ("-1895420.5", "-1895420.4999999998", True), ("-1895420", "-1895420.4999999998", False),
    ("6.72 \\times 10^{-5}", ".0000672", True), ("-9,867,630", "-9867630.0", True),
    ("\\frac 59", "\\frac{5}{9}", True), ("\\frac59", "\\frac{5}{9}", True), ("\\frac{270}7", "\\frac{270}{7}", True),
    ("2x", "2", False), ("-2x", "-2", False), ("3i", "3", False), ("y = -2x", "-2x", True),
    ("\\sqrt3", "\\sqrt{3}", True), ("11\\sqrt2", "11 \\sqrt{2}", True),
    ("1,22", "122", False), ("±2", "2", False), ("\\pm 2", "2", False), ("±2", "\\pm2", True),
    ("4", "4\\sqrt{2}", False), ("1-1/e", "1+1/e", False), ("(1,3)", "\\{1,3\\}", False), ("\\text{13}", "13", True),
    ("10,\\!080", "10080", True), ("\\$32,\\!348", "32348", True), ("(1,000)", "1000", False),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", True), ("5 cm", "5", True), ("(3,4]", "(3,4)", False),
    ("\\pi r^2", "\\pir^2", False), ("", "", False),
])
def test_same_answer_traps_of_issue_13(a, b, same):
    assert same_answer(a, b) is same
    assert same_answer(b, a) is same


# MATH-500 test/prealgebra/153.json, test/algebra/518.json, test/precalculus/356.json
@pytest.mark.parametrize("gold", ["\\frac 59", "\\frac 34", "y = -2x"])
def test_the_math500_references_of_issue_13_grade_equal_to_themselves(gold):
    assert is_correct(extract_answer(f"\\boxed{{{gold}}}", "math"), gold)
    assert not is_correct(extract_answer("\\boxed{2x}", "math"), "2")
    assert not is_correct(extract_answer("\\boxed{3i}", "math"), "3")


def reference_texts(gold, kind):
    """The reference written the ways a model writes a final answer. All three forms make sense for every
    kind here (extraction reads `#### X` for math too); math adds `$X$`, how a model writes LaTeX in prose."""
    forms = [f"The answer is {gold}.", f"\\boxed{{{gold}}}", f"#### {gold}"]
    return forms + ([f"The answer is ${gold}$."] if kind == "math" else [])


def self_grading_failures(references, kind):
    """Ids of references that, written as a model would write them, do not grade equal to themselves."""
    return [ref_id for ref_id, gold in references
            if not all(is_correct(prediction, gold, kind) and is_correct(prediction, gold)   # with and without a kind
                       for prediction in (extract_answer(text, kind) for text in reference_texts(gold, kind)))]


@needs_shared_data
def test_every_math_and_gsm_reference_grades_equal_to_itself():
    def rows(path):
        with open(os.path.join(SHARED_DATA, path), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    math500 = [(r["unique_id"], r["answer"]) for r in rows("math500/test.jsonl")]
    gsm8k = [(f"gsm8k-{i}", r["answer"].split("####")[-1].strip().replace(",", ""))
             for i, r in enumerate(rows("gsm8k/test.jsonl"))]
    hard = [(f"gsm_hard-{i}", str(r["target"])) for i, r in enumerate(rows("gsm_hard/gsmhardv2.jsonl"))]
    assert (len(math500), len(gsm8k), len(hard)) == (500, 1319, 1319)
    failures = self_grading_failures(math500, "math") + self_grading_failures(gsm8k + hard, "number")
    assert not failures, f"{len(failures)} references do not grade equal to themselves, first: {failures[:10]}"


def latex_answers(count, seed=0):
    """A seeded generator of LaTeX-ish answers, as MATH references and models write them."""
    rng = random.Random(seed)
    numbers = ["0", "1", "2", "12", "-3", "1,000", "10,\\!080", "0.5", ".25", "3.14", "2.0107e-06"]
    variables = ["x", "2x", "-2x", "3i", "\\pi", "k", "r^2", "\\infty"]

    def answer(depth=0):
        part = (lambda: answer(depth + 1)) if depth < 2 else (lambda: rng.choice(numbers))
        forms = [
            lambda: rng.choice(numbers), lambda: rng.choice(variables),
            lambda: rng.choice(["\\frac", "\\dfrac", "\\tfrac"])                       # with and without braces
            + rng.choice([f"{{{part()}}}{{{part()}}}", "59", " 34", "9{19}", "{270}7"]),
            lambda: "\\sqrt" + rng.choice([f"{{{part()}}}", "3", " 2", "[3]{8}"]),
            lambda: part() + rng.choice(["\\text{ cm}", " cm", "\\mbox{ inches}^2", "^\\circ", "\\%", "°"]),
            lambda: rng.choice(["\\left(", "(", "[", "\\left["]) + part() + ", " + part()  # intervals, points
            + rng.choice(["\\right)", ")", "]", "\\right]"]),
            lambda: "\\begin{pmatrix} " + part() + " \\\\ " + part() + " \\end{pmatrix}",
            lambda: rng.choice(["x = ", "y=", "x \\in "]) + part(),
            lambda: rng.choice(["-", "+", "\\pm ", "±"]) + part() + rng.choice([" + ", "-", "\\cup"]) + part(),
            lambda: rng.choice(["\\text{", "\\textbf{", "\\mathrm{"]) + rng.choice(["13", "(C)", "even", " east"])
            + "}",
            lambda: "\\{" + part() + "," + part() + "\\}",
        ]
        return rng.choice(forms)()

    for _ in range(count):
        s = rng.choice(["", "$", " ", "**", "\\("]) + answer() + rng.choice(["", "$", ".", "  ", "**", "\\)"])
        yield re.sub(" ", lambda m: rng.choice(["", " ", "  "]), s)                 # spaces come and go


def token_soup(count, seed=0):
    """Random strings of LaTeX tokens, well formed or not: normalisation must be idempotent on those too."""
    rng = random.Random(seed)
    tokens = ["\\frac", "\\dfrac", "\\sqrt", "{", "}", "1", "59", "0", " ", "x", "=", "\\text{", "\\text{ cm}", " cm",
              "^2", ",", ".", "$", "\\left(", "\\right)", "**", "-", "\\!", "^\\circ", "\\%", "\\pm", "±", "(", ")",
              "[", "]", "\\$", "e", "\\{", "\\}", "\\\\", "&", "°", "1,000", "\\[", "\\]", "/", "\\times", "10^{12}"]
    for _ in range(count):
        yield "".join(rng.choice(tokens) for _ in range(rng.randint(1, 12)))


def test_normalize_math_is_idempotent():
    answers = list(latex_answers(3000)) + list(token_soup(3000))
    if os.path.isdir(SHARED_DATA):
        with open(os.path.join(SHARED_DATA, "math500", "test.jsonl"), encoding="utf-8") as f:
            answers += [json.loads(line)["answer"] for line in f if line.strip()]
    not_idempotent = [s for s in answers if normalize_math(normalize_math(s)) != normalize_math(s)]
    assert not not_idempotent, f"normalize(normalize(s)) != normalize(s) for {not_idempotent[:5]}"


# Issue 12: BIG-Bench Hard and MMLU answers.
@pytest.mark.parametrize("text, expected", [
    ("(A)", "A"), ("A)", "A"), ("The answer is B", "B"), ("The answer is (B).", "B"), ("answer: (C)", "C"),
    ("So the answer is (D).", "D"), ("\\boxed{C}", "C"), ("\\boxed{\\text{(E)}}", "E"), ("... so I pick C.", "C"),
    ("(A) 12/11/1937 is a day early. So the answer is (B).", "B"),          # the letter, not the option's text
    ("So the answer is (B). Wait: the answer is (D).", "D"),               # the last stated answer wins
    ("The answer is 12/12/1937 (C).", "C"), ("The answer is (b).", "B"), ("**Answer:** (Q)", "Q"),
    ("A farmer has 3 cows.", None), ("I think it is a trick", None), ("The answer is Bob.", None),
])
def test_choice_extraction_traps(text, expected):
    assert extract_answer(text, "choice") == expected


@pytest.mark.parametrize("text, expected", [
    ("So the answer is valid.", "valid"), ("So the answer is True.", "True"), ("So the answer is \"No\".", "No"),
    ("So the answer is **yes**.", "yes"), ("So the answer is ) ] }.", ")]}"), ("So the answer is )]}", ")]}"),
    ("So the answer is apple banana cherry.", "apple banana cherry"), ("So the answer is 11.", "11"),
    ("So the answer is Monsters, Inc.", "Monsters, Inc"), ("\\boxed{False}", "False"),
    ("So the answer is yes. Wait, the answer is no.", "no"),
    ("Sorting by the first letter:\napple banana cherry", "apple banana cherry"),   # else the last line
    ("", None),
])
def test_text_extraction_traps(text, expected):
    assert extract_answer(text, "text") == expected


@pytest.mark.parametrize("prediction, gold, kind, correct", [
    ("B", "(B)", "choice", True), ("(B)", "B", "choice", True), ("B", "B", "choice", True),
    ("A", "(B)", "choice", False),
    ("(b)", "(B)", "choice", True), ("12/11/1937", "(A)", "choice", False),
    ("true", "True", "text", True), ("YES", "yes", "text", True), ("Valid", "valid", "text", True),
    ("invalid", "valid", "text", False), (")]}", ") ] }", "text", True), ("] )", ") ]", "text", False),
    ("apple  banana", "apple banana", "text", True), ("applebanana", "apple banana", "text", False),
    ("banana apple", "apple banana", "text", False), ("'valid'", "valid", "text", True), ("11.0", "11", "text", True),
    ("-11520", "-11520", "number", True), ("11", "12", "number", False),
])
def test_grading_traps_of_the_new_kinds(prediction, gold, kind, correct):
    assert is_correct(prediction, gold, kind) is correct
    assert is_correct(canonical_answer(prediction, kind), gold) is correct  # the grader without a kind agrees


@pytest.mark.parametrize("step, kind, stated", [
    ("So the answer is (B).", "choice", "B"), ("Option (A) says 12/11/1937.", "choice", None),
    ("(A) 12/11/1937", "choice", None), ("So the answer is valid.", "text", "valid"),
    ("The final stack is \"[ { [\".", "text", None), ("So the answer is ] } ].", "text", "]}]"),
    ("The answer is 42.", "number", "42"), ("She has 42 apples.", "number", None),
    ("The answer is $\\boxed{\\frac 12}$.", "math", "\\frac{1}{2}"),
])
def test_explicit_answer_on_single_steps(step, kind, stated):
    assert explicit_answer(step, kind) == stated


def bbh_targets():
    """{task: [targets]} from ../shared/data/bbh/*.json."""
    targets = {}
    for path in sorted(glob.glob(os.path.join(SHARED_DATA, "bbh", "*.json"))):
        with open(path, encoding="utf-8") as f:
            targets[os.path.basename(path)[:-5]] = [e["target"] for e in json.load(f)["examples"]]
    return targets


@needs_shared_data
def test_answer_kind_of_every_bbh_target():
    kinds = {task: {answer_kind_of_target(t) for t in targets} for task, targets in bbh_targets().items()}
    assert len(kinds) == 27
    assert kinds["date_understanding"] == {"choice"} and kinds["boolean_expressions"] == {"text"}
    assert kinds["object_counting"] == kinds["multistep_arithmetic_two"] == {"number"}
    assert kinds["dyck_languages"] == kinds["word_sorting"] == {"text"}
    # Upstream quirk: three targets in two choice tasks are option texts, not letters
    # ("Monsters, Inc"; "dearth, wind, & fire"; "rita, sue and bob poo"); no letter can match them.
    assert {task for task, k in kinds.items() if len(k) > 1} == {"movie_recommendation", "ruin_names"}


@needs_shared_data
def test_every_bbh_and_mmlu_target_grades_equal_to_itself():
    failures = []
    for task, targets in bbh_targets().items():
        for i, target in enumerate(targets):
            kind = answer_kind_of_target(target)
            if not is_correct(extract_answer(f"So the answer is {target}.", kind), target, kind):
                failures.append(f"{task}-{i}")
    golds = 0
    for path in sorted(glob.glob(os.path.join(SHARED_DATA, "mmlu", "test", "*_test.csv"))):
        with open(path, encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                golds += 1
                for text in (f"So the answer is {row[5]}.", f"The answer is ({row[5]}).", f"\\boxed{{{row[5]}}}"):
                    if not is_correct(extract_answer(text, "choice"), row[5], "choice"):
                        failures.append(f"{os.path.basename(path)}-{i}")
    assert golds == 14042
    assert not failures, f"{len(failures)} targets do not grade equal to themselves, first: {failures[:10]}"


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
    train = load_problems("gsm8k", SHARED_DATA, limit=7, split="train")
    assert len(train) == 7 and train[0]["id"] == "gsm8k_train-0" and train[0]["answer"] == "72"


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


BBH_SMALL_TASKS = {"causal_judgement": 187, "penguins_in_a_table": 146, "snarks": 178}   # the rest have 250


@needs_shared_data
def test_bbh_loader_on_shared_data():
    problems = load_problems("bbh", SHARED_DATA)
    assert len(problems) == 6511 and len({p["id"] for p in problems}) == 6511
    by_task = {task: [p for p in problems if p["id"].rsplit("-", 1)[0] == f"bbh-{task}"] for task in BBH_TASKS}
    assert {task: len(ps) for task, ps in by_task.items()} == {t: BBH_SMALL_TASKS.get(t, 250) for t in BBH_TASKS}
    assert [p["id"] for p in problems[:27]] == [f"bbh-{task}-0" for task in BBH_TASKS]   # round-robin over tasks
    assert [p["id"] for p in by_task["snarks"][:3]] == ["bbh-snarks-0", "bbh-snarks-1", "bbh-snarks-2"]
    first = by_task["date_understanding"][0]
    assert set(first) == {"id", "question", "answer", "kind", "examples"} and first["answer"] == "(B)"
    assert first["question"].startswith("Infer the date from context.\n\nToday is Christmas Eve of 1937.")
    kinds = {task: {p["kind"] for p in ps} for task, ps in by_task.items()}
    assert all(len(k) == 1 for k in kinds.values())                    # one kind per task
    assert {t for t, k in kinds.items() if k == {"number"}} == {"object_counting", "multistep_arithmetic_two"}
    assert {t for t, k in kinds.items() if k == {"text"}} == {
        "boolean_expressions", "causal_judgement", "dyck_languages", "formal_fallacies", "navigate",
        "sports_understanding", "web_of_lies", "word_sorting"}
    # the upstream flaw: three choice targets are option texts, which no letter can match
    unmatchable = {p["id"] for p in problems if p["kind"] == "choice" and not canonical_answer(p["answer"], "choice")}
    assert unmatchable == {"bbh-movie_recommendation-163", "bbh-ruin_names-99", "bbh-ruin_names-144"}
    with open(os.path.join(SHARED_DATA, "bbh", "navigate.json"), encoding="utf-8") as f:
        raw = json.load(f)["examples"]
    assert [p["answer"] for p in by_task["navigate"]] == [e["target"] for e in raw]
    assert all(p["question"].endswith(e["input"]) for p, e in zip(by_task["navigate"], raw))


@needs_shared_data
def test_bbh_exemplars_are_the_tasks_cot_prompts():
    questions = {p["question"] for p in load_problems("bbh", SHARED_DATA)}
    for task in BBH_TASKS:
        problem = load_problems(f"bbh:{task}", SHARED_DATA, limit=1)[0]
        with open(os.path.join(SHARED_DATA, "bbh", "cot-prompts", f"{task}.txt"), encoding="utf-8") as f:
            prompt = f.read()
        description = prompt.split("\n", 2)[2].split("\n\nQ: ")[0].strip()        # after the canary and -----
        assert problem["question"].startswith(description + "\n\n") and len(problem["examples"]) == 3, task
        for question, answer in problem["examples"]:
            assert question.startswith(description + "\n\n") and question not in questions
            assert f"Q: {question[len(description) + 2:]}\nA: {answer}" in prompt     # verbatim from the file
            assert answer.startswith("Let's think step by step.") and "\nQ:" not in answer
            stated = re.search(r"So the answer is (.+)\.$", answer).group(1)
            assert extract_answer(answer, problem["kind"]) == canonical_answer(stated, problem["kind"]) is not None
    snarks = load_problems("bbh:snarks", SHARED_DATA, limit=1)[0]
    assert "Cambridge University Dictionary" in snarks["question"]     # snarks' two-paragraph description


@needs_shared_data
def test_mmlu_loader_on_shared_data():
    problems = load_problems("mmlu", SHARED_DATA)
    assert len(problems) == 14042 and len({p["id"] for p in problems}) == 14042
    assert [p["id"] for p in problems[:57]] == [f"mmlu-{subject}-0" for subject in MMLU_SUBJECTS]
    assert collections.Counter(p["answer"] for p in problems) == {"A": 3222, "B": 3462, "C": 3582, "D": 3776}
    assert {p["kind"] for p in problems} == {"choice"}
    law = [p for p in problems if p["id"].startswith("mmlu-professional_law-")]
    assert len(law) == 1534 and law[-1]["id"] == "mmlu-professional_law-1533"
    first = problems[0]
    assert set(first) == {"id", "question", "answer", "kind", "examples"} and first["answer"] == "B"
    assert first["question"] == ("Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over "
                                 "Q.\nOptions:\n(A) 0\n(B) 4\n(C) 2\n(D) 6")
    exemplar_lists = {id(p["examples"]): p["examples"] for p in problems}.values()   # one list per subject
    assert len(exemplar_lists) == 57 and sum(len(e) for e in exemplar_lists) == 285
    with open(os.path.join(SHARED_DATA, "mmlu", "dev", "anatomy_dev.csv"), encoding="utf-8", newline="") as f:
        dev = list(csv.reader(f))
    anatomy = next(p for p in problems if p["id"] == "mmlu-anatomy-0")
    assert [a for _, a in anatomy["examples"]] == [f"The answer is ({row[5]})." for row in dev]
    assert [q.split("\nOptions:")[0] for q, _ in anatomy["examples"]] == [row[0].strip() for row in dev]
    for question, answer in anatomy["examples"]:
        assert extract_answer(answer, "choice") in "ABCD" and question.count("\n(") == 4
    mathematics = load_problems("mmlu:college_mathematics", SHARED_DATA, limit=1)[0]
    assert "\r\n" in mathematics["examples"][2][0]          # a newline inside a quoted field, kept as it is


@needs_shared_data
def test_tasks_are_picked_by_name_and_interleaved():
    picked = load_problems("bbh:navigate, date_understanding", SHARED_DATA, limit=5)
    assert [p["id"] for p in picked] == ["bbh-navigate-0", "bbh-date_understanding-0", "bbh-navigate-1",
                                         "bbh-date_understanding-1", "bbh-navigate-2"]
    assert [p["kind"] for p in picked[:2]] == ["text", "choice"]
    assert len(load_problems("bbh:snarks", SHARED_DATA)) == 178
    assert len(load_problems("mmlu:anatomy,virology", SHARED_DATA)) == 135 + 166
    with pytest.raises(DataError, match=r"unknown bbh task\(s\) \['navigation'\]; choose from: boolean_expressions"):
        load_problems("bbh:navigation", SHARED_DATA)
    with pytest.raises(DataError, match=r"dataset 'gsm8k' has no tasks to pick"):
        load_problems("gsm8k:main", SHARED_DATA)
    with pytest.raises(DataError, match=r"'mmlu' has no train split"):
        load_problems("mmlu", SHARED_DATA, split="train")
    out = run_cli("data.py", "mmlu:anatomy", "--data-dir", SHARED_DATA)
    assert out.startswith("mmlu:anatomy (test): 135 problems") and '"id": "mmlu-anatomy-0"' in out


def test_bbh_and_mmlu_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "bbh" / "cot-prompts").mkdir(parents=True)
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "dev").mkdir(parents=True)
    task, prompt = tmp_path / "bbh" / "navigate.json", tmp_path / "bbh" / "cot-prompts" / "navigate.txt"
    good_prompt = ("canary\n-----\nNavigate.\n\nQ: Go left?\nA: Let's think step by step.\nSo the answer is Yes.\n\n"
                   "Q: Go right?\nA: Let's think step by step. So the answer is No.")
    prompt.write_text(good_prompt)
    bbh_cases = [
        ('{"canary": "c", "examples": [{"input": "q", "target": "Yes"}',
         r"navigate.json, line 1, column \d+: not valid JSON"),
        ('{"canary": "c"}', r"navigate.json, line 1: expected an object with a list under 'examples'"),
        ('{"examples": [{"input": "q", "target": "Yes"}, {"input": "q"}]}',
         r"navigate.json, line 1, example 2: missing or non-string field\(s\) \['target'\]"),
        ('{"examples": [{"input": "q", "target": 3}]}', r"example 1: missing or non-string field\(s\) \['target'\]"),
    ]
    for text, error in bbh_cases:
        task.write_text(text)
        with pytest.raises(DataError, match=error):
            load_problems("bbh:navigate", str(tmp_path))
    task.write_text('{"canary": "c", "examples": [{"input": "Go up?", "target": "No"}]}')
    assert load_problems("bbh:navigate", str(tmp_path))[0]["examples"][1] == (
        "Navigate.\n\nGo right?", "Let's think step by step. So the answer is No.")
    prompt_cases = [(good_prompt.replace("-----", "====="), r"navigate.txt, line 2: expected a canary line"),
                    (good_prompt.replace("So the answer is No.", "No."), r"navigate.txt, line 9: an exemplar is"),
                    (good_prompt.replace("\nA: Let's think step by step.\nSo", "\nSo"),
                     r"navigate.txt, line 5: an exemplar"),
                    ("canary\n-----\nNavigate.\n\nGo left? Yes.", r"navigate.txt, line 5: no exemplar")]
    for text, error in prompt_cases:
        prompt.write_text(text)
        with pytest.raises(DataError, match=error):
            load_problems("bbh:navigate", str(tmp_path))
    with pytest.raises(DataError, match=r"no file .*bbh/snarks.json"):
        load_problems("bbh:snarks", str(tmp_path))

    test, dev = tmp_path / "mmlu" / "test" / "anatomy_test.csv", tmp_path / "mmlu" / "dev" / "anatomy_dev.csv"
    good_row = b"Which bone?,Hyoid,Femur,Tibia,Ulna,A\n"
    dev.write_bytes(good_row * 5)
    multi_line = b'"A question\r\nover two lines?",1,2,3,4,B\r\n'        # row 1 spans lines 1-2
    csv_cases = [(multi_line + b"Short,row,B\n", r"anatomy_test.csv, row 2 \(line 3\): 3 fields, expected 6"),
                 (multi_line + good_row + b"Q,1,2,3,4,E\n",
                  r"row 3 \(line 4\): the answer must be A, B, C or D, not 'E'"),
                 (multi_line + b' ,1,2,3,4,C\n', r"row 2 \(line 3\): the question is empty"),
                 (multi_line + b'"Unclosed,1,2,3,4,A\n', r"row 2 \(line 3\): not valid CSV"),
                 (multi_line + b"Caf\xe9?,1,2,3,4,A\n", r"anatomy_test.csv, line 3: not UTF-8")]
    for data, error in csv_cases:
        test.write_bytes(data)
        with pytest.raises(DataError, match=error):
            load_problems("mmlu:anatomy", str(tmp_path))
    test.write_bytes(multi_line + b"\n" + good_row)                           # a blank line is no row
    loaded = load_problems("mmlu:anatomy", str(tmp_path))
    assert [p["answer"] for p in loaded] == ["B", "A"] and loaded[0]["question"].startswith("A question\r\nover")
    dev.write_bytes(good_row + b"Q,1,2,3,4,F\n")
    with pytest.raises(DataError, match=r"anatomy_dev.csv, row 2 \(line 2\): the answer must be"):
        load_problems("mmlu:anatomy", str(tmp_path))
    dev.unlink()
    with pytest.raises(DataError, match=r"no file .*mmlu/dev/anatomy_dev.csv"):
        load_problems("mmlu:anatomy", str(tmp_path))


@needs_shared_data
def test_bbh_and_mmlu_download_into_the_cache(tmp_path, monkeypatch):
    """The download path, offline: file:// URLs stand in for GitHub and the MMLU tarball."""
    monkeypatch.delenv("ALIGN_DATA_DIR", raising=False)
    monkeypatch.setattr("data.DEFAULT_CACHE", str(tmp_path / "cache"))
    for relative in ("bbh/navigate.json", "bbh/cot-prompts/navigate.txt"):
        monkeypatch.setitem(SOURCES, relative, "file://" + os.path.abspath(os.path.join(SHARED_DATA, relative)))
    tarball = tmp_path / "data.tar"
    with tarfile.open(tarball, "w") as archive:
        for split in ("test", "dev"):
            archive.add(os.path.join(SHARED_DATA, "mmlu", split, f"anatomy_{split}.csv"),
                        f"data/{split}/anatomy_{split}.csv")
        archive.add(os.path.join(SHARED_DATA, "mmlu", "dev", "virology_dev.csv"), "data/auxiliary_train/x.csv")
        archive.add(os.path.join(SHARED_DATA, "mmlu", "dev", "virology_dev.csv"), "data/test/../../escape.csv")
    monkeypatch.setitem(ARCHIVES, "mmlu/", ("file://" + str(tarball), ARCHIVES["mmlu/"][1]))
    for name in ("bbh:navigate", "mmlu:anatomy"):
        assert load_problems(name) == load_problems(name, SHARED_DATA)
    cached = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
    assert cached == ["cache/bbh/cot-prompts/navigate.txt", "cache/bbh/navigate.json", "cache/mmlu/dev/anatomy_dev.csv",
                      "cache/mmlu/test/anatomy_test.csv", "data.tar"]        # no tarball, no other folder kept
    with pytest.raises(DataError, match=r"has no mmlu/dev/virology_dev.csv; pass --data-dir"):
        load_problems("mmlu:virology")
    monkeypatch.setitem(SOURCES, "bbh/snarks.json", "file://" + str(tmp_path / "missing.json"))
    with pytest.raises(DataError, match=r"could not download .*Offline\? Pass --data-dir DIR"):
        load_problems("bbh:snarks")
    assert not glob.glob(str(tmp_path / "cache" / "bbh" / "*.part"))


def run_on_the_tiny_model(dataset, tiny_model_dir, output):
    """evaluate.py --methods cot,sc --limit 2 on the shared data with the tiny random model: the table and records."""
    out = run_cli("evaluate.py", "--dataset", dataset, "--methods", "cot,sc", "--limit", "2", "--model", tiny_model_dir,
                  "--sc-samples", "2", "--max-new-tokens", "8", "--output", str(output), "--no-progress",
                  "--device", "cpu", env={"ALIGN_DATA_DIR": SHARED_DATA})
    records = read_records(str(output))
    table = out.split("accuracy")[1]
    assert re.search(r"\ncot +2 ", table) and re.search(r"\nsc +2 ", table)   # random model: any accuracy
    assert sorted((r["method"], r["problem_id"]) for r in records) == sorted(
        (m, p) for m in ("cot", "sc") for p in {r["problem_id"] for r in records})
    assert all(r["dataset"] == dataset and r["calls"] > 0 and isinstance(r["correct"], bool) for r in records)
    return records


@needs_shared_data
def test_evaluate_runs_cot_and_sc_on_bbh_with_the_tiny_model(tiny_model_dir, tmp_path):
    records = run_on_the_tiny_model("bbh:sports_understanding,date_understanding", tiny_model_dir, tmp_path / "b.jsonl")
    assert {r["problem_id"]: r["gold"] for r in records} == {"bbh-sports_understanding-0": "no",
                                                             "bbh-date_understanding-0": "(B)"}
    assert all(len(r["answers"]) == 2 for r in records if r["method"] == "sc")


@needs_shared_data
def test_evaluate_runs_cot_and_sc_on_mmlu_with_the_tiny_model(tiny_model_dir, tmp_path):
    records = run_on_the_tiny_model("mmlu:world_religions,anatomy", tiny_model_dir, tmp_path / "m.jsonl")
    assert {r["problem_id"]: r["gold"] for r in records} == {"mmlu-world_religions-0": "D", "mmlu-anatomy-0": "A"}


def test_arith_is_seeded_and_train_never_repeats_test():
    first, again = arith(split="test", seed=3, count=50), arith(split="test", seed=3, count=50)
    assert first == again and first == load_problems("arith", seed=3, limit=50)
    assert all(p["answer"].isdigit() and int(p["answer"]) > 0 for p in first)  # whole, positive answers
    test_questions = {p["question"] for p in arith(split="test", seed=0, count=1000)}
    assert not test_questions & {p["question"] for p in load_problems("arith", split="train")}
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


# ---------------------------------------------------------------- engine.py: the lockstep engine

def reference_greedy(llm_, ids: list, max_new_tokens: int) -> list:
    """Greedy token ids after `ids`, one sequence alone through transformers' own generate: the oracle."""
    with torch.no_grad():
        out = llm_.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=llm_.pad_id)
    new = out[0, len(ids):].tolist()
    return new[:next((i for i, t in enumerate(new) if t in llm_.end_ids), len(new))]


@pytest.mark.parametrize("max_tokens_per_step", [1024, 7])
def test_engine_greedy_equals_one_sequence_at_a_time_on_a_mixed_batch(tiny_llm, max_tokens_per_step):
    """Two problems (arenas), two agents' prompts each (one a prefix-sharing variant), steps continued from kept
    states at depths 1 and 2, and prompts of different lengths -- all in lockstep -- against transformers'
    generate on each sequence's exact token ids, alone. With a step of 7 tokens every prompt is fed in pieces
    (chunked prefill) while other rows generate. The two problems' requests alternate, so each forward regroups its
    tokens arena by arena and must hand the logits back in the order they were queued."""
    prompts = {("p1", "a"): tiny_llm.chat("Tom has 3 apples and buys 5 more."),
               ("p1", "b"): tiny_llm.chat("Tom has 3 apples and buys 5 more. Is this correct?"),
               ("p2", "a"): tiny_llm.chat("Step 1: 12 - 5 = 7", examples=[("Is this correct?", "Yes")]),
               ("p2", "b"): tiny_llm.chat("The answer is 8.")}

    def program(prompt, steps):           # a chain of `steps` continuations, each from the last one's state
        chain, state, suffix = [], None, ""
        for depth in range(steps):
            [[generated]] = yield [Request(tiny_llm, prompt, suffix=suffix, state=state, max_new_tokens=5 + depth,
                                           keep=True)]
            chain.append(generated.ids)
            state, suffix = generated.state, suffix + generated.text
        return chain
    keys = [("p1", "a"), ("p2", "a"), ("p1", "b"), ("p2", "b")]          # the problems interleaved in the queue
    chains = run_programs([program(prompts[k], 1 + i // 2) for i, k in enumerate(keys)],
                          arenas=[k[0] for k in keys], max_tokens_per_step=max_tokens_per_step)
    for key, chain in zip(keys, chains):
        context = tiny_llm.encode(prompts[key])
        for depth, ids in enumerate(chain):
            assert ids == reference_greedy(tiny_llm, context, 5 + depth), (key, depth)
            context = context + ids
    assert sum(len(chain) for chain in chains) == 6 and all(len(ids) for chain in chains for ids in chain)


@pytest.mark.parametrize("max_tokens_per_step", [1024, 3])
def test_engine_scores_equal_the_reference_scores_even_split_over_steps(tiny_llm, max_tokens_per_step):
    """log p(continuation | prompt) through the engine (each continuation's tokens fed as a branch; with a small
    step, spread over many forwards) equals LLM.score, for several continuations of different lengths."""
    prompt = tiny_llm.chat("Tom has 3 apples and buys 5 more. How many?")
    continuations = ("Yes", "He has 8 apples.", "3 + 5 = 8, so the answer is 8.", "No")

    def program():
        [scores] = yield [Request(tiny_llm, prompt, score=continuations)]
        return scores
    [scores] = run_programs([program()], max_tokens_per_step=max_tokens_per_step)
    assert scores == pytest.approx(tiny_llm.score(prompt, list(continuations)), abs=1e-4)


def test_engine_scored_continuations_take_their_slots_as_they_are_fed(tiny_llm, monkeypatch):
    """A request scoring many continuations holds its prompt plus the continuations in flight in its arena, not
    all of them at once (the likelihood principal scores every pooled class's solution), and its scores still equal
    LLM.score's. Fed 4 tokens a step, the arena never holds more than the prompt, one whole continuation and the
    next one's first 4 tokens."""
    arenas = []

    class Recorded(engine.Arena):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            arenas.append(self)
    monkeypatch.setattr(engine, "Arena", Recorded)
    prompt = tiny_llm.chat("Tom has 3 apples and buys 5 more. How many?")
    continuations = tuple(f"Step {k}: he has {3 + k} apples, then {8 + k} in all, so the answer is {8 + k}."
                          for k in range(6))

    def program():
        [scores] = yield [Request(tiny_llm, prompt, score=continuations)]
        return scores
    [scores] = run_programs([program()], max_tokens_per_step=4)
    assert scores == pytest.approx(tiny_llm.score(prompt, list(continuations)), abs=1e-4)
    lengths = [len(tiny_llm.encode(c)) - 1 for c in continuations]     # a continuation's first token is not fed
    (arena,), prompt_length = arenas, len(tiny_llm.encode(prompt))
    assert arena.length <= prompt_length + max(lengths) + 4 < prompt_length + sum(lengths)


@pytest.mark.parametrize("max_tokens_per_step", [1024, 7])
def test_engine_copies_a_prefix_another_problem_computed_instead_of_computing_it_again(tiny_llm, max_tokens_per_step):
    """Two problems whose prompts share the few-shot exemplars: the second copies their keys and values (also
    when the first is prefilled in pieces: the second waits until it is done)."""
    examples = [("Mia has 12 pencils and gives 5 away. How many are left?", "12 - 5 = 7.\nThe answer is 7.")] * 3
    prompts = [tiny_llm.chat(q, examples=examples) for q in ("Tom has 3 apples.", "Ava has 5 apples and 7 more.")]
    shared = engine.common_prefix(tiny_llm.encode(prompts[0]), tiny_llm.encode(prompts[1]))
    assert shared > 40

    def program(prompt):
        [[generated]] = yield [Request(tiny_llm, prompt, max_new_tokens=6)]
        return generated.ids
    before = dict(engine.STATS)
    outputs = run_programs([program(p) for p in prompts], arenas=["one problem", "another"],
                           max_tokens_per_step=max_tokens_per_step)
    copied = engine.STATS["tokens_copied"] - before["tokens_copied"]
    fed = engine.STATS["tokens_fed"] - before["tokens_fed"]
    assert copied == shared                                              # the whole common prefix, once
    assert fed <= sum(len(tiny_llm.encode(p)) for p in prompts) - shared + 2 * 6
    assert outputs == [reference_greedy(tiny_llm, tiny_llm.encode(p), 6) for p in prompts]


def test_engine_counts_the_steps_in_which_as_many_rows_generate_as_the_bare_loop_has(tiny_llm):
    """STATS' full steps (the benchmark's rate of the engine with enough to do): the steps in which at least
    FULL_FORWARD rows fed the token they had just sampled, with those tokens; one row fewer never counts."""
    prompt = tiny_llm.chat("Tom has 3 apples.")

    def program(n):
        [rows] = yield [Request(tiny_llm, prompt, n=n, max_new_tokens=5)]
        return rows
    for n in (engine.FULL_FORWARD - 1, engine.FULL_FORWARD):
        before = dict(engine.STATS)
        [rows] = run_programs([program(n)])
        # greedy, so every row writes the same tokens; each is fed back but the one that reached max_new_tokens
        fed = {len(r.ids) - (not r.ended) for r in rows}
        assert len(fed) == 1
        steps = engine.STATS["full_steps"] - before["full_steps"]
        tokens = engine.STATS["full_tokens"] - before["full_tokens"]
        expected = len(rows[0].ids) - (not rows[0].ended) if n >= engine.FULL_FORWARD else 0
        assert (steps, tokens) == (expected, n * expected)
        assert engine.STATS["full_seconds"] > before["full_seconds"] or not expected


def test_engine_sampling_is_seeded_whatever_shares_the_batch(tiny_llm):
    prompt = tiny_llm.chat("Tom has 3 apples.")

    def sampler(seed, temperature=1.0):
        [samples] = yield [Request(tiny_llm, prompt, n=3, temperature=temperature, max_new_tokens=8, seed=seed)]
        return [s.ids for s in samples]
    alone = run_programs([sampler(1)])[0]
    assert run_programs([sampler(1)])[0] == alone                                   # repeats exactly
    crowded = run_programs([sampler(2), sampler(1), sampler(3, 0.5)], arenas=[0, 0, 1])
    assert crowded[1] == alone                                                      # its neighbours change nothing
    assert crowded[0] != alone and len({tuple(s) for s in alone}) > 1               # other seeds, other samples
    # a greedy row beside them (a step where only some rows sample): neither side changes the other
    greedy = run_programs([sampler(4, 0.0)])[0]
    assert greedy == [reference_greedy(tiny_llm, tiny_llm.encode(prompt), 8)] * 3
    half = run_programs([sampler(3, 0.5)])[0]                                        # every row samples, at T = 0.5
    mixed = run_programs([sampler(4, 0.0), sampler(3, 0.5)], arenas=[0, 0])
    assert mixed == [greedy, half]


def test_the_sampling_buffers_kept_across_steps_give_the_draws_of_fresh_ones(tiny_llm):
    """The engine keeps its (rows, vocab) scores and noise from step to step, growing them when more rows sample:
    requests of 2, then 20 (more than the first buffer holds), then 3 rows in one run draw what each draws alone."""
    prompt = tiny_llm.chat("Tom has 3 apples.")
    asks = [(2, 1.0, 5), (20, 0.7, 6), (3, 1.0, 7)]

    def one(n, temperature, seed):
        [samples] = yield [Request(tiny_llm, prompt, n=n, temperature=temperature, max_new_tokens=6, seed=seed)]
        return [s.ids for s in samples]

    def in_turn():
        drawn = []
        for n, temperature, seed in asks:
            [samples] = yield [Request(tiny_llm, prompt, n=n, temperature=temperature, max_new_tokens=6, seed=seed)]
            drawn.append([s.ids for s in samples])
        return drawn
    alone = [run_programs([one(*ask)])[0] for ask in asks]
    assert run_programs([in_turn()])[0] == alone
    assert len({tuple(ids) for ids in alone[1]}) > 1                               # they are samples, not one text


def test_engine_rows_end_at_their_own_stop_string_or_eos(tiny_llm, monkeypatch):
    prompts = [tiny_llm.chat("Tom has 3 apples."), tiny_llm.chat("Is this solution correct?")]
    free = [reference_greedy(tiny_llm, tiny_llm.encode(p), 12) for p in prompts]
    stop_token = free[0][3]                         # a token row 0 writes early on
    assert stop_token not in free[1][:12]
    stop = tiny_llm.tokenizer.decode([stop_token])
    assert stop not in tiny_llm.tokenizer.decode(free[1])

    def program(prompt):
        [[generated]] = yield [Request(tiny_llm, prompt, max_new_tokens=12, stop=(stop,))]
        return generated
    cut, full = run_programs([program(p) for p in prompts], arenas=[0, 1])
    assert cut.ids == free[0][:4] and stop not in cut.text                           # ends at its stop string
    assert full.ids == free[1] and len(full.ids) == 12 and not full.ended            # runs to its own end
    monkeypatch.setattr(tiny_llm, "end_ids", tiny_llm.end_ids | {free[1][5]})        # now row 1 meets "EOS"
    cut, ended = run_programs([program(p) for p in prompts], arenas=[0, 1])
    assert ended.ended and ended.ids == free[1][:5] and cut.ids == free[0][:4]


def test_a_program_that_waits_for_any_request_is_woken_as_each_one_ends(tiny_llm):
    """engine.Wait: the program is woken with the request that ended, while the other goes on; a request asked for
    then joins the one in flight. The reference path runs everything in flight at once."""
    prompt = tiny_llm.chat("Tom has 3 apples.")
    wakes = []

    def program():
        long, short = Request(tiny_llm, prompt, max_new_tokens=12), Request(tiny_llm, prompt, max_new_tokens=2)
        finished = yield engine.Wait([long, short])
        wakes.append([(r is long, len(g.ids)) for r, (g,) in finished])
        later = Request(tiny_llm, prompt, max_new_tokens=3)
        while len(wakes) < 3:
            finished = yield engine.Wait([later] if len(wakes) == 1 else [])
            wakes.append([(r is long, len(g.ids)) for r, (g,) in finished])
        return wakes
    assert run_programs([program()]) == [[[(False, 2)], [(False, 3)], [(True, 12)]]]

    def waits_for_nothing():
        yield engine.Wait([])
    with pytest.raises(RuntimeError, match="none in flight"):   # a Wait with nothing in flight would never end
        run_programs([waits_for_nothing()])

    def reference_program():
        finished = yield engine.Wait([Request(tiny_llm, prompt, max_new_tokens=12),
                                      Request(tiny_llm, prompt, max_new_tokens=2)])
        return len(finished)
    assert run_programs([reference_program()], engine=False) == [2]       # both at once


def test_a_prompt_nobody_sees_any_more_gives_its_slots_back(tiny_llm, monkeypatch):
    """A leader's rounds: each asks with a new prompt. Once a prompt's requests have ended and no later prompt shares
    its own slots, those go back to the arena, so the next round reuses them; a prompt that a running one extends
    stays while that one runs; a prompt whose continuations are kept stays for good, and continuing one later gives
    the same text. Greedy text equals the reference path's (LLM.generate)."""
    made = []
    make = engine.Arena.__init__
    monkeypatch.setattr(engine.Arena, "__init__", lambda self, *a, **k: (make(self, *a, **k), made.append(self))[0])
    kept_prompt = tiny_llm.chat("Keep this one.")
    rounds = [tiny_llm.chat(f"Round {k}: the team said {k * 7}, {k * 11} and {k * 13}, then nothing.") for k in range(4)]

    def program(rounds):
        [[kept]] = yield [Request(tiny_llm, kept_prompt, max_new_tokens=3, keep=True)]
        texts = []
        for prompt in rounds:                 # a short request, and a longer one whose prompt extends its prompt
            [[short], [extended]] = yield [Request(tiny_llm, prompt, max_new_tokens=2),
                                           Request(tiny_llm, prompt + " Again.", max_new_tokens=6)]
            texts += [short.text, extended.text]
        [[more]] = yield [Request(tiny_llm, kept_prompt, suffix=kept.text, state=kept.state, max_new_tokens=4)]
        return texts, more.ids
    [(texts, continued)] = run_programs([program(rounds)])
    assert texts == run_programs([program(rounds)], engine=False)[0][0]
    assert continued == run_programs([program([])])[0][1]      # the kept state, continued with no rounds between
    [arena] = made[:1]
    longest = max(len(tiny_llm.encode(prompt + " Again.")) for prompt in rounds)
    # the kept prompt and its kept continuation, then one round at a time (both of its requests), then 4 more tokens
    assert arena.length <= len(tiny_llm.encode(kept_prompt)) + 3 + longest + 2 + 6 + 4
    assert [p.ids for p in arena.prompts] == [tiny_llm.encode(kept_prompt)]      # only the kept prompt is left


def test_a_prompt_that_is_a_prefix_of_a_longer_one_in_its_arena_is_answered(tiny_llm, monkeypatch):
    """A prompt whose tokens are all the start of a longer prompt already in the arena (queued in the same step, or
    kept from before) still feeds its last token, for its own next-token logits: greedy text equals the reference
    path's. (It once took no slot, queued nothing and waited for ever: a bounded number of steps catches that.)"""
    long = "Tom has 3 apples and buys 5 more apples at the shop"
    short = "Tom has 3 apples and buys 5 more"
    assert tiny_llm.encode(long)[:len(tiny_llm.encode(short))] == tiny_llm.encode(short)     # a strict token prefix
    steps = []
    step = engine.Engine.step

    def bounded(self):
        steps.append(1)
        assert len(steps) < 500, "the engine is still stepping: a request never started"
        step(self)
    monkeypatch.setattr(engine.Engine, "step", bounded)

    def program():
        [[a], [b]] = yield [Request(tiny_llm, long, max_new_tokens=5), Request(tiny_llm, short, max_new_tokens=5)]
        [[kept]] = yield [Request(tiny_llm, long, max_new_tokens=3, keep=True)]
        [[c]] = yield [Request(tiny_llm, short, max_new_tokens=4)]
        return [a.text, b.text, kept.text, c.text]
    assert run_programs([program()]) == run_programs([program()], engine=False)


def test_a_kept_state_continued_by_another_problem_is_a_clear_error(tiny_llm):
    """A kept state's slots belong to its problem's arena: another problem that tries to continue it gets a one-line
    error rather than reading whatever its own arena holds in those slots."""
    handed = []

    def maker():
        [[kept]] = yield [Request(tiny_llm, tiny_llm.chat("Tom has 3 apples."), max_new_tokens=3, keep=True)]
        handed.append(kept)

    def taker():
        for _ in range(50):                           # one token at a time, until the other problem has its state
            if handed:
                yield [Request(tiny_llm, "", state=handed[0].state, max_new_tokens=2)]
            yield [Request(tiny_llm, tiny_llm.chat("Ava has 5 pens."), max_new_tokens=1)]
    with pytest.raises(ValueError, match="kept state can only be continued by the problem that made it"):
        run_programs([maker(), taker()], arenas=["problem 0", "problem 1"])
    with pytest.raises(ValueError, match="kept state can only be continued by the problem that made it"):
        run_programs([taker()], arenas=["problem 0"])           # nor in a later call, whose arenas are new


def test_a_rolling_window_runs_at_most_that_many_problems_at_once_with_the_same_results(tiny_llm, monkeypatch):
    """run_programs(window=2) over four problems, the first with two programs: a problem starts only when fewer
    than two run, at most two problems' arenas are ever alive (a finished problem's is freed), and every program
    returns what it returns with all of them in flight at once."""
    prompts = [tiny_llm.chat(q) for q in ("Tom has 3 apples.", "Ava has 5 pens.", "Is this correct?", "Step 1")]
    events, alive, made = [], [], []
    submit, make = engine.Engine.submit, engine.Arena.__init__

    def watched(self, request, index, arena_key, account, done):
        submit(self, request, index, arena_key, account, done)
        alive.append(sum(arena() is not None for arena in made))       # arenas anything still holds
    monkeypatch.setattr(engine.Engine, "submit", watched)
    monkeypatch.setattr(engine.Arena, "__init__", lambda self, *a, **k: (make(self, *a, **k),
                                                                          made.append(weakref.ref(self)))[0])

    def program(name, problem, tokens):
        events.append(("start", name, problem))
        [[first]] = yield [Request(tiny_llm, prompts[problem], max_new_tokens=tokens, keep=True)]
        [[second]] = yield [Request(tiny_llm, prompts[problem], suffix=first.text, state=first.state,
                                    max_new_tokens=3)]
        events.append(("end", name, problem))
        return first.ids + second.ids
    plan = [("a1", 0, 4), ("a2", 0, 9), ("b", 1, 2), ("c", 2, 5), ("d", 3, 3)]

    def run(window):
        events.clear(), alive.clear(), made.clear()
        return run_programs([program(*p) for p in plan], arenas=[f"problem {p}" for _, p, _ in plan], window=window)
    everything = run(None)
    assert max(alive) == 4
    windowed = run(2)
    assert windowed == everything
    assert max(alive) == 2 and len(made) == 4   # never more than two problems' keys and values held at once
    running, most = {}, 0                                  # problem -> its programs started and not ended
    for kind, name, problem in events:
        running[problem] = running.get(problem, 0) + (1 if kind == "start" else -1)
        running = {p: k for p, k in running.items() if k}
        most = max(most, len(running))
    assert most == 2 and not running
    order = [(kind, name) for kind, name, _ in events]
    assert order.index(("start", "c")) > order.index(("end", "b"))      # b (5 tokens) made room for c
    assert order.index(("start", "d")) > min(max(order.index(("end", "a1")), order.index(("end", "a2"))),
                                             order.index(("end", "c")))


def test_mcts_rollouts_are_asynchronous_and_share_a_nodes_expansion():
    """mcts.search_program driven by hand: two rollouts wait on one expansion of the root; when one simulation
    ends, its value is backed up and the next rollout is selected while the other simulation is still running."""
    config = SearchConfig(rollouts=3, parallel=2, root_children=2, children=2)
    program = mcts.search_program(Agent("fake", FakeLLM(), 0.7), "q", config=config, seed=0)
    wait = next(program)
    (expand,) = wait.requests                                  # both rollouts start at the root: asked for once
    assert expand.n == 2 and expand.stop == ("\n",)
    wait = program.send([(expand, [Generated("Step A."), Generated("Step B.")])])
    sim_a, sim_b = wait.requests                               # each rollout completes one child
    assert (sim_a.suffix, sim_b.suffix) == ("Step A.\n", "Step B.\n") and not sim_a.stop
    wait = program.send([(sim_b, [Generated("The answer is 2.")])])   # A's completion is still running
    (third,) = wait.requests                                   # the third rollout started at once
    assert third.suffix == "Step B.\n" and third.stop == ("\n",)    # it expands B, the only visited child
    with pytest.raises(StopIteration) as end:
        program.send([(sim_a, [Generated("The answer is 1.")]), (third, [Generated("The answer is 2.")])])
    result = end.value.value
    root = result.root
    a, b = root.children
    assert (root.visits, a.visits, b.visits, root.virtual_loss, a.virtual_loss, b.virtual_loss) == (3, 1, 2, 0, 0, 0)
    assert [s.answer for s in result.samples] == ["2", "1", "2"]
    assert b.children[0].answer == "2" and b.children[0].visits == 1


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
    with pytest.raises(llm.ModelLoadError, match="model folder '.*no-such-model' does not exist"):
        llm.load_llm(str(tmp_path / "no-such-model"))
    with pytest.raises(llm.ModelLoadError, match="does not exist"):
        llm.load_llm(str(tmp_path / "missing.gguf"))
    with pytest.raises(llm.ModelLoadError, match="holds no config.json"):
        llm.load_llm(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(llm.ModelLoadError, match="could not load model"):
        llm.load_llm(str(tmp_path))


# ---------------------------------------------------------------- evaluate.py: runs in subprocesses

def _comparable(records):
    """Records without their timings, keyed by (problem, method)."""
    return {(r["problem_id"], r["method"]): {k: v for k, v in r.items() if k != "seconds"} for r in records}


def test_evaluate_resume_after_a_kill_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    # 5 batches x 2 methods, each ~0.3 s (most sequences run to 160 tokens): the kill lands seconds before the end
    args = ["evaluate.py", "--dataset", "arith", "--methods", "cot,sc", "--limit", "10", "--model",
            tiny_model_dir, "--sc-samples", "3", "--max-new-tokens", "160", "--no-progress", "--batch-size", "2"]
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
    assert len(resumed) == 20 and len(_comparable(resumed)) == 20         # nothing counted twice
    assert _comparable(resumed) == _comparable(read_records(str(whole)))
    assert 4 <= killed_at < 20 and process.returncode != 0                # it was killed part-way
    assert out.count("\ncot ") == 1


def test_ctrl_c_stops_with_one_line_and_resume_completes_to_the_uninterrupted_records(tiny_model_dir, tmp_path):
    # 20 records of ~0.15 s each (the random model rarely ends a sequence early, so most run to 160 tokens): the
    # run is still going seconds after its second record, when the signal comes
    args = ["evaluate.py", "--dataset", "arith", "--methods", "cot,sc", "--limit", "10", "--model", tiny_model_dir,
            "--sc-samples", "3", "--max-new-tokens", "160", "--no-progress", "--batch-size", "1"]
    whole = tmp_path / "whole.jsonl"
    run_cli(*args, "--output", str(whole))
    part = tmp_path / "part.jsonl"
    # A shell without job control starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    # across exec (CI started that way ran the child to the end, exit 0): give the child Ctrl-C's default back.
    process = subprocess.Popen([sys.executable, *args, "--output", str(part)], cwd=HERE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and len(read_records(str(part))) < 2 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)                                    # what Ctrl-C sends
    _, err = process.communicate(timeout=120)
    safe = len(read_records(str(part)))
    assert process.returncode != 0 and 2 <= safe < 20                   # it stopped part-way, saying so in one
    last = err.strip().splitlines()[-1]                                   # line (above it: transformers' load bars)
    assert "Traceback" not in err and last.startswith(f"interrupted: {safe} records are safe"), err
    assert last.endswith("--resume") and "--output" in last
    run_cli(*args, "--output", str(part), "--resume")
    assert _comparable(read_records(str(part))) == _comparable(read_records(str(whole)))
    assert len(read_records(str(part))) == 20


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


# ---------------------------------------------------------------- the shape of the code (issue: ALIGN in align.py)

# evaluate -> align, mlpo -> mcts, principal, hedge -> engine, data -> llm, utility (theory.py is a script, like
# evaluate.py; engine.py is the generation machinery under the searches; data.py reads MATH's gold with the grader)
LAYERS = [{"evaluate", "theory"}, {"align", "mlpo"}, {"mcts", "principal", "hedge"}, {"engine", "data"},
          {"llm", "utility"}]


def test_imports_flow_one_way_and_none_inside_functions():
    """evaluate, theory -> align, mlpo -> mcts, principal, hedge -> llm, utility, data; nothing imports evaluate."""
    import ast
    layer_of = {module: depth for depth, modules in enumerate(LAYERS) for module in modules}
    for module in layer_of:
        tree = ast.parse(open(os.path.join(HERE, f"{module}.py")).read())
        top_level = set(tree.body)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for imported in [n.split(".")[0] for n in names if n and n.split(".")[0] in layer_of]:
                assert node in top_level, f"{module}.py imports {imported} inside a function"
                assert imported != "evaluate", f"{module}.py imports evaluate"
                assert layer_of[imported] > layer_of[module], f"{module}.py imports {imported}: not downwards"


def test_align_cli_runs_without_evaluate(tiny_model_dir):
    script = ("import runpy, sys\n"
              f"sys.argv = ['align.py', '--question', 'Tom has 3 apples and buys 5 more. How many?', '--model', "
              f"{tiny_model_dir!r}, '--rollouts', '3', '--step-tokens', '4', '--completion-tokens', '6', "
              "'--device', 'cpu']\n"
              "runpy.run_path('align.py', run_name='__main__')\n"
              "print('evaluate imported' if 'evaluate' in sys.modules else 'evaluate never imported')\n")
    out = run_cli("-c", script)
    assert "principal's order" in out or "no agent reached an answer" in out
    assert out.strip().endswith("evaluate never imported")


def test_methods_list_is_parsed_once_and_checked():

    assert parse_methods(" cot, align ,") == ["cot", "align"]
    with pytest.raises(DataError, match=r"listed twice"):
        parse_methods("cot,cot")
    with pytest.raises(DataError, match=r"unknown method\(s\) \['nope'\]; known: cot, sc"):
        parse_methods("cot, nope")


def test_a_new_method_is_one_function_and_is_charged_like_vote(tiny_model_dir, monkeypatch):
    """A forker's copy of `vote`, registered with one METHODS entry, costs what vote costs, in either order."""


    def method_myvote(problems, ctx):
        return [{"prediction": majority_answer([s for r in searches for s in r.samples])}
                for searches in ctx.searches(problems)]
    monkeypatch.setitem(METHODS, "myvote", method_myvote)
    problems = [{**p, "dataset": "arith"} for p in load_problems("arith", limit=1)]
    charges = {}
    for order in (["myvote", "vote"], ["vote", "myvote"]):
        ctx = Context(EvalConfig(model=tiny_model_dir, device="cpu"),
                      SearchConfig(rollouts=3, step_tokens=4, completion_tokens=6))
        records = {}
        run_methods(problems, order, ctx, lambda problem, method, record: records.__setitem__(method, record))
        for method, record in records.items():
            charges[(tuple(order), method)] = (record["calls"], record["prompt_tokens"], record["generated_tokens"])
    assert len(set(charges.values())) == 1, charges          # the same charge, whoever ran first
    assert next(iter(charges.values()))[0] > 0


def test_the_default_window_follows_the_dataset_on_a_cpu():
    """On a CPU arith's small problems run more at once than the others' (engine.IN_FLIGHT_CPU); a window as wide
    as the batch runs it all at once (None); --in-flight and --batch-size given win; a GPU runs the whole batch."""
    batch, wide, narrow = engine.BATCH_SIZE["cpu"], engine.IN_FLIGHT_CPU["arith"], engine.IN_FLIGHT["cpu"]
    assert narrow < wide < batch
    assert batch_and_window(EvalConfig(dataset="arith"), "cpu") == (batch, wide)
    for dataset in ("gsm8k", "math500", "bbh:navigate", "mmlu"):
        assert batch_and_window(EvalConfig(dataset=dataset), "cpu") == (batch, narrow)
    assert batch_and_window(EvalConfig(dataset="arith", in_flight=3), "cpu") == (batch, 3)
    assert batch_and_window(EvalConfig(dataset="gsm8k", in_flight=12), "cpu") == (batch, 12)
    assert batch_and_window(EvalConfig(dataset="arith", batch_size=wide), "cpu") == (wide, None)
    assert batch_and_window(EvalConfig(dataset="gsm8k", in_flight=batch), "cpu") == (batch, None)
    for dataset in ("arith", "gsm8k"):
        assert batch_and_window(EvalConfig(dataset=dataset), "cuda") == (engine.BATCH_SIZE["cuda"],
                                                                         engine.IN_FLIGHT["cuda"])


def test_a_batch_run_through_a_window_of_one_problem_gives_the_same_records(tiny_model_dir):
    """--in-flight 1: the batch's problems go through one at a time (the rolling window), and every method's
    record is what the whole batch at once gives, timing aside."""
    problems = [{**p, "dataset": "arith"} for p in load_problems("arith", limit=3)]
    runs = []
    for in_flight in (None, 1):
        ctx = Context(EvalConfig(model=tiny_model_dir, device="cpu", in_flight=in_flight, sc_samples=2,
                                 max_new_tokens=8),
                      SearchConfig(rollouts=3, step_tokens=4, completion_tokens=6))
        records = []
        run_methods(problems, ["cot", "sc", "vote", "principal", "align"], ctx,
                    lambda problem, method, record: records.append(record))
        runs.append(_comparable(records))

    def timeless(value):                                   # the agents' costs carry their own seconds too
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items() if k != "seconds"}
        return [timeless(v) for v in value] if isinstance(value, list) else value
    assert len(runs[0]) == 15 and timeless(runs[0]) == timeless(runs[1])


def test_methods_with_spaces_run_and_print_both_rows(tiny_model_dir, tmp_path):
    out = run_cli("evaluate.py", "--dataset", "arith", "--methods", "cot, align", "--limit", "1", "--model",
                  tiny_model_dir, "--rollouts", "3", "--step-tokens", "4", "--completion-tokens", "6",
                  "--max-new-tokens", "6", "--output", str(tmp_path / "r.jsonl"), "--no-progress")
    table = out.split("accuracy")[1]
    assert "\ncot " in table and "\nalign " in table


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


def test_a_data_parallel_run_resumed_in_one_process_keeps_its_ranks_records(tiny_model_dir, tmp_path):
    """A torchrun run stopped part-way leaves its records in output.rankN files; resumed with any number of
    processes (the printed command keeps torchrun), they count as done and are merged, and the rank files go. A
    last record that lacks its newline (a write cut short) is not counted as done, so it is run again, not lost."""
    args = ["evaluate.py", "--dataset", "arith", "--methods", "cot", "--limit", "4", "--model", tiny_model_dir,
            "--max-new-tokens", "8", "--no-progress", "--device", "cpu"]
    whole = tmp_path / "whole.jsonl"
    run_cli(*args, "--output", str(whole))
    settings, *lines = whole.read_text().splitlines(keepends=True)
    by_problem = {json.loads(line)["problem_id"]: line for line in lines}
    part = tmp_path / "part.jsonl"
    part.write_text(settings + by_problem["arith-test-0-1"].rstrip("\n"))     # complete, but its newline never came
    (tmp_path / "part.jsonl.rank0").write_text(by_problem["arith-test-0-0"] + by_problem["arith-test-0-2"])
    (tmp_path / "part.jsonl.rank1").write_text(by_problem["arith-test-0-3"][:25])   # cut short
    out = run_cli(*args, "--output", str(part), "--resume")
    assert "2 problems already done" in out
    assert _comparable(read_records(str(part))) == _comparable(read_records(str(whole)))
    assert len(read_records(str(part))) == 4 and not [p for p in os.listdir(tmp_path) if ".rank" in p]
    old, sys.argv = sys.argv, ["evaluate.py", "--dataset", "arith", "--output", "r.jsonl"]
    try:
        assert evaluate.resume_command(2).startswith("torchrun --nproc-per-node=2 evaluate.py --dataset arith")
        assert evaluate.resume_command().startswith("python evaluate.py") and evaluate.resume_command().endswith(
            "--resume")
    finally:
        sys.argv = old


def test_a_bad_output_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "Context", lambda *args, **kwargs: pytest.fail("it went on to load models"))
    listed = tmp_path / "list.jsonl"                            # JSON, but not the settings object
    listed.write_text("[1, 2]\n")
    assert "no settings line" in one_line_error(evaluate.main, ["--dataset", "arith", "--output", str(listed),
                                                                "--resume"])
    settings = json.dumps({"settings": evaluate.record_settings(EvalConfig(dataset="arith", dtype="float32"),
                                                                SearchConfig(), GameConfig(principal_mode="likelihood"),
                                                                mlpo.LeaderConfig())})
    latin = tmp_path / "latin1.jsonl"                           # the settings line, then bytes that are not UTF-8
    latin.write_bytes(settings.encode() + b"\n\xe9t\xe9\n")
    assert "not UTF-8" in one_line_error(evaluate.main, ["--dataset", "arith", "--output", str(latin), "--resume",
                                                         "--device", "cpu"])          # float32, as the settings say
    assert "is a folder" in one_line_error(evaluate.main, ["--dataset", "arith", "--output", str(tmp_path)])
    records = tmp_path / "no-method.jsonl"                      # a line with a problem id but no method is no record
    records.write_text(settings + "\n" + json.dumps({"problem_id": "arith-test-0-0"}) + "\n")
    assert read_records(str(records)) == []
    stale = tmp_path / "stale.jsonl.rank0"                      # an earlier run's rank file alone: it is not clobbered
    stale.write_text("")
    assert "(or its .rankN files) exists: pass --resume" in one_line_error(evaluate.main, [
        "--dataset", "arith", "--output", str(tmp_path / "stale.jsonl")])
    assert "is missing but its .rankN files are there" in one_line_error(evaluate.main, [   # nothing to check them by
        "--dataset", "arith", "--output", str(tmp_path / "stale.jsonl"), "--resume"])


def test_a_data_error_leaves_no_output_file(tmp_path):
    output = tmp_path / "r.jsonl"
    bad = subprocess.run([sys.executable, "evaluate.py", "--dataset", "bbh:nonsense", "--limit", "1", "--output",
                          str(output)], cwd=HERE, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "unknown bbh task(s) ['nonsense']" in bad.stderr.strip().splitlines()[-1]
    assert not output.exists()                  # so the corrected command runs without --resume or --overwrite


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


# ---------------------------------------------------------------- a scripted fake model (search, game)

class FakeLLM:
    """Scripted steps and completions keyed by the partial solution; records every prompt it is shown."""

    def __init__(self, steps=None, completions=None, default_step="", default_completion="The answer is 0.",
                 yes_logprob=None, reply="B > A"):
        self.steps, self.completions = steps or {}, completions or {}
        self.default_step, self.default_completion = default_step, default_completion
        self.yes_logprob = yes_logprob or (lambda prompt: -1.0)
        self.reply, self.prompts, self.counters, self.name = reply, [], llm.Counters(), "fake"

    def chat(self, user, system=None, assistant_prefix="", examples=()):
        return "".join(f"Q:{q}\nA:{a}\n" for q, a in examples) + f"Q:{user}\nA:" + assistant_prefix

    def generate(self, prefix, suffixes=("",), num_samples=1, stop=None, seed=0, **kwargs):
        self.prompts += [prefix + s for s in suffixes]
        self.counters.calls += len(suffixes) * num_samples
        self.counters.generated_tokens += len(suffixes) * num_samples
        if stop and "\n" in stop:  # an MCTS step: the script's list of next steps for this partial solution
            return [list(self.steps.get(s, [self.default_step] * num_samples))[:num_samples] for s in suffixes]
        if "Rank" in prefix:       # the principal's listwise ranking
            return [[self.reply] * num_samples for _ in suffixes]
        return [[self.completions.get(s, self.default_completion)] * num_samples for s in suffixes]

    def sample(self, prompt, num_samples=1, **kwargs):
        return self.generate(prompt, [""], num_samples, **kwargs)[0] if "Rank" not in prompt else [self.reply]

    def score(self, prompt, continuations):
        self.prompts += [prompt, *continuations]          # what is scored is seen too
        self.counters.calls += len(continuations)
        if tuple(continuations) == ("Yes", "No"):
            return [self.yes_logprob(prompt), -1.0]
        return [-float(len(c)) for c in continuations]    # likelihood mode: shorter solutions likelier

    def encode(self, text):
        return text.split()


def test_uct_on_a_hand_built_tree():
    root = Node(steps=[], visits=10, expanded=True)
    a = Node(steps=["a"], parent=root, visits=6, value_sum=4.2)   # Q = 0.7
    b = Node(steps=["b"], parent=root, visits=3, value_sum=1.5)   # Q = 0.5
    root.children = [a, b]
    # by hand: 0.7 + sqrt(ln 10 / 6) = 1.31948;  0.5 + sqrt(ln 10 / 3) = 1.37608
    assert uct_score(a, root, 1.0) == pytest.approx(0.7 + math.sqrt(math.log(10) / 6))
    assert uct_score(b, root, 1.0) == pytest.approx(0.5 + math.sqrt(math.log(10) / 3))
    assert select(root, 1.0) is b
    assert select(root, 0.1) is a                                  # less exploration: exploit a
    b.virtual_loss = 3                                             # b is busy: in-flight rollouts count
    assert select(root, 1.0) is a
    c = Node(steps=["c"], parent=root)
    root.children.append(c)
    assert select(root, 1.0) is c                                  # an unvisited child comes first


def test_mcts_visits_and_rewards_equal_a_hand_computation():
    fake = FakeLLM(steps={"": ["A", "B"], "A\n": ["A1 The answer is 1.", "A2"]},
                   completions={"A\n": "The answer is 1.", "B\n": "The answer is 2.", "A\nA2\n": "The answer is 2."})
    config = SearchConfig(rollouts=4, children=2, root_children=2, parallel=1, exploration=1.0)
    result = search(Agent("fake", fake, 0.7), "What is it?", config=config, seed=0)
    root = result.root
    a, b = root.children
    a1, a2 = a.children
    # Worked by hand in the comments of the test: rollouts go A, B, A->A1, A->A2.
    assert [s.answer for s in result.samples] == ["1", "2", "1", "2"]
    assert (root.visits, a.visits, b.visits, a1.visits, a2.visits) == (4, 3, 1, 1, 1)
    assert a.value_sum == pytest.approx(1 + 2 / 3 + 1 / 2)         # rewards 1, 2/3, 1/2 (self-consistency)
    assert b.value_sum == pytest.approx(1 / 2)
    assert a1.value_sum == pytest.approx(2 / 3) and a2.value_sum == pytest.approx(1 / 2)
    assert root.value_sum == pytest.approx(1 + 1 / 2 + 2 / 3 + 1 / 2)
    assert [(c.answer, c.utility) for c in result.classes] == [("1", 0.5), ("2", 0.5)]
    assert b.expanded is False and a1.terminal and a1.solution.trace == "A\nA1 The answer is 1."


def test_a_step_that_completes_a_solution_again_is_a_sample_again():
    """Three first steps, two of them the same answer: U follows the agent's samples, 2/3 and 1/3 (it was 1/2 and
    1/2 when repeats were dropped). A repeated partial step is still one node."""
    fake = FakeLLM(steps={"": ["The answer is 5.", "The answer is 5.", "The answer is 7."]})
    config = SearchConfig(rollouts=6, root_children=3, parallel=2)
    result = search(Agent("fake", fake, 0.7), "What is it?", config=config, seed=0)
    assert len(result.root.children) == 3 and all(c.terminal for c in result.root.children)
    assert sorted(s.answer for s in result.samples) == ["5", "5", "7"]
    assert [(c.answer, c.utility) for c in result.classes] == [("5", pytest.approx(2 / 3)), ("7", pytest.approx(1 / 3))]
    fake = FakeLLM(steps={"": ["Add them.", "Add them.", "The answer is 7."]},
                   completions={"Add them.\n": "The answer is 5."})
    result = search(Agent("fake", fake, 0.7), "What is it?", config=config, seed=0)
    assert [c.steps[-1] for c in result.root.children] == ["Add them.", "The answer is 7."]


def test_mcts_depth_limit_holds():

    class Steps(FakeLLM):
        def generate(self, prefix, suffixes=("",), num_samples=1, stop=None, **kw):
            if stop:
                return [[f"step {s.count(chr(10)) + 1}.{k}" for k in range(num_samples)] for s in suffixes]
            return [["no answer here"] * num_samples for _ in suffixes]

    config = SearchConfig(rollouts=40, max_depth=2, children=2, root_children=2)
    result = search(Agent("fake", Steps(), 0.7), "q", config=config)

    def depths(node):
        return [node.depth] + [d for c in node.children for d in depths(c)]
    assert max(depths(result.root)) == 2
    assert all(not c.expanded for a in result.root.children for c in a.children)


class FirstStepFixesTheAnswer(FakeLLM):
    """A seeded toy model: a first step draws the answer from `shares`; later steps and completions restate it."""

    def __init__(self, shares):
        super().__init__()
        self.shares = shares

    def generate(self, prefix, suffixes=("",), num_samples=1, stop=None, seed=0, **kwargs):
        rows = []
        for suffix in suffixes:
            rng = random.Random(f"{seed}|{suffix}")
            if not suffix:
                rows.append([f"Idea {rng.randrange(10 ** 9)} leads to "
                             f"{rng.choices(list(self.shares), list(self.shares.values()))[0]}."
                             for _ in range(num_samples)])
                continue
            answer = re.match(r"Idea \d+ leads to (\w+)\.", suffix).group(1)
            rows.append([f"Still {answer}, check {rng.randrange(10 ** 9)}." for _ in range(num_samples)] if stop
                        else [f"The answer is {answer}."] * num_samples)
        return rows


def test_a_root_as_wide_as_the_rollouts_values_answers_as_independent_chains_do():
    """Issue 10: every rollout descends from one of the root's first steps. When the first step fixes the answer, a
    root of 3 (the default, the paper's deeper tree) lets UCT re-sample the leading first step, so U^i of the
    leading class exceeds what self-consistency over 16 independent chains gives; --root-children 16 removes the
    skew. mcts.py's comment on root_children has the full measurement and why the default stays 3."""
    shares, searches = {"1": 0.5, "2": 0.3, "3": 0.2}, 100
    counts = np.stack([(np.random.default_rng(0).choice(3, size=(100_000, 16), p=list(shares.values())) == k).sum(1)
                       for k in range(3)], 1)
    chains = counts[:, 0].mean() / 16, counts.max(1).mean() / 16       # 16 independent chains: 0.50, 0.525

    def tree(config):   # mean U of the modal class "1" and of the top class, over seeded searches
        agent, modal, top = Agent("toy", FirstStepFixesTheAnswer(shares), 0.7), [], []
        for seed in range(searches):
            utility = {c.answer: c.utility for c in search(agent, "q", config=config, seed=seed).classes}
            modal.append(utility.get("1", 0.0))
            top.append(max(utility.values()))
        return np.mean(modal), np.mean(top)

    narrow = tree(SearchConfig())
    assert SearchConfig().root_children == 3
    # the skew of the top class: 0.73 against 0.525 over 400 searches (the modal class's, 0.54 against 0.50, is
    # under what 100 searches resolve: its standard error there is ~0.03)
    assert narrow[1] > chains[1] + 0.15
    wide = tree(SearchConfig(root_children=16))
    # tolerance 0.03: about 2.5 standard errors of a mean over 100 searches of independent chains
    assert abs(wide[0] - chains[0]) < 0.03 and abs(wide[1] - chains[1]) < 0.03, (wide, chains)


@pytest.mark.parametrize("mode", PRINCIPAL_MODES)
def test_the_gold_answer_never_reaches_a_model(mode):
    agents_llm = FakeLLM(default_step="Add them.", default_completion="So the total is 12. The answer is 12.")
    principal = FakeLLM()
    leader = FakeLLM(default_completion="The team agrees.</think><answer>12")
    ctx = Context(EvalConfig(sc_samples=2, engine=False), SearchConfig(rollouts=4, children=2),
                  GameConfig(principal_mode=mode), agents=[Agent(f"a{i}", agents_llm, 0.7) for i in range(3)],
                  principal=principal, leader=leader)
    problem = {"id": "p", "question": "Ava has 5 apples and buys 7 more. How many?", "answer": "31337",
               "kind": "number"}
    for method in ["cot", "sc", "mcts", "vote", "principal", "align", "leader", "leader-solo"]:
        assert METHODS[method]([problem], ctx)[0]["prediction"] == "12"
    prompts = agents_llm.prompts + principal.prompts + leader.prompts
    assert prompts and not any("31337" in p for p in prompts)


def test_a_problems_exemplars_reach_every_agent_prompt_but_not_the_gold():
    """Every method passes `examples` from run_methods to every agent prompt (cot, sc, MCTS, the leader's team)."""
    agents_llm = FakeLLM(default_step="Check each option.", default_completion="So the answer is (B).")
    ctx = Context(EvalConfig(sc_samples=2, engine=False), SearchConfig(rollouts=4, children=2),
                  agents=[Agent(f"a{i}", agents_llm, 0.7) for i in range(3)], principal=FakeLLM(),
                  leader=FakeLLM(default_completion="Agreed.</think><answer>(B)"))
    problem = {"id": "p", "question": "Which is even?\nOptions:\n(A) 3\n(B) 4", "answer": "B", "kind": "choice",
               "examples": [("EXEMPLAR: which is odd?\nOptions:\n(A) 2\n(B) 5", "So the answer is (B).")]}
    records = {}
    run_methods([problem], list(METHODS), ctx, lambda p, method, record: records.__setitem__(method, record))
    assert set(records) == set(METHODS) and all(r["correct"] for r in records.values())
    agent_prompts = [p for p in agents_llm.prompts]
    assert agent_prompts and all("EXEMPLAR: which is odd?" in p for p in agent_prompts)
    assert not any("prime" in p for p in agent_prompts)                 # not the built-in choice exemplar
    built_in = Agent("a", FakeLLM()).prompt("Which is even?", "choice")
    assert "Which number is a prime?" in built_in and "So the answer is (X)." in built_in
    assert "Yes." in Agent("a", FakeLLM()).prompt("Is it?", "text", examples=[("Q?", "So the answer is Yes.")])


def test_a_finished_search_gives_its_nodes_slots_back_to_the_arena(tiny_llm, monkeypatch):
    """When a search ends, every slot it took but its prompt's goes back to the problem's arena (the other agents'
    searches on the problem reuse them); only `node.state = None` left them taken until the arena went."""
    taken, released = [0], [0]
    take, release = engine.Arena.take, engine.Arena.release
    monkeypatch.setattr(engine.Arena, "take", lambda self, positions: (
        taken.__setitem__(0, taken[0] + len(positions)), take(self, positions))[1])
    monkeypatch.setattr(engine.Arena, "release", lambda self, slots: (
        released.__setitem__(0, released[0] + len(slots)), release(self, slots))[1])
    agent = Agent("tiny", tiny_llm, 1.0)
    config = SearchConfig(rollouts=5, step_tokens=6, completion_tokens=10)
    (result,) = run_programs([mcts.search_program(agent, "Tom has 3 apples.", config=config, seed=2)])
    prompt = len(tiny_llm.encode(agent.prompt("Tom has 3 apples.")))
    assert result.samples and taken[0] > prompt
    assert taken[0] - released[0] == prompt


def test_the_reference_path_gives_each_generate_call_its_own_draws(tiny_llm):
    """Two requests of one wake that go to separate generate calls (other settings) do not share a random stream
    (they did: each call was seeded with the first request's seed, so the longer text began with the shorter)."""
    def program():
        a, b = yield [Request(tiny_llm, "Tom has", n=1, temperature=1.0, max_new_tokens=12, seed=7),
                      Request(tiny_llm, "Tom has", n=1, temperature=1.0, max_new_tokens=13, seed=7)]
        return a[0].text, b[0].text
    (short, long), = run_programs([program()], engine=False)
    assert short and not long.startswith(short)


def test_search_on_the_tiny_model_is_seeded(tiny_llm):
    agent, config = Agent("tiny", tiny_llm, 1.0), SearchConfig(rollouts=6, step_tokens=8, completion_tokens=16)
    first, again = search(agent, "Tom has 3 apples.", config=config, seed=1), \
        search(agent, "Tom has 3 apples.", config=config, seed=1)
    assert render_tree(first.root) == render_tree(again.root)
    assert first.root.visits == 6 and len(first.samples) <= 6
    assert first.cost["calls"] > 0 and first.model_calls < first.cost["calls"]   # batching: calls share invocations


# ---------------------------------------------------------------- hedge.py, principal.py, align.py

def test_hedge_policy_equals_the_closed_form():
    rng = np.random.default_rng(0)
    learner, cumulative = Hedge(5, eta=0.1, seed=0), np.zeros(5)
    for _ in range(30):
        u = rng.uniform(-1, 1, 5)
        learner.update(u)
        cumulative += u
        weights = np.exp(0.1 * cumulative)
        assert np.max(np.abs(learner.policy() - weights / weights.sum())) < 1e-9
    assert np.allclose(Hedge(4).policy(), 0.25)                    # uniform at the start


def test_hedge_regret_against_a_hand_computation_and_the_bound():
    learner = Hedge(2, eta=math.log(3))
    learner.update([1.0, 0.0])                                    # pi_1 = (1/2, 1/2): gains 1/2
    learner.update([0.0, 1.0])                                    # pi_2 = (3/4, 1/4): gains 1/4
    assert learner.regret() == pytest.approx(1 - 0.75)
    rng = np.random.default_rng(1)
    for trial in range(20):                                       # adversarial-ish sequences: still under
        learner, T = Hedge(4, eta=0.1, seed=trial), 200
        for t in range(T):
            learner.update(np.sign(np.sin(t * (trial + 1))) * rng.uniform(0, 1, 4) * (rng.uniform() < 0.5))
        assert learner.regret() <= hedge_regret_bound(T, 4, 0.1)


def test_hedge_sampling_is_seeded():
    a, b = Hedge(3, seed=5), Hedge(3, seed=5)
    assert [a.sample() for _ in range(20)] == [b.sample() for _ in range(20)]


def test_rank_feedback_and_final_selection():
    ranking = [2, 0, 1, 3]
    assert rank_feedback([0, 1, 2], ranking) == {2: 1.0, 0: 0.0, 1: -1.0}
    assert rank_feedback([1, 1, 3], ranking) == {1: 1.0, 3: -1.0}   # agents that agree share a rank
    assert rank_feedback([3, 3], ranking) == {3: 1.0}               # m = 1: +1
    assert select_final([1, 3, 0], ranking) == 0


def test_plackett_luce_frequencies_and_zero_temperature():
    order = PrincipalOrder(["a", "b"], [1.0, 0.0], [0, 1])
    rng = np.random.default_rng(0)
    assert plackett_luce_order(order, 0.0, rng) == [0, 1]
    first = np.mean([plackett_luce_order(order, 1.0, rng)[0] == 0 for _ in range(20000)])
    assert first == pytest.approx(math.e / (math.e + 1), abs=0.01)  # P(a first) = e^1 / (e^1 + e^0)


def test_principal_orders_by_score_and_survives_an_unparseable_reply():
    assert parse_listwise("B > A > C", 3) == [1, 0, 2]
    assert parse_listwise("B > A", 3) is None and parse_listwise("I think the second.", 2) is None
    scores = {"sol-x": -0.1, "sol-y": -3.0, "sol-z": 0.5}           # log P(Yes); log P(No) = -1
    fake = FakeLLM(yes_logprob=lambda p: next(v for k, v in scores.items() if k in p), reply="no idea")
    order = rank_classes(fake, "q", ["x", "y", "z"], ["sol-x", "sol-y", "sol-z"], "score")
    assert order.order == [2, 0, 1]
    assert order.scores[1] == pytest.approx(1 / (1 + math.exp(-1 + 3.0)))
    listwise = rank_classes(fake, "q", ["x", "y", "z"], ["sol-x", "sol-y", "sol-z"], "listwise")
    assert listwise.parse_failed and listwise.order == [2, 0, 1] and listwise.reply == "no idea"
    fake.reply = "C > A > B"
    assert rank_classes(fake, "q", ["x", "y", "z"], ["sol-x", "sol-y", "sol-z"], "listwise").order == [2, 0, 1]
    fake.reply = "B > C > A"
    assert rank_classes(fake, "q", ["x", "y", "z"], ["sol-x", "sol-y", "sol-z"], "listwise").order == [1, 2, 0]
    # the format's example is a seeded order, not the pool order reversed (a copying model's reply, the same on
    # every question): over 12 seeds it takes several orders, the same one for the same seed
    def example(seed):
        rank_classes(fake, "q", ["x", "y", "z"], ["sol-x", "sol-y", "sol-z"], "listwise", seed=seed)
        return fake.prompts[-1].split("for example: ")[1].split("\n")[0]
    assert len({example(seed) for seed in range(12)}) > 2 and example(5) == example(5)
    many = [f"a{k}" for k in range(27)]                     # more candidates than letters: the score order
    wide = rank_classes(FakeLLM(yes_logprob=lambda p: -float(p.count("1"))), "q", many, [f"sol-{a}" for a in many],
                        "listwise")
    assert wide.parse_failed and wide.order == sorted(range(27), key=lambda k: -wide.scores[k])
    assert wide.reply == ""                                 # no ranking was asked for (letters cannot name them)


def test_counterfactual_utilities_and_nash_gap_by_hand():
    ranking = [0, 1, 2]
    p0 = Player("p0", [0, 2], np.array([0.25, 0.75]))
    p1 = Player("p1", [1], np.array([1.0]))
    # p1 submits 1. p0's class 0 would rank first of {0, 1}: r = +1; class 2 last of {1, 2}: r = -1
    assert counterfactual_utilities(p0, [1], ranking).tolist() == [0.25, -0.75]
    # profile: p0 plays (1/2, 1/2). p1's only action: r(1 | p0 plays 0) = -1, r(1 | p0 plays 2) = +1 -> 0
    assert expected_utilities([p0, p1], [np.array([0.5, 0.5]), np.array([1.0])], 1, [ranking])[0] == 0.0
    # p0 gains 0.25 - (0.5 * 0.25 - 0.5 * 0.75) = 0.5 by deviating to class 0; p1 cannot deviate
    assert nash_gap([p0, p1], [np.array([0.5, 0.5]), np.array([1.0])], [ranking]) == pytest.approx(0.5)
    assert nash_gap([p0, p1], [np.array([1.0, 0.0]), np.array([1.0])], [ranking]) == 0.0   # an equilibrium
    # a noisy principal: the gap is taken on the game averaged over the rankings drawn, not ranking by ranking.
    # Rankings [0,1,2] and [2,1,0] once each, p0 pure on class 0: u(0) = (0.25 - 0.25)/2 = 0, u(2) = (-0.75 + 0.75)/2
    # = 0: no gain, although against either ranking alone p0 would gain 1.0 (to class 2) or 0 (already best)
    pure = [np.array([1.0, 0.0]), np.array([1.0])]
    assert nash_gap([p0, p1], pure, [[0, 1, 2], [2, 1, 0]]) == 0.0
    assert nash_gap([p0, p1], pure, [[2, 1, 0]]) == pytest.approx(1.0)
    # one [0, 1, 2] and two [2, 1, 0]: u(0) = -0.25 / 3, u(2) = 0.75 / 3: p0 gains u(2) - u(0) = 1/3
    assert nash_gap([p0, p1], pure, [[0, 1, 2], [2, 1, 0], [2, 1, 0]]) == pytest.approx(1 / 3)


def test_game_edge_cases_abstention_unanimity():
    order = PrincipalOrder(["7"], [0.3], [0])
    unanimous = [Player(f"p{i}", [0], np.array([1.0])) for i in range(3)]
    record = delegate(Pool(["7"], [None], unanimous + [Player("silent", [], np.array([]))]), order, GameConfig())
    assert record["prediction"] == "7" and record["abstained"] == ["silent"]
    assert record["diagnostics"]["rounds"] == 1 and record["diagnostics"]["converged"]
    # nobody had a choice: no regret ratio and no dominated share to count (not a 0 that pulls a mean down)
    assert record["diagnostics"]["regret_ratio"] is None and record["diagnostics"]["dominated"] is None
    # one agent with a choice beside one without: the ratio is that agent's own
    chooser, single = Player("c", [0, 1], np.array([.6, .4])), Player("s", [1], np.array([1.0]))
    game = delegate(Pool(["7", "8"], [None, None], [chooser, single]), PrincipalOrder(["7", "8"], [.9, .1], [0, 1]),
                    GameConfig(stopping="none", max_rounds=5))["diagnostics"]
    assert game["regret_bound"][1] == 0 and game["regret_bound"][0] > 0
    assert game["regret_ratio"] == pytest.approx(game["regret"][0] / game["regret_bound"][0])
    nobody = delegate(Pool([], [], [Player("silent", [], np.array([]))]), None, GameConfig())
    assert nobody["prediction"] is None and nobody["diagnostics"] is None


def test_delegation_rules_and_the_dominated_best_response_of_the_product():
    # the issue's example: a = (U 0.6, rank 2) and b = (U 0.4, rank 3) behind another agent's top submission
    ranking, holder = [0, 1, 2], Player("p", [1, 2], np.array([0.6, 0.4]))
    product = counterfactual_utilities(holder, [0], ranking, DELEGATION_RULES["product"])
    assert product.tolist() == pytest.approx([-0.6, -0.4])                 # b, which a dominates, is preferred
    assert best_response_is_dominated(holder, product, ranking)
    product01 = counterfactual_utilities(holder, [0], ranking, DELEGATION_RULES["product01"])
    assert product01.tolist() == [0.0, 0.0] and not best_response_is_dominated(holder, product01, ranking)
    assert pareto_share(holder, ranking) == 0.5                           # chance level: b is dominated
    # each rule's range is what its utilities span over U in [0, 1] and every rank of every m
    for rule in DELEGATION_RULES.values():
        values = [rule.utility(U, rule.feedback(k, m)) for U in (0.0, 1.0) for m in range(1, 6) for k in range(m)]
        assert max(values) - min(values) == rule.utility_range
    with pytest.raises(ValueError, match="product01"):
        GameConfig(rule="sum")


def test_the_game_uses_the_rule_of_its_config():
    players = [Player("p0", [0, 2], np.array([0.25, 0.75])), Player("p1", [1], np.array([1.0]))]
    games = {rule: play_delegation_game(players, lambda t: [0, 1, 2], [0, 1, 2],
                                        GameConfig(rule=rule, stopping="none", max_rounds=5))
             for rule in DELEGATION_RULES}
    assert games["product"]["rounds"][0]["utilities"][0] == [0.25, -0.75]
    assert games["product01"]["rounds"][0]["utilities"][0] == [0.25, 0.0]
    assert games["product01"]["diagnostics"]["regret_bound"][0] == pytest.approx(hedge_regret_bound(5, 2, 0.1, 1.0))


def test_stopping_rules():
    # l1 at eta = 0.1: a two-action policy under the largest utility gap first moves less than 1e-3 at round 31
    learner, still = Hedge(2, eta=0.1), []
    for _ in range(40):
        before = learner.policy()
        learner.update([1.0, -1.0])
        still.append(np.abs(learner.policy() - before).sum() < 1e-3)
    assert still.index(True) + 1 == 31
    l1 = simulate(60, 0.5, GameConfig(stopping="l1"), seed=4)
    assert l1["rounds"] == 20 and l1["converged"] == 0
    # argmax (the default) fires well before T = 20 at the paper's eta = 0.1, and after at least `patience` rounds
    default = simulate(60, 0.5, GameConfig(), seed=4)
    print({"argmax rounds": default["rounds"], "fired": default["converged"]})
    assert default["rounds"] < 8 and default["converged"] == 1.0
    question = synthetic_question(np.random.default_rng(4), 0.5)
    game = play_delegation_game(question.players, lambda t: question.ranking, question.ranking, GameConfig(patience=4))
    leaders = [r["most_likely"] for r in game["rounds"]]
    assert len(leaders) >= 4 and leaders[-4:] == [leaders[-1]] * 4 and leaders[-5:-4] != [leaders[-1]]


def test_the_principals_top_in_the_synthetic_games_is_a_class_some_agent_found():
    """The principal ranks all six latent classes, but the pool is what the agents found: its 'top' (the bound on
    ALIGN's delivered utility) must be the best *pooled* class, as evaluate.py's `principal` is."""
    rng, unfound_ranked_first = np.random.default_rng(0), 0
    for _ in range(200):
        question = synthetic_question(rng, -1.0)
        found = {a for p in question.players for a in p.actions}
        unfound_ranked_first += question.ranking[0] not in found
        game = play_delegation_game(question.players, lambda t: question.ranking, question.ranking, GameConfig())
        top = delivered_classes(question, game)["principal's top"]
        assert top in found and top == min(found, key=question.ranking.index)
        assert question.principal_utility[top] >= question.principal_utility[game["final"]]
    assert unfound_ranked_first > 0          # the case that matters occurs in these games


def test_pareto_compliance_comes_with_its_chance_level_and_the_correlation_is_measured():
    s = {c: simulate(60, c, GameConfig(), seed=5) for c in (1.0, 0.0, -1.0)}
    print({c: (round(x["measured_correlation"], 2), round(x["pareto"], 3), round(x["pareto_chance"], 3))
           for c, x in s.items()})
    assert s[1.0]["measured_correlation"] > 0.3 and abs(s[0.0]["measured_correlation"]) < 0.1
    assert s[-1.0]["measured_correlation"] < -0.3
    assert all(0 < x["pareto_chance"] < 1 and 0 < x["pareto"] <= 1 for x in s.values())


def test_theorem_1_on_the_principal_utility_at_every_non_negative_correlation_across_20_seeds():
    """ALIGN's principal utility >= the equal-access single agent's, for every seed, at correlations 0, 0.5, 1."""
    margins = [theorem1_margin({c: simulate(30, c, GameConfig(), seed) for c in (0.0, 0.5, 1.0)})
               for seed in range(20)]
    print(f"smallest margin over 20 seeds: {min(margins):+.3f}")
    assert min(margins) > 0


class FollowTheLeader(Hedge):
    """An impostor with Hedge's interface: all its weight on the actions of largest cumulative utility."""

    def policy(self) -> np.ndarray:
        leaders = self.cumulative_utility >= self.cumulative_utility.max() - 1e-12
        return leaders / leaders.sum()


class LastRoundOnly(Hedge):
    """An impostor with Hedge's interface: pi_{t+1} proportional to exp(eta u_t), the last round's utility only
    (the paper's "exp(eta U_{t-1})" read as one round)."""

    def __init__(self, num_actions: int, eta: float = 0.1, seed: int = 0):
        super().__init__(num_actions, eta, seed)
        self.last_utility = np.zeros(num_actions)

    def policy(self) -> np.ndarray:
        return softmax(self.eta * self.last_utility)

    def update(self, utilities) -> None:
        super().update(utilities)
        self.last_utility = np.asarray(utilities, dtype=float)


THEORY_CACHE = {}


def theory_checks(learner_class, games: int = 40) -> dict:
    """Theorems 2 and 3 for agents that learn with `learner_class`, at the paper's eta = 0.1, T = 20 and at the
    tuned eta for T = 10, 40, 160 (every round played, correlation +0.5). Returns which checks pass, with figures.

    Theorem 2: no agent's regret over the bound in any game; regret per round falls with T; and, because the
    bound holds for any sequence, no regret over it against the adaptive adversary of hedge.py (2-4 actions).
    Theorem 3: the Nash gap of the average policies shrinks with T, by at least a third from T = 10 to 160,
    and stays below the regret part of xi_T (the mean regret bound / T).
    """
    if learner_class in THEORY_CACHE:
        return THEORY_CACHE[learner_class]
    settings = [("0.1", 20), ("tuned", 10), ("tuned", 40), ("tuned", 160)]
    runs = {(eta, T): simulate(games, 0.5, GameConfig(stopping="none", max_rounds=T), seed=3,
                               tune_eta=eta == "tuned", learner_class=learner_class) for eta, T in settings}
    adversary_excess = {}
    for eta_name, T in settings:
        for K in (2, 3, 4):
            eta = 0.1 if eta_name == "0.1" else tuned_learning_rate(T, K)
            excess = adversarial_regret(learner_class(K, eta), T) - hedge_regret_bound(T, K, eta)
            adversary_excess[eta_name, T, K] = excess
    per_round = [runs["tuned", T]["regret_per_round"] for T in (10, 40, 160)]
    gaps = [runs["tuned", T]["nash_gap"] for T in (10, 40, 160)]
    result = {
        "theorem2": (all(r["regret_over_bound"] == 0 for r in runs.values())
                     and per_round[0] > per_round[1] > per_round[2] and max(adversary_excess.values()) <= 0),
        "theorem3": (gaps[0] > gaps[1] > gaps[2] and gaps[2] < 2 / 3 * gaps[0]
                     and all(r["nash_gap"] <= r["regret_bound"] / T for (_, T), r in runs.items())),
        "over_bound": {k: r["regret_over_bound"] for k, r in runs.items()}, "regret_per_round": per_round,
        "worst_adversary_excess": max(adversary_excess.values()), "nash_gaps": gaps,
    }
    THEORY_CACHE[learner_class] = result
    return result


def test_theorem_2_regret_under_the_bound_at_the_papers_eta_and_tuned_and_against_an_adversary():
    checks = theory_checks(Hedge)
    print(checks)
    assert checks["theorem2"]


def test_theorem_3_nash_gap_of_average_policies_shrinks_below_the_regret_part_of_xi():
    checks = theory_checks(Hedge)
    print(checks)
    assert checks["theorem3"]


def test_the_theory_checks_reject_impostors():
    """The checks tell Hedge from learners that are not Hedge (issue 10): follow-the-leader fails Theorem 2 (the
    adversary makes it lose every round); last-round-only fails Theorems 2 and 3 (its policy never settles).
    Follow-the-leader passes the Nash-gap check of Theorem 3, and rightly: with full information it is fictitious
    play, which reaches an equilibrium of these games sooner than Hedge. What it lacks is the no-regret guarantee
    that xi_T rests on, and that is what the Theorem 2 check catches."""
    leader, last = theory_checks(FollowTheLeader), theory_checks(LastRoundOnly)
    print({"follow-the-leader": leader, "last-round-only": last})
    assert not leader["theorem2"]
    assert not last["theorem2"] and not last["theorem3"]



# ---------------------------------------------------------------- what the principal knew; the oracle study

def agents_of(*agents) -> list:
    """Records' `agents` field from {answer: (utility, count)} per agent."""
    return [{"agent": f"agent-{i}", "solutions": sum(n for _, n in classes.values()),
             "classes": [{"answer": a, "utility": u, "count": n} for a, (u, n) in classes.items()]}
            for i, classes in enumerate(agents)]


def test_principal_correlation_columns_against_hand_computed_values():
    """Per problem Pearson over the pooled classes, averaged where defined; n/a, and no warning, where not."""
    def record(problem_id, method, gold, pool, agents):
        return {"problem_id": problem_id, "method": method, "gold": gold, "correct": False, "calls": 1,
                "prompt_tokens": 1, "generated_tokens": 1, "seconds": 0.0, "agents": agents,
                "pool": [{"answer": a, "score": s} for a, s in pool]}
    records = [
        # scores (.9, .5, .1), correctness (1, 0, 0): deviations (.4, 0, -.4) and (2, -1, -1)/3 -> sqrt(3)/2.
        # agents' mean U: "4" (.6 + .6)/2 = .6, "5" .4/2 = .2, "6" .4/2 = .2: the same shape -> sqrt(3)/2
        record("p1", "principal", "4", [("4", .9), ("5", .5), ("6", .1)],
               agents_of({"4": (.6, 6), "5": (.4, 4)}, {"4": (.6, 6), "6": (.4, 4)})),
        # two classes: scores (.2, .8), correctness (1, 0) -> -1; mean U ("1" .35, "2" .65) -> +1
        record("p2", "principal", "1", [("1", .2), ("2", .8)], agents_of({"1": (.7, 7), "2": (.3, 3)},
                                                                         {"2": (1.0, 10)})),
        # no class right: corr with correctness undefined; mean U ("3" .25, "8" .75) with scores (.4, .6) -> +1
        record("p3", "principal", "9", [("3", .4), ("8", .6)], agents_of({"3": (.5, 5), "8": (.5, 5)},
                                                                         {"8": (1.0, 10)})),
        # a single class: both undefined
        record("p4", "principal", "7", [("7", .5)], agents_of({"7": (1.0, 3)})),
        record("p4", "align", "7", [("7", .5)], agents_of({"7": (1.0, 3)})),
        {**record("p1", "cot", "4", [], []), "pool": None},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # a constant side must give None, not a NaN warning
        correlations = principal_correlations([r for r in records if r["method"] == "principal"])
        table = summarize(records, ["cot", "principal", "align"])
    print(table)
    (correct, n_correct), (agents, n_agents) = correlations["correct"], correlations["agents"]
    assert n_correct == 2 and correct == pytest.approx((math.sqrt(3) / 2 - 1) / 2)          # -0.067
    assert n_agents == 3 and agents == pytest.approx((math.sqrt(3) / 2 + 1 + 1) / 3)         # +0.955
    assert principal_correlations([r for r in records if r["method"] == "align"]) == \
        {"correct": (None, 0), "agents": (None, 0)}
    rows = {line.split()[0]: line for line in table.splitlines()}
    assert rows["principal"].split()[-2:] == ["-0.07", "+0.96"]
    assert rows["align"].split()[-2:] == ["n/a", "n/a"]
    assert "corr(P,correct)" in table and "n/a" not in rows["cot"] and "problems used: principal 2 and 3" in table
    # two classes of one agent that meet in one pooled class (2.334 ~ 2.33 ~ 2.326) count with both shares there, as
    # pool_classes holds them: mean U ("2.33" (.2 + .9) / 2, "7" .1 / 2, "9" .8 / 2) against scores (.9, .5, .1)
    met = record("p5", "principal", "9", [("2.33", .9), ("7", .5), ("9", .1)],
                 agents_of({"2.33": (.2, 2), "9": (.8, 8)}, {"2.334": (.45, 9), "2.326": (.45, 9), "7": (.1, 2)}))
    scores, agents_u = np.array([.9, .5, .1]), np.array([.55, .05, .4])
    assert principal_correlations([met])["agents"][0] == pytest.approx(np.corrcoef(scores, agents_u)[0, 1])


def study_records() -> list:
    """Four problems for the oracle study, built by hand."""
    def record(problem_id, gold, agents, method="align"):
        return {"problem_id": problem_id, "method": method, "gold": gold, "prediction": None, "agents": agents}
    return [
        # every agent's most self-consistent class is the right one ("6.0" and "6" merge, as in pool_classes)
        record("hit", "6", agents_of({"6": (.6, 6), "4": (.4, 4)}, {"6.0": (.7, 7), "8": (.3, 3)})),
        # the right class "6" is found only by agent 0, at U = .1. At c = +1 the wrong classes tie below it, in pool
        # order "7" > "5"; against agent 1's "5", agent 0's "7" ranks first (u = .9 * 1) and beats "6" (u = .1 * 1),
        # so no final submission is "6": the game does not deliver the principal's top class
        record("miss", "6", agents_of({"7": (.9, 9), "6": (.1, 1)}, {"5": (1.0, 5)})),
        record("not in pool", "3", agents_of({"1": (.5, 5), "2": (.5, 5)}, {"2": (1.0, 4)})),
        record("empty", "3", agents_of({}, {})),
        {**record("hit", "6", agents_of({"6": (.6, 6), "4": (.4, 4)}, {"6.0": (.7, 7), "8": (.3, 3)}), "vote"),
         "prediction": "6"},
    ]


def test_two_classes_of_one_agent_that_meet_in_one_pooled_class_are_one_action():
    """same_answer is not transitive for decimals: 2.334 ~ 2.33 ~ 2.326, but 2.334 !~ 2.326. An agent holding the
    last two, after another agent's 2.33, has one action there, with both shares -- not the same class twice."""
    assert same_answer("2.33", "2.334") and same_answer("2.33", "2.326") and not same_answer("2.334", "2.326")
    problems, _ = replay_problems([{"problem_id": "p", "method": "align", "gold": "2.33", "prediction": None,
                                    "agents": agents_of({"2.33": (1.0, 4)}, {"2.334": (.5, 2), "2.326": (.25, 1),
                                                                               "7": (.25, 1)})}])
    (problem,) = problems
    assert problem.pool.answers == ["2.33", "7"]
    first, second = problem.pool.players
    assert first.actions == [0] and second.actions == [0, 1] and second.utility.tolist() == [.75, .25]
    assert problem.pool.homes == [[0], [0, 0, 1]] and problem.counts.tolist() == [7, 1]
    assert problem.agents_utility.tolist() == [(1.0 + .75) / 2, .25 / 2]


def test_oracle_study_at_correlation_plus_and_minus_one():
    """c = +1: the principal's pick is right wherever the right answer is in the pool; ALIGN is right exactly when
    some agent's final submission is the right class -- not guaranteed by the game ("miss"). c = -1: the principal
    never picks the right class when a wrong one is in the pool; ALIGN never delivers it when a wrong class is
    among the final submissions (it can when every agent ends on the right class)."""
    problems, skipped = replay_problems(study_records())
    assert skipped == ["empty"] and [p.problem_id for p in problems] == ["hit", "miss", "not in pool"]
    hit = problems[0]
    assert hit.pool.answers == ["6", "4", "8"] and hit.counts.tolist() == [13, 4, 3]
    assert hit.correct.tolist() == [True, False, False] and hit.agents_utility == pytest.approx([.65, .2, .15])
    config = GameConfig()
    for problem in problems:
        for draw in range(5):
            right = replay_game(problem, 1.0, draw, config)
            delivered, finals = right["delivered"], right["final_submissions"]
            assert problem.correct[delivered["principal"]] == problem.correct.any()
            assert problem.correct[delivered["ALIGN"]] == problem.correct[finals].any()
            assert problem.correct[delivered["ALIGN"]] == (problem.problem_id == "hit")
            wrong = replay_game(problem, -1.0, draw, config)
            delivered, finals = wrong["delivered"], wrong["final_submissions"]
            assert not problem.correct[delivered["principal"]]          # every pool here has a wrong class
            if not problem.correct[finals].all():
                assert not problem.correct[delivered["ALIGN"]]
    results = principal_quality_study(problems, (-1.0, 1.0), draws=5, config=config)
    top = results[1.0]
    assert top["accuracy"]["principal"] == pytest.approx(2 / 3) and top["accuracy"]["ALIGN"] == pytest.approx(1 / 3)
    assert top["missed"] == 0.5 and top["corr correct"] == pytest.approx(1.0)
    assert results[-1.0]["accuracy"]["principal"] == 0 and results[-1.0]["corr correct"] == pytest.approx(-1.0)
    assert top["accuracy"]["vote"] == top["accuracy"]["single agent"] == pytest.approx(1 / 3)


def test_break_even_is_the_lowest_level_where_align_beats_vote_strictly():
    def levels(*pairs):
        return {c: {"accuracy": {"ALIGN": a, "vote": v}} for c, (a, v) in zip(STUDY_LEVELS, pairs)}
    assert break_even(levels((.1, .5), (.5, .5), (.6, .5), (.4, .5))) == -0.5       # the tie at -0.75 does not count
    assert break_even(levels((.5, .5), (.4, .5))) is None


def test_the_study_runs_from_both_command_lines(tmp_path):
    path = tmp_path / "records.jsonl"
    settings = json.dumps({"settings": evaluate.record_settings(EvalConfig(), SearchConfig(), GameConfig(),
                                                                  mlpo.LeaderConfig())})
    path.write_text(settings + "\n" + "".join(json.dumps(r) + "\n" for r in study_records()))   # as evaluate writes
    for command in (["align.py", "--study", str(path)], ["theory.py", "--study", str(path)]):
        out = run_cli(*command, timeout=120)
        assert "ORACLE STUDY: the simulated principal reads the gold answers; no method sees them" in out
        assert "3 problems replayed, 1 skipped (empty pool)" in out and "vote as recorded 1/1" in out
        assert out.strip().splitlines()[-1] == "break-even principal correlation: 0.50"


def test_simulate_and_study_take_the_commands_seed_and_game_flags(monkeypatch, capsys, tmp_path):
    """`align.py --simulate` and `--study` run under the command's --seed and game flags (they printed them in the
    configuration line but used seed 0 and the default game)."""
    import runpy
    calls = {}
    monkeypatch.setattr(runpy, "run_module", lambda name, alter_sys: {
        "print_theory_checks": lambda **kwargs: calls.setdefault("simulate", kwargs),
        "print_study": lambda path, config, **kwargs: calls.setdefault("study", (path, config, kwargs))})
    align.main(["--simulate", "--seed", "3", "--eta", "0.2", "--rule", "product01"])
    assert calls["simulate"]["seed"] == 3 and calls["simulate"]["config"].eta == 0.2
    assert calls["simulate"]["config"].rule == "product01"
    align.main(["--study", "r.jsonl", "--seed", "4", "--max-rounds", "7"])
    path, config, kwargs = calls["study"]
    assert path == "r.jsonl" and config.max_rounds == 7 and kwargs == {"seed": 4}
    # and the tables start from that game: its eta, T and rule in every heading, its seed in the first
    from theory import print_theory_checks
    monkeypatch.undo()
    print_theory_checks(num_games=6, seed=3, config=GameConfig(eta=0.2, max_rounds=12, rule="product01"))
    out = capsys.readouterr().out
    assert "seed 3" in out and "eta 0.2, T <= 12" in out
    assert "(product01 rule, correlation +0.5, eta 0.2, T <= 12)" in out
    assert "\n  0.2      12 " in out                # Theorem 2's row at the command's eta and T


def test_evaluate_search_methods_on_the_tiny_model(tiny_model_dir, tmp_path):
    output = tmp_path / "game.jsonl"
    out = run_cli("evaluate.py", "--dataset", "arith", "--methods", "mcts,vote,principal,align", "--limit", "2",
                  "--model", tiny_model_dir, "--rollouts", "4", "--step-tokens", "6", "--completion-tokens", "12",
                  "--principal-mode", "listwise", "--output", str(output), "--no-progress")
    records = read_records(str(output))
    assert len(records) == 8 and "align" in out
    vote = next(r for r in records if r["method"] == "vote")
    assert len(vote["agents"]) == 3 and all("classes" in a and "cost" in a for a in vote["agents"])
    calls = {r["method"]: r["calls"] for r in records if r["problem_id"] == "arith-test-0-0"}
    assert calls["vote"] > calls["mcts"] and calls["principal"] >= calls["vote"]   # each charged what it uses
    assert calls["principal"] == calls["align"]                  # the same search and order, charged once each


# ---------------------------------------------------------------- mlpo.py

def test_mlpo_loss_equals_a_hand_computation():
    new = torch.tensor([[-1.0, -0.5], [-2.0, 0.0]])
    old = torch.tensor([[-1.2, -0.5], [-1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    advantages = group_advantages(torch.tensor([1.0, 0.0]))
    assert advantages.tolist() == [0.5, -0.5]                      # reward - group mean, no std division
    # by hand, token by token, -min(ratio * A, clip(ratio, 0.8, 1.2) * A):
    #   row 0 (A = +0.5): ratio e^0.2 = 1.2214 -> clipped to 1.2: -0.6;   ratio 1: -0.5
    #   row 1 (A = -0.5): ratio e^-1 = 0.3679 -> min(-0.1839, -0.4) = -0.4: +0.4;   masked token: 0
    #   sum -0.7, divided by the constant 4 (not by each completion's length): -0.175
    assert mlpo_loss(new, old, advantages, mask, normalizer=4.0).item() == pytest.approx(-0.175)
    ref = torch.tensor([[-1.0, -0.5], [-1.0, 0.0]])               # k3 KL: e^(ref-new) - (ref-new) - 1
    kl = (math.exp(1.0) - 1.0 - 1)                                 # only row 1, token 0 differs (ref-new = 1)
    assert mlpo_loss(new, old, advantages, mask, 4.0, ref_logprobs=ref, kl_coef=0.1).item() == \
        pytest.approx(-0.175 + 0.1 * kl / 4)
    assert group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0])).tolist() == [0.5, -0.5, -0.5, 0.5]


def test_one_optimizer_step_raises_a_rewarded_completion(tiny_model_dir):
    leader = llm.load_llm(tiny_model_dir, device="cpu", fresh=True)   # a private copy: we train it
    prompt = leader.encode(leader.chat("Tom has 3 apples and buys 5 more."))
    completions = [leader.encode("<answer>8</answer>"), leader.encode("<answer>9</answer>")]
    advantages = group_advantages(torch.tensor([1.0, 0.0]))
    with torch.no_grad():
        old, mask = completion_logprobs(leader.model, [prompt] * 2, completions, leader.pad_id)
    manual = leader.score(leader.tokenizer.decode(prompt), ["<answer>8</answer>"])[0]
    assert old[0].sum().item() == pytest.approx(manual, abs=1e-3)   # same log-probs as the scoring path
    optimizer = torch.optim.AdamW(leader.model.parameters(), lr=1e-3)
    leader.model.train()
    new, _ = completion_logprobs(leader.model, [prompt] * 2, completions, leader.pad_id)
    loss = mlpo_loss(new, old, advantages, mask, normalizer=2 * 8)
    loss.backward()
    optimizer.step()
    leader.model.eval()
    with torch.no_grad():
        after, _ = completion_logprobs(leader.model, [prompt] * 2, completions, leader.pad_id)
    assert after[0].sum() > old[0].sum()                             # the rewarded completion is likelier
    assert llm.load_llm(tiny_model_dir, device="cpu") is not leader  # the shared copy was not touched


def test_easy_question_filter_and_leader_answers():
    pool = [{"id": i, "pool_accuracy": a} for i, a in enumerate([0.75, 0.5, 1.0, 0.74, 0.0])]
    assert [e["id"] for e in drop_easy_questions(pool, 0.75)] == [1, 3, 4]
    assert leader_answer("2 + 2.</think><answer>4</answer> then <answer>5</answer>") == "5"  # the last tag
    assert leader_answer("so it is 4.</think><answer>4") == "4"                             # cut at the stop
    assert leader_answer("The answer is 4.") == "4" and leader_answer("The answer is 4.", strict_format=True) is None
    assert leader_reward("<answer>$1,000</answer>", "1000") == 1.0
    assert leader_reward("<answer>999</answer>", "1000") == 0.0


def test_leader_methods_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path):
    output = tmp_path / "leader.jsonl"
    out = run_cli("evaluate.py", "--dataset", "arith", "--methods", f"leader,leader-solo,leader@{tiny_model_dir}",
                  "--limit", "2", "--model", tiny_model_dir, "--leader-rounds", "2", "--leader-max-new-tokens", "8",
                  "--output", str(output), "--no-progress")
    records = read_records(str(output))
    assert len(records) == 6 and f"leader@{tiny_model_dir}" in out
    team = next(r for r in records if r["method"] == "leader")
    assert len(team["transcript"]) == 2 and len(team["transcript"][0]["team"]) == 3
    assert team["calls"] == 3 + 2 + 3                                # answers, 2 leader replies, 1 revision
    solo = next(r for r in records if r["method"] == "leader-solo")
    assert solo["calls"] == 1 and solo["transcript"][0]["team"] is None


def test_mlpo_train_runs_and_saves_a_loadable_leader(tiny_model_dir, tmp_path):
    out = run_cli("mlpo.py", "train", "--model", tiny_model_dir, "--questions", "3", "--steps", "2",
                  "--group-size", "2", "--max-new-tokens", "8", "--responses-per-agent", "2",
                  "--easy-threshold", "1.01", "--output", str(tmp_path / "leader"), "--device", "cpu")
    assert "step   1" in out and "saved the trained leader" in out
    log = [json.loads(line) for line in open(tmp_path / "leader" / "training_log.jsonl")]
    assert [h["step"] for h in log] == [0, 1] and all(0 <= h["reward"] <= 1 for h in log)
    trained = llm.load_llm(str(tmp_path / "leader"), device="cpu")
    assert trained.sample(trained.chat("hi"), 1, max_new_tokens=4) is not None


def test_the_trained_leader_is_float32_whatever_the_machines_default(tiny_model_dir, monkeypatch):
    """On a GPU a model loads in bf16, where an AdamW step at the trainers' learning rate (1e-5) is under half of the
    spacing near most weights: a bf16 leader would train and save almost unchanged. `train` and `sft` hold the
    leader (and the KL reference) in --dtype, float32 by default."""
    for dtype, moved in (("bfloat16", lambda share: share < 0.2), ("float32", lambda share: share > 0.9)):
        leader = llm.load_llm(tiny_model_dir, device="cpu", dtype=dtype, fresh=True)
        before = [p.detach().clone() for p in leader.model.parameters()]
        ids = torch.tensor([leader.encode("Tom has 3 apples and buys 5 more. He has 8.")])
        leader.model(input_ids=ids, labels=ids).loss.backward()
        torch.optim.AdamW(leader.model.parameters(), lr=1e-5).step()
        changed = sum((a != b).sum().item() for a, b in zip(before, leader.model.parameters()))
        assert moved(changed / sum(p.numel() for p in before)), (dtype, changed)

    class Stop(Exception):
        pass
    loaded = []
    monkeypatch.setattr(mlpo, "load_llm", lambda name, device=None, dtype=None, fresh=False: loaded.append(
        (dtype, fresh)))
    monkeypatch.setattr(mlpo, "load_problems", lambda *args, **kwargs: [])
    monkeypatch.setattr(mlpo, "make_agents", lambda *args, **kwargs: [])
    monkeypatch.setattr(mlpo, "build_pool", lambda *args, **kwargs: (_ for _ in ()).throw(Stop()))
    for run, config, models in ((mlpo.train, mlpo.TrainConfig(model=tiny_model_dir, kl_coef=0.1), 2),   # and its
                                (mlpo.sft, mlpo.SFTConfig(model=tiny_model_dir), 1)):                # reference
        loaded.clear()
        with pytest.raises(Stop):
            run(config)
        assert loaded == [("float32", True)] * models, (run.__name__, loaded)
    assert mlpo.TrainConfig().dtype == mlpo.SFTConfig().dtype == "float32"


# ---------------------------------------------------------------- mlpo.py sft (issue 12)

def test_sft_loss_equals_a_hand_computation(tiny_llm):
    logprobs = torch.tensor([[-9.0, -1.0, -2.0], [-0.5, -1.5, -3.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])        # row 0: a pad/prompt column, masked out
    # by hand: -(-1 - 2 - 0.5 - 1.5 - 3) / 5 completion tokens = 1.6; the masked -9 contributes nothing
    assert sft_loss(logprobs, mask).item() == pytest.approx(1.6)
    # on the tiny model: the loss is minus the summed log-probability of the completions alone (the scoring
    # path, which sums over the continuation's tokens only), per completion token
    prompts = [tiny_llm.chat("Tom has 3 apples and buys 5 more.", assistant_prefix="<think>"), tiny_llm.chat("hi")]
    completions = ["3 + 5 = 8.</think><answer>8</answer>", "<answer>7</answer>"]
    with torch.no_grad():
        logprobs, mask = completion_logprobs(tiny_llm.model, [tiny_llm.encode(p) for p in prompts],
                                             [tiny_llm.encode(c) for c in completions], tiny_llm.pad_id)
    tokens = sum(len(tiny_llm.encode(c)) for c in completions)
    scores = [tiny_llm.score(p, [c])[0] for p, c in zip(prompts, completions)]
    assert mask.sum().item() == tokens
    assert sft_loss(logprobs, mask).item() == pytest.approx(-sum(scores) / tokens, abs=1e-3)


def test_template_completion_goes_wrong_then_ends_in_the_reference_answer():
    completion = template_completion(1, "12 + 5 = 17.\nThe answer is 17.", "12 - 5 = 7.\nThe answer is 7.", "7")
    assert leader_answer(completion, strict_format=True) == "7"
    assert leader_reward(completion, "7", strict_format=True) == 1.0
    assert completion.index("17") < completion.index("Wait") < completion.index("<answer>")
    assert keep_completion(completion, "7", "number", "17", require_wrong_path=True)
    # the keep rule: right in a tagged answer ([paper] ends right), after stating the wrong answer ([ours])
    assert not keep_completion("12 - 5 = 7.</think><answer>7</answer>", "7", "number", "17", True)  # never wrong
    assert keep_completion("12 - 5 = 7.</think><answer>7</answer>", "7", "number", "17", False)
    assert not keep_completion("So 17. Wait, no.</think><answer>17</answer>", "7", "number", "17", True)  # ends wrong
    assert not keep_completion("So 17. Wait, it is 7.", "7", "number", "17", True)                      # no tag


def test_choose_aggregations_shows_the_wrong_response_and_names_a_right_one():
    entry = {"question": "q", "answer": "7", "kind": "number",
             "responses": [["The answer is 7.", "It is 7."], ["I do not know.", "The answer is 17."],
                           ["The answer is 7.", "The answer is 7."]]}
    for seed in range(5):
        choice = choose_aggregations(entry, random.Random(seed))
        # a wrong response that states an answer is preferred to one that states none, and is shown in the team
        assert (choice["wrong_agent"], choice["wrong"], choice["wrong_answer"]) == (1, "The answer is 17.", "17")
        assert choice["team"][1] == choice["wrong"] and len(choice["team"]) == 3
        assert choice["right"] in ("The answer is 7.", "It is 7.")
    nobody_right = {**entry, "responses": [["The answer is 17."], ["The answer is 8."], ["no idea"]]}
    assert choose_aggregations(nobody_right, random.Random(0))["right"] == "The answer is 7."   # the reference
    everybody_right = {**entry, "responses": [["The answer is 7."]] * 3}
    assert choose_aggregations(everybody_right, random.Random(0)) is None                     # no wrong path


def test_one_sft_step_raises_the_completion_log_probability(tiny_model_dir):
    leader = llm.load_llm(tiny_model_dir, device="cpu", fresh=True)   # a private copy: we train it
    prompt = leader.encode(leader.chat("Tom has 3 apples and buys 5 more.", assistant_prefix="<think>"))
    completion = leader.encode(template_completion(0, "3 - 5 = -2.", "3 + 5 = 8.", "8"))
    with torch.no_grad():
        before, _ = completion_logprobs(leader.model, [prompt], [completion], leader.pad_id)
    optimizer = torch.optim.AdamW(leader.model.parameters(), lr=1e-3)
    leader.model.train()
    logprobs, mask = completion_logprobs(leader.model, [prompt], [completion], leader.pad_id)
    sft_loss(logprobs, mask).backward()
    optimizer.step()
    leader.model.eval()
    with torch.no_grad():
        after, _ = completion_logprobs(leader.model, [prompt], [completion], leader.pad_id)
    assert after.sum() > before.sum()                                # the completion is likelier


def test_mlpo_sft_saves_a_leader_that_train_init_from_continues(tiny_model_dir, tmp_path):
    sft_dir = tmp_path / "sft"
    out = run_cli("mlpo.py", "sft", "--model", tiny_model_dir, "--questions", "3", "--responses-per-agent", "2",
                  "--max-new-tokens", "8", "--attempts", "1", "--completion-max-new-tokens", "8", "--epochs", "2",
                  "--batch-size", "2", "--learning-rate", "1e-3", "--output", str(sft_dir), "--device", "cpu")
    assert "saved the fine-tuned leader" in out and f"--init-from {sft_dir}" in out
    data = [json.loads(line) for line in open(sft_dir / "sft_data.jsonl")]
    assert len(open(sft_dir / "pool.jsonl").readlines()) == 3
    assert data and all(e["source"] in ("model", "template") and e["prompt"].endswith("<think>") for e in data)
    assert all(leader_reward(e["completion"], e["answer"], e["kind"], strict_format=True) == 1.0 for e in data)
    log = [json.loads(line) for line in open(sft_dir / "training_log.jsonl")]
    assert [h["step"] for h in log] == list(range(2 * math.ceil(len(data) / 2)))    # one line per step
    assert all(h["completion_tokens"] > 0 and math.isfinite(h["loss"]) for h in log)
    tuned, start = llm.load_llm(str(sft_dir), device="cpu", fresh=True), llm.load_llm(tiny_model_dir, device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(tuned.model.parameters(), start.model.parameters()))
    out = run_cli("mlpo.py", "train", "--init-from", str(sft_dir), "--model", tiny_model_dir, "--questions", "2",
                  "--steps", "1", "--group-size", "2", "--max-new-tokens", "8", "--responses-per-agent", "2",
                  "--easy-threshold", "1.01", "--kl-coef", "0.1", "--output", str(tmp_path / "mlpo"), "--device", "cpu")
    assert f"starting leader: {sft_dir}" in out and "saved the trained leader" in out
    trained = llm.load_llm(str(tmp_path / "mlpo"), device="cpu")
    assert trained.sample(trained.chat("hi"), 1, max_new_tokens=4) is not None


def test_mlpo_sft_help_and_bad_input_get_one_line(tiny_model_dir, tmp_path):
    assert "--completion-source" in run_cli("mlpo.py", "sft", "--help")          # no model is loaded for --help
    tiny = ["--model", tiny_model_dir, "--device", "cpu", "--questions", "2", "--responses-per-agent", "1",
            "--max-new-tokens", "4", "--attempts", "1", "--completion-max-new-tokens", "4"]
    cases = [(["sft", "--epochs", "0"], "--epochs"), (["sft", "--questions", "0"], "--questions"),
             (["sft", "--batch-size", "0"], "--batch-size"), (["sft", "--completion-source", "both"], "one of"),
             (["train", "--steps", "0"], "--steps"), (["train", "--init-from", str(tmp_path / "no")], "folder"),
             (["sft", "--completion-source", "model", *tiny], "no backtracking example")]   # the random model
    for args, says in cases:
        bad = subprocess.run([sys.executable, "mlpo.py", *args, "--output", str(tmp_path / "out")], cwd=HERE,
                             capture_output=True, text=True, timeout=600)
        last = bad.stderr.strip().splitlines()[-1]
        assert bad.returncode != 0 and "Traceback" not in bad.stderr, (args, bad.stderr[-2000:])
        assert last.startswith("error: ") and says in last, (args, last)


def test_the_embedded_gguf_model_saves_and_reloads(tmp_path):
    """A leader trained from the embedded GGUF model must be savable (transformers marks GGUF models as
    quantised and refuses save_pretrained unless llm.py clears the mark)."""
    model = llm.load_llm(llm.EMBEDDED_ALIAS, device="cpu", fresh=True)
    model.model.save_pretrained(str(tmp_path))
    model.tokenizer.save_pretrained(str(tmp_path))
    again = llm.load_llm(str(tmp_path), device="cpu")
    prompt = model.chat("What is 2 + 3?")
    assert model.sample(prompt, 1, max_new_tokens=12) == again.sample(prompt, 1, max_new_tokens=12)


# ---------------------------------------------------------------- issue 13: bad input gets one line, before loading

ENTRY_POINTS = {"evaluate.py": evaluate.main, "align.py": align.main, "mcts.py": mcts.main, "mlpo.py": mlpo.main}
BAD_INPUT = [  # (entry point, arguments, what its one line must say)
    ("evaluate.py", ["--limit", "0"], "--limit must be at least 1 (got 0)"),
    ("evaluate.py", ["--limit", "-1"], "--limit must be at least 1 (got -1)"),
    ("evaluate.py", ["--dtype", "nonsense"], "--dtype must be one of float32, bfloat16, float16 (got 'nonsense')"),
    ("evaluate.py", ["--device", "nonsense"], "--device 'nonsense' is not a device"),
    ("evaluate.py", ["--device", "cuda:99"], "--device cuda:99"),
    ("evaluate.py", ["--eta", "-1"], "--eta must be positive (got -1.0)"),
    ("evaluate.py", ["--max-rounds", "0"], "--max-rounds must be at least 1 (got 0)"),
    ("evaluate.py", ["--rollouts", "0"], "--rollouts must be at least 1 (got 0)"),
    ("evaluate.py", ["--dataset", "math500", "--split", "train"], "--split must be one of test for this dataset (got 'train')"),
    ("evaluate.py", ["--sc-samples", "0"], "--sc-samples must be at least 1 (got 0)"),
    ("evaluate.py", ["--leader-rounds", "0"], "--leader-rounds must be at least 1 (got 0)"),
    ("evaluate.py", ["--principal-mode", "nonsense"], "--principal-mode must be one of score, listwise"),
    ("evaluate.py", ["--rule", "nonsense"], "--rule must be one of product, product01"),
    ("evaluate.py", ["--principal-tau", "-1"], "--principal-tau must be at least 0 (got -1.0)"),
    ("evaluate.py", ["--principal-tau", "nan"], "--principal-tau must be at least 0 (got nan)"),
    ("evaluate.py", ["--methods", "cot,cot"], "listed twice"),
    ("evaluate.py", ["--methods", "cot,nope"], "unknown method"),
    ("evaluate.py", ["--methods", "vote@some/model"], "vote@some/model: vote uses neither a principal nor a leader"),
    ("evaluate.py", ["--dataset", "nope"], "--dataset must be one of"),
    ("evaluate.py", ["--preset", "huge"], "--preset must be one of tiny, paper"),
    ("evaluate.py", ["--resume", "--overwrite"], "pass one of them"),
    ("evaluate.py", ["--data-dir", "/no/such/folder"], "--data-dir /no/such/folder: no such folder"),
    ("evaluate.py", ["--model", "/no/such/path"], "model folder '/no/such/path' does not exist"),
    ("evaluate.py", ["--methods", "leader@./no/such/leader"], "'./no/such/leader' does not exist"),
    ("align.py", ["--question", ""], "--question is empty"),
    ("align.py", ["--question", "  "], "--question is empty"),
    ("align.py", ["--kind", "nonsense"], "--kind must be one of number, math, choice, text"),
    ("align.py", ["--eta", "0"], "--eta must be positive"),
    ("align.py", ["--principal-tau", "-0.5"], "--principal-tau must be at least 0"),
    ("align.py", ["--simulate", "--seed", "-1"], "--seed must be at least 0 (got -1)"),
    ("align.py", ["--device", "nonsense"], "is not a device"),
    ("align.py", ["--model", "/no/such/path"], "does not exist"),
    ("mcts.py", ["--question", ""], "--question is empty"),
    ("mcts.py", ["--rollouts", "0"], "--rollouts must be at least 1 (got 0)"),
    ("mcts.py", ["--root-children", "0"], "--root-children must be at least 1 (got 0)"),
    ("mcts.py", ["--model", "../no/such/path"], "does not exist"),
    ("mlpo.py", ["train", "--group-size", "0"], "--group-size must be at least 1 (got 0)"),
    ("mlpo.py", ["train", "--steps", "-1"], "--steps must be at least 1 (got -1)"),
    ("mlpo.py", ["train", "--questions", "0"], "--questions must be at least 1 (got 0)"),
    ("mlpo.py", ["train", "--temperature", "0"], "--temperature must be positive"),
    ("mlpo.py", ["train", "--device", "nonsense"], "is not a device"),
    ("mlpo.py", ["train", "--model", "/no/such/path"], "does not exist"),
    ("mlpo.py", ["sft", "--learning-rate", "0"], "--learning-rate must be positive"),
    ("mlpo.py", ["train", "--dtype", "float64"], "--dtype must be one of float32, bfloat16, float16 (got 'float64')"),
    ("mlpo.py", ["train", "--output", os.path.join(HERE, "README.md")], "README.md is a file; the trained leader is"),
    ("mlpo.py", ["sft", "--output", os.path.join(HERE, "README.md")], "README.md is a file"),
] + ([("evaluate.py", ["--device", "cuda"], "--device cuda: no GPU is visible here"),
      ("mlpo.py", ["train", "--device", "cuda"], "no GPU is visible here")] if not torch.cuda.is_available() else [])


@pytest.fixture
def nothing_loads(monkeypatch):
    """Any model, tokenizer or dataset loaded, or any connection opened, fails the test."""
    import transformers

    def refuse(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} was loaded")
        return fail
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse("a model"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse("a tokenizer"))
    monkeypatch.setattr(evaluate, "load_problems", refuse("a dataset"))
    monkeypatch.setattr(mlpo, "load_problems", refuse("a dataset"))
    monkeypatch.setattr("socket.socket.connect", refuse("a connection"))


def one_line_error(entry_point, argv) -> str:
    with pytest.raises(SystemExit) as exit:
        entry_point(argv)
    message = str(exit.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("script, args, says", BAD_INPUT, ids=[" ".join([s, *a]) for s, a, _ in BAD_INPUT])
def test_bad_input_gets_one_line_before_any_model_or_data(script, args, says, nothing_loads):
    assert says in one_line_error(ENTRY_POINTS[script], args)


def test_bad_input_on_the_command_line_is_one_line_on_stderr_in_seconds():
    cases = [["evaluate.py", "--limit", "0"], ["align.py", "--kind", "nonsense"], ["mcts.py", "--rollouts", "0"],
             ["mlpo.py", "train", "--group-size", "0"], ["llm.py", "--device", "nonsense"]]
    cases += [["evaluate.py", "--device", "cuda"]] if not torch.cuda.is_available() else []
    for args in cases:
        start = time.perf_counter()
        bad = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=120)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (args, bad.stderr)
        assert time.perf_counter() - start < 60, args       # an import, a check: no model, no data


def test_empty_data_files_and_null_answers_name_the_file_and_line(tmp_path):
    def write(relative, text):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    empty = write("gsm8k/test.jsonl", "\n")
    with pytest.raises(DataError, match=f"no problems in {re.escape(empty)}"):
        load_problems("gsm8k", str(tmp_path))
    write("gsm8k/test.jsonl", '{"question": "q", "answer": "1 #### 1"}\n{"question": "q", "answer": null}\n')
    with pytest.raises(DataError, match=r"gsm8k/test.jsonl, line 2: field\(s\) \['answer'\] hold \[None\]"):
        load_problems("gsm8k", str(tmp_path))
    write("gsm_hard/gsmhardv2.jsonl", '{"input": "q", "target": 3.0}\n\n{"input": "q", "target": null}\n')
    with pytest.raises(DataError, match=r"gsmhardv2.jsonl, line 3: field\(s\) \['target'\]"):
        load_problems("gsm_hard", str(tmp_path))
    write("math500/test.jsonl", '{"problem": "", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"math500/test.jsonl, line 1: field\(s\) \['problem'\] hold \[''\]"):
        load_problems("math500", str(tmp_path))
    write("bbh/navigate.json", '{"examples": []}')
    with pytest.raises(DataError, match=r"no problems in .*bbh/navigate.json"):
        load_problems("bbh:navigate", str(tmp_path))
    write("mmlu/dev/anatomy_dev.csv", "q,a,b,c,d,A\n")
    write("mmlu/test/anatomy_test.csv", "")
    with pytest.raises(DataError, match=r"no problems in .*mmlu/test/anatomy_test.csv"):
        load_problems("mmlu:anatomy", str(tmp_path))
    for limit in (0, -1):
        with pytest.raises(DataError, match=f"limit must be at least 1 \\(got {limit}\\)"):
            load_problems("arith", limit=limit)
    assert len(load_problems("arith", limit=1)) == 1


def test_bytes_that_are_not_utf8_numeric_answers_and_repeated_ids_in_data_files(tmp_path):
    def write(relative, data: bytes):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    write("gsm8k/test.jsonl", b'{"question": "q", "answer": "1 #### 1"}\n{"question": "caf\xe9", "answer": "#### 2"}\n')
    with pytest.raises(DataError, match=r"gsm8k/test.jsonl, line 2: not UTF-8"):
        load_problems("gsm8k", str(tmp_path))
    write("bbh/navigate.json", b'{"examples": [{"input": "\xff", "target": "Yes"}]}')
    with pytest.raises(DataError, match=r"bbh/navigate.json, line 1: not UTF-8"):
        load_problems("bbh:navigate", str(tmp_path))
    write("math500/test.jsonl", b'{"problem": "1 + 1?", "answer": 2, "unique_id": "a"}\n')
    (problem,) = load_problems("math500", str(tmp_path))          # a number is a gold answer, kept as text
    assert problem["answer"] == "2" and is_correct("2", problem["answer"], "math")
    write("math500/test.jsonl", b'{"problem": "1 + 1?", "answer": "2", "unique_id": "a"}\n'
                                b'{"problem": "2 + 2?", "answer": "4", "unique_id": "a"}\n')
    with pytest.raises(DataError, match=r"math500: problem id\(s\) \['a'\] appear more than once"):
        load_problems("math500", str(tmp_path))
    write("bbh/navigate.json", b'{"examples": [{"input": "Turn left. Do you return?", "target": "No"}]}')
    write("bbh/cot-prompts/navigate.txt", b"canary\r\n-----\r\nNavigate.\r\n\r\nQ: Turn around.\r\nOptions:\r\n- Yes"
                                          b"\r\n\r\nA: Let's think step by step. So the answer is Yes.\r\n")
    (problem,) = load_problems("bbh:navigate", str(tmp_path))     # Windows line ends read as a text file reads them
    assert problem["examples"] and not any("\r" in q or "\r" in a for q, a in problem["examples"])
    line = '{"question": "caf\u2028e", "answer": "#### 2"}\r\n'   # a JSON string may hold U+2028; CRLF ends lines
    write("gsm8k/test.jsonl", line.encode() * 2)
    assert [p["question"] for p in load_problems("gsm8k", str(tmp_path))] == ["caf\u2028e"] * 2


def test_an_empty_data_file_stops_evaluate_before_any_model(tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text("")
    import transformers
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: 1 / 0)
    message = one_line_error(evaluate.main, ["--dataset", "gsm8k", "--data-dir", str(tmp_path), "--output",
                                             str(tmp_path / "r.jsonl")])
    assert "no problems in" in message and "gsm8k/test.jsonl" in message


@pytest.mark.parametrize("argv", [["evaluate.py"], ["align.py"], ["mcts.py"], ["mlpo.py", "train"], ["mlpo.py", "sft"]])
def test_help_says_each_default_once(argv, capsys):
    with pytest.raises(SystemExit):
        ENTRY_POINTS[argv[0]](argv[1:] + ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    twice = re.search(r".{0,60}\(default[^()]*\) \(default", text)
    assert twice is None, twice
    assert text.count("(default: ") >= 5


def test_a_model_the_hub_would_have_to_serve_fails_in_seconds_offline(monkeypatch):
    import huggingface_hub.constants
    for offline, endpoint, says in [(True, "https://huggingface.co", "HF_HUB_OFFLINE is set"),
                                    (False, "http://127.0.0.1:9", "the hub cannot be reached (127.0.0.1:9")]:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        start = time.perf_counter()
        with pytest.raises(llm.ModelLoadError, match=re.escape(says)) as error:
            llm.load_llm("nosuchorg/nosuchmodel", device="cpu")
        assert time.perf_counter() - start < 10 and "\n" not in str(error.value)
        assert "not in the local Hugging Face cache" in str(error.value)


def test_evaluate_with_an_unreachable_hub_stops_in_seconds(tiny_model_dir, tmp_path):
    """The issue's leader-solo@nosuchmodel took ~45 s of hub retries; the other roles load the tiny model."""
    start = time.perf_counter()
    bad = subprocess.run([sys.executable, "evaluate.py", "--dataset", "arith", "--methods", "leader-solo@nosuchmodel",
                          "--limit", "1", "--model", tiny_model_dir, "--output", str(tmp_path / "r.jsonl"),
                          "--no-progress"], cwd=HERE, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    seconds = time.perf_counter() - start
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert last.startswith("error: could not load model 'nosuchmodel'") and "cannot be reached" in last, last
    assert seconds < 30, seconds


# ---------------------------------------------------------------- issue 13: the paper preset, without a GPU

PAPER_ARCHITECTURES = [a for a in TINY_ARCHITECTURES if a != "llama"]
_TINY_MODELS: dict = {}


def tiny_llm_of(architecture: str, tmp_path_factory, **settings):
    """The tiny random model of an architecture, built once per session and loaded through llm.py."""
    key = (architecture, tuple(sorted(settings.items())))
    if key not in _TINY_MODELS:
        folder = make_tiny_model(str(tmp_path_factory.mktemp(f"tiny-{architecture}")), architecture, **settings)
        _TINY_MODELS[key] = llm.load_llm(folder, device="cpu")
    return _TINY_MODELS[key]


def greedy_three_ways(model, suffixes=("", "Step 1", "The answer is 7.\nStep 1: 12 - 5"), max_new_tokens=12):
    """Greedy continuations through the shared-prefix cache, left-padded batches, and one sequence per call."""
    prompt = model.chat("Tom has 3 apples and buys 5 more.", examples=[("Is this correct?", "Yes")])
    cached = model.generate(prompt, list(suffixes), 2, max_new_tokens=max_new_tokens)
    plain = model.generate(prompt, list(suffixes), 2, max_new_tokens=max_new_tokens, use_prefix_cache=False)
    one_by_one = model.generate(prompt, list(suffixes), 1, max_new_tokens=max_new_tokens, use_prefix_cache=False,
                                max_batch_size=1)
    longest = len(model.encode(prompt)) + max(len(model.encode(s)) for s in suffixes) * 2 + max_new_tokens
    return cached, plain, one_by_one, longest


@pytest.mark.parametrize("architecture", PAPER_ARCHITECTURES)
def test_cached_prefix_greedy_equals_uncached_on_the_paper_architectures(architecture, tmp_path_factory):
    model = tiny_llm_of(architecture, tmp_path_factory)
    assert type(model.model).__name__ == TINY_ARCHITECTURES[architecture][1]
    cached, plain, one_by_one, longest = greedy_three_ways(model)
    assert longest < TINY_WINDOW             # every row, pads included, inside the sliding window
    assert cached == plain
    assert [texts[0] for texts in cached] == [texts[0] for texts in one_by_one]
    assert len({texts[0] for texts in cached}) == 3


@pytest.mark.parametrize("architecture", ["mistral", "ministral", "phi3"])
def test_past_a_sliding_window_a_row_without_pads_still_equals_uncached(architecture, tmp_path_factory):
    model = tiny_llm_of(architecture, tmp_path_factory, sliding_window=16)
    for suffix in ("", "Step 1", "The answer is 7.\nStep 1: 12 - 5"):
        cached, plain, _, longest = greedy_three_ways(model, (suffix,))
        assert longest > 16 and cached == plain


@pytest.mark.parametrize("architecture", ["mistral", "ministral", "phi3"])
def test_past_a_sliding_window_padded_rows_equal_uncached(architecture, tmp_path_factory):
    """Rows padded to a common length, longer than the window: LLM.generate falls back to left padding."""
    model = tiny_llm_of(architecture, tmp_path_factory, sliding_window=16)
    cached, plain, _, _ = greedy_three_ways(model)
    assert cached == plain


@pytest.mark.parametrize("architecture, window", [(a, None) for a in PAPER_ARCHITECTURES] +
                         [(a, 16) for a in ("mistral", "ministral", "phi3")])
def test_the_engine_writes_what_one_sequence_at_a_time_writes_on_the_paper_architectures(architecture, window,
                                                                                          tmp_path_factory):
    """The lockstep engine (arena attention, sliding windows by position) against LLM.generate one by one."""
    model = tiny_llm_of(architecture, tmp_path_factory, **({"sliding_window": window} if window else {}))
    prompt = model.chat("Tom has 3 apples and buys 5 more.", examples=[("Is this correct?", "Yes")])
    suffixes = ("", "Step 1", "The answer is 7.\nStep 1: 12 - 5")

    def program(suffix):
        [[generated]] = yield [Request(model, prompt + suffix, max_new_tokens=12)]
        return generated.text
    engine_texts = run_programs([program(s) for s in suffixes], arenas=[0, 0, 0])
    one_by_one = [model.generate(prompt, [s], 1, max_new_tokens=12, use_prefix_cache=False, max_batch_size=1)[0][0]
                  for s in suffixes]
    assert engine_texts == one_by_one
    if window:
        assert len(model.encode(prompt)) + 12 > window             # the window really cuts


@pytest.mark.parametrize("architecture", PAPER_ARCHITECTURES)
def test_one_search_on_each_paper_architecture_is_seeded(architecture, tmp_path_factory):
    model = tiny_llm_of(architecture, tmp_path_factory)
    agent, config = Agent(architecture, model, 1.0), SearchConfig(rollouts=3, step_tokens=4, completion_tokens=6)
    first = search(agent, "Tom has 3 apples and buys 5 more. How many?", "number", config, seed=1)
    again = search(agent, "Tom has 3 apples and buys 5 more. How many?", "number", config, seed=1)
    assert [(s.answer, s.trace) for s in first.samples] == [(s.answer, s.trace) for s in again.samples]
    assert len(first.samples) >= 1 and first.cost["generated_tokens"] > 0


def test_a_strict_chat_template_gets_no_system_turn_and_strictly_alternating_turns(tmp_path):
    """Mistral-style templates raise on a system turn and on two turns of one role in a row: every prompt the
    project builds must pass through one, and a system text must reach the model in the first user turn."""
    from jinja2.exceptions import TemplateError
    strict = llm.load_llm(make_tiny_model(str(tmp_path), chat_template=STRICT_CHAT_TEMPLATE), device="cpu")
    with pytest.raises(TemplateError, match="alternate"):       # the template is as strict as real ones
        strict.tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                             tokenize=False)
    assert strict.chat("What is 2 + 3?", system="Be brief.") == "<|im_start|>[INST] Be brief.\n\nWhat is 2 + 3? [/INST]"
    assert strict.system_role is False
    assert strict.chat("q", system="S", examples=[("a", "b")]).startswith("<|im_start|>[INST] S\n\na [/INST]b")
    prompts = [Agent("a", strict).prompt("Tom has 3 apples.", kind) for kind in ("number", "math", "choice", "text")]
    prompts += [mlpo.leader_prompt(strict, "Tom has 3 apples.", ["7", "8", "9"]),
                mlpo.leader_prompt(strict, "Tom has 3 apples.", None),
                mlpo.backtrack_request(strict, "Tom has 3 apples.", {"team": ["7", "8"], "wrong": "8", "right": "7"})]
    assert all(p.count("[INST]") >= 2 for p in prompts)          # few-shot turns and the question, alternating
    for mode in ("score", "listwise"):                               # the principal's prompts
        order = rank_classes(strict, "Tom has 3 apples.", ["7", "8"], ["It is 7.", "It is 8."], mode, max_new_tokens=4)
        assert sorted(order.order) == [0, 1]
    assert strict.sample(prompts[0], 1, max_new_tokens=4) is not None
    with_system = llm.load_llm(make_tiny_model(str(tmp_path / "plain")), device="cpu")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in with_system.chat("q", system="Be brief.")


# [ours] The published config.json values of the paper preset's models (and the embedded one), from their hub pages.
PUBLISHED_CONFIGS = llm.MODEL_SHAPES


def test_known_parameter_counts_equal_models_built_from_the_published_configs():
    import transformers
    assert set(PUBLISHED_CONFIGS) == set(llm.KNOWN_PARAMETERS)
    for name, (config_class, values) in PUBLISHED_CONFIGS.items():
        with torch.device("meta"):                                    # shapes only: no memory, no time
            model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_class)(**values))
        assert sum(p.numel() for p in model.parameters()) == llm.KNOWN_PARAMETERS[name], name


def test_a_random_model_like_a_published_one_has_its_parameters_and_the_same_weights_for_the_same_seed(tiny_model_dir):
    # the benchmark's stand-in for a model that cannot be downloaded: the embedded shape, random weights
    model = llm.random_model_like(llm.EMBEDDED_HUB_ID, tokenizer_source=tiny_model_dir, device="cpu", dtype="float32")
    assert sum(p.numel() for p in model.model.parameters()) == llm.KNOWN_PARAMETERS[llm.EMBEDDED_HUB_ID]
    again = llm.random_model_like(llm.EMBEDDED_HUB_ID, tokenizer_source=tiny_model_dir, device="cpu",
                                  dtype="float32")
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model.model(ids).logits, again.model(ids).logits)     # seeded: the same weights twice


def test_the_benchmark_runs_its_three_paths_through_a_window_and_prints_its_ratios(tiny_llm, capsys):
    """mcts.benchmark on the tiny random model: 3 problems through a window of 2, the reference path on the first
    one only; the rates it returns are the ones its last line divides."""
    agents = [Agent(f"agent-{i}", tiny_llm, t) for i, t in enumerate((0.5, 1.0))]
    problems = load_problems("arith", limit=3)
    rates = mcts.benchmark(agents, problems, SearchConfig(rollouts=3, step_tokens=4, completion_tokens=6), seed=0,
                           bare_rows=4, reference_problems=1, in_flight=2)
    out = capsys.readouterr().out
    assert "engine (lockstep, 2 problems at once, all agents)" in out and "the first 1 problem(s) only" in out
    assert all(rate > 0 for rate in rates.values())
    assert out.strip().splitlines()[-1] == (f"engine/limit: {rates['engine'] / rates['limit']:.2f}  "
                                            f"engine/per-agent: {rates['engine'] / rates['per_agent']:.2f}")


def fake_hub_cache(cache, repo: str, shards: dict, present: list) -> None:
    """A Hugging Face cache entry for `repo`: config.json, a shard index, and the `present` shards, each a
    safetensors file holding one tensor of the given shape (a header alone: that is all the count reads)."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (cache / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        f"w{i}": shard for i, shard in enumerate(shards)}}))
    for shard in present:
        header = json.dumps({"w": {"dtype": "BF16", "shape": shards[shard], "data_offsets": [0, 0]}}).encode()
        (snapshot / shard).write_bytes(len(header).to_bytes(8, "little") + header)


def test_check_prints_every_role_its_size_and_the_cache_loading_and_downloading_nothing(
        tiny_model_dir, tiny_llm, tmp_path, monkeypatch, nothing_loads, capsys):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    fake_hub_cache(tmp_path, "Qwen/Qwen2.5-7B-Instruct", {"a.safetensors": [10, 10], "b.safetensors": [5]},
                   ["a.safetensors"])
    fake_hub_cache(tmp_path, "microsoft/Phi-3-mini-4k-instruct", {"a.safetensors": [3, 4], "b.safetensors": [5]},
                   ["a.safetensors", "b.safetensors"])
    assert evaluate.main(["--preset", "paper", "--check", "--dtype", "bfloat16"]) == []
    out = capsys.readouterr().out
    for role, name in [("agent-0 (T=0.7)", "mistralai/Ministral-8B-Instruct-2410"),
                       ("agent-1 (T=0.7)", "HuggingFaceH4/zephyr-7b-beta"),
                       ("principal", "Qwen/Qwen2.5-7B-Instruct"), ("leader", "Qwen/Qwen2.5-7B-Instruct")]:
        assert re.search(rf"{re.escape(role)} +{re.escape(name)}\n", out), role
    assert re.search(r"mistralai/Ministral-8B-Instruct-2410 +8\.02B +14\.94 GiB +not in the local cache", out)
    assert re.search(r"Qwen/Qwen2\.5-7B-Instruct +7\.62B +14\.19 GiB +partly in the local cache \(1 of 2", out)
    assert re.search(r"microsoft/Phi-3-mini-4k-instruct +17 +34 B +in the local cache", out)   # counted from files
    assert out.count("Qwen/Qwen2.5-7B-Instruct ") == 1                 # one backbone, two roles
    assert re.search(r"total +(\S+) +(\S+ \S+)", out).groups() == (
        llm.count_text(8_019_808_256 + 7_241_732_096 + 17 + 7_615_616_512),
        llm.bytes_text(2 * (8_019_808_256 + 7_241_732_096 + 17 + 7_615_616_512)))
    assert ("GPU cuda:0" in out) if torch.cuda.is_available() else ("GPU: no GPU here" in out)
    evaluate.main(["--check", "--model", tiny_model_dir])                # the tiny preset, one local backbone
    out = capsys.readouterr().out
    parameters = sum(p.numel() for p in tiny_llm.model.parameters())     # counted from the safetensors headers
    assert re.search(rf"{re.escape(tiny_model_dir)} +{llm.count_text(parameters)} +{llm.bytes_text(4 * parameters)} "
                     rf"+local folder", out)


def test_check_on_the_command_line_offline():
    out = run_cli("evaluate.py", "--preset", "paper", "--check", env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert "Ministral-8B-Instruct-2410" in out and "total" in out and "GPU" in out


def test_check_against_the_memory_of_a_gpu_and_the_devices_it_has(monkeypatch):
    """The GPU branch of --check and of the device check, on a stand-in for torch.cuda (one 80 GB GPU)."""
    import types
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(name="H100 stand-in", total_memory=80 * 10 ** 9))
    roles = [("principal", "Qwen/Qwen2.5-7B-Instruct"), ("agent", "microsoft/Phi-3-mini-4k-instruct")]
    out = llm.describe_models(roles)                                   # cuda and bf16: the defaults on a GPU
    weights = 2 * (7_615_616_512 + 3_821_079_552)
    assert "in bfloat16 (2 bytes a parameter)" in out
    assert f"GPU cuda:0 (H100 stand-in): {llm.bytes_text(80 * 10 ** 9)}; the weights take {weights / 8e10:.0%}" in out
    everything = roles + [("x", "mistralai/Ministral-8B-Instruct-2410"), ("y", "HuggingFaceH4/zephyr-7b-beta")]
    assert "the weights do not fit" in llm.describe_models(everything, dtype="float32")    # 107 GB
    llm.check_device_and_dtype("cuda:0", "bfloat16")
    with pytest.raises(llm.ConfigError, match=r"--device cuda:1: this machine has 1 GPU\(s\), cuda:0 to cuda:0"):
        llm.check_device_and_dtype("cuda:1")


def test_the_principal_mode_left_out_is_the_presets_and_a_named_one_is_kept():
    for preset in llm.PRESETS:
        assert align.with_preset_defaults(GameConfig(), preset).principal_mode == llm.PRESETS[preset]["principal_mode"]
        assert align.with_preset_defaults(GameConfig(principal_mode="listwise"), preset).principal_mode == "listwise"
    with pytest.raises(ValueError, match="principal_mode is unset"):   # a library caller is told, not guessed for
        align.principal_order_program(None, "q", "number", align.Pool(["1"], [None], []), GameConfig(), 0)


def test_resume_onto_records_made_with_other_settings_is_refused_saying_which(tmp_path, nothing_loads):
    path = tmp_path / "r.jsonl"
    written = evaluate.record_settings(EvalConfig(dataset="arith", max_new_tokens=16), SearchConfig(), GameConfig(),
                                       mlpo.LeaderConfig())
    path.write_text(json.dumps({"settings": written}) + "\n")
    message = one_line_error(evaluate.main, ["--dataset", "arith", "--max-new-tokens", "64", "--output", str(path),
                                             "--resume"])
    assert "max_new_tokens=16 there, 64 here" in message and "dataset" not in message
    message = one_line_error(evaluate.main, ["--dataset", "gsm8k", "--max-new-tokens", "16", "--output", str(path),
                                             "--resume"])
    assert "dataset='arith' there, 'gsm8k' here" in message
    path.write_text(json.dumps({"problem_id": "arith-test-0-0", "method": "cot"}) + "\n")    # an old file
    assert "no settings line" in one_line_error(evaluate.main, ["--dataset", "arith", "--output", str(path), "--resume"])
