"""
utility.py -- final answers, when two answers are the same, and what an answer is worth to an agent.

ALIGN (arXiv 2602.00127): steps 1-2 of the loop in README.md:
    # [paper] Internal utility U^i(a): self-consistency, the empirical frequency of answer a among
    #         agent i's K samples.
    # [ours]  Samples are grouped into answer classes by `same_answer`; each class keeps one representative
    #         trace (its highest-reward one); U^i(a) = (agent i's samples in class a) / (agent i's samples).

One function, `same_answer`, decides equivalence everywhere: majority votes, utilities, the principal's
classes and the grader. A forker who wants a different notion of "same answer" (code, free text) edits it
and `extract_answer`, and everything else follows.

Run `python utility.py "The answer is $1,000."` to see what is extracted.
"""
from __future__ import annotations

import dataclasses
import math
import re
import sys

# ---------------------------------------------------------------- extraction

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}) in text, braces matched; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[brace + 1:i].strip()
    return None  # unbalanced: the model was cut off


def _clean_number(token: str) -> str | None:
    token = token.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(token)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def explicit_answer(text: str, kind: str = "number") -> str | None:
    """The answer the text *states* (`#### N`, `The answer is N`, `\\boxed{N}`), or None.

    MCTS uses this to decide that a step ends a solution; `extract_answer` adds the last-number fallback.
    """
    boxed = last_boxed(text)
    if kind == "math":
        if boxed is not None:
            return boxed
        match = re.findall(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s*)?(?:\n|$)", text, flags=re.I)
        return match[-1].strip() if match else None
    stated = [boxed] if boxed is not None else re.findall(r"(?:####|answer is)[:\s]*([^\n]+)", text, flags=re.I)
    for candidate in reversed(stated):                                  # the last statement wins
        numbers = re.findall(_NUMBER, candidate.replace("$", ""))
        if numbers:
            return _clean_number(numbers[0])
    return None


def extract_answer(text: str, kind: str = "number") -> str | None:
    """The final answer of a model's solution text, normalised; None when there is none.

    kind="number" (GSM8K, GSM-Hard, arith): `\\boxed{N}`, then `#### N`, then "the answer is N", then the
    last number in the text. Commas, `$`, units and a trailing period are dropped.
    kind="math" (MATH): the last `\\boxed{...}` with its braces matched, else "the answer is ...".
    """
    stated = explicit_answer(text, kind)
    if stated is not None or kind == "math":
        return normalize_math(stated) if (kind == "math" and stated is not None) else stated
    numbers = re.findall(_NUMBER, text)
    return _clean_number(numbers[-1]) if numbers else None


# ---------------------------------------------------------------- equivalence

def normalize_math(answer: str) -> str:
    """A canonical string for a LaTeX answer: enough for MATH-style answers, not a CAS."""
    s = answer.strip().strip("$").strip()
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)                    # \text{cm} -> cm
    s = re.sub(r"\\(?:mathrm|mathbf|textbf)\{([^}]*)\}", r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("\\$", "").replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)                # \frac12 -> \frac{1}{2}
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s)                      # 1,000 -> 1000
    # a trailing unit word after a number ("5cm", "12dollars") is not part of the answer
    unit = re.fullmatch(r"(-?[\d.]+)(?:[a-zA-Z]+\^?\d?)", s)
    if unit:
        s = unit.group(1)
    s = s.rstrip(".")
    if s.startswith("x=") or s.startswith("y="):                        # "x=3" answers "3"
        s = s[2:]
    return s


def _as_number(answer: str) -> float | None:
    """A number for a plain or simple-fraction answer (`3`, `-2.5`, `\\frac{1}{2}`, `-\\frac{3}{4}`, `1/2`)."""
    s = answer.replace(",", "").replace("$", "").strip()
    match = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s) or re.fullmatch(r"(-?)([\d.]+)/([\d.]+)", s)
    try:
        if match:
            value = float(match.group(2)) / float(match.group(3))
            return -value if match.group(1) else value
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def same_answer(a: str | None, b: str | None, rel_tol: float = 1e-4, abs_tol: float = 1e-3) -> bool:
    """Whether two extracted answers are the same answer. A missing answer equals nothing, itself included.

    # [ours] Numbers match within rel_tol 1e-4 or abs_tol 1e-3: GSM-Hard's targets are floats (some
    #        negative, some ~1e13) and a model prints them rounded.
    """
    if a is None or b is None:
        return False
    a, b = str(a), str(b)
    x, y = _as_number(normalize_math(a)), _as_number(normalize_math(b))
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol)
    return normalize_math(a) == normalize_math(b)


def is_correct(prediction: str | None, gold: str) -> bool:
    """The grader: the only place a gold answer is read."""
    return same_answer(prediction, gold)


# ---------------------------------------------------------------- classes and self-consistency

@dataclasses.dataclass
class Sample:
    """One complete solution: its answer (None if none could be read), its text, its search reward."""
    answer: str | None
    trace: str
    reward: float = 0.0
    agent: int = 0


@dataclasses.dataclass
class AnswerClass:
    """Samples that give the same answer, with the representative shown to the principal."""
    answer: str
    samples: list
    utility: float = 0.0          # U^i(a): share of the agent's samples in this class

    @property
    def representative(self) -> Sample:
        # [ours] the representative trace is the class's highest-reward sample (first one on ties)
        return max(self.samples, key=lambda s: s.reward)


def group_into_classes(samples: list[Sample]) -> list[AnswerClass]:
    """Answer classes of samples, by `same_answer`; samples with no answer join no class.

    Each class's utility is its share of *all* samples (answerless ones count in the denominator: a
    sample that reached no answer is a vote for nothing). Classes are ordered by first appearance.
    """
    classes: list[AnswerClass] = []
    for sample in samples:
        if sample.answer is None:
            continue
        home = next((c for c in classes if same_answer(c.answer, sample.answer)), None)
        if home is None:
            classes.append(AnswerClass(sample.answer, [sample]))
        else:
            home.samples.append(sample)
    for c in classes:
        c.utility = self_consistency_utility(len(c.samples), len(samples))
    return classes


def self_consistency_utility(count_in_class: int, total_samples: int) -> float:
    # [paper] U^i(a) = the empirical frequency of a among the agent's samples.
    return count_in_class / total_samples if total_samples else 0.0


def majority_answer(samples: list[Sample]) -> str | None:
    """The most frequent answer (the earliest class wins ties); None if no sample has an answer."""
    classes = group_into_classes(samples)
    return max(classes, key=lambda c: len(c.samples)).answer if classes else None


if __name__ == "__main__":
    for text in sys.argv[1:] or ["Janet makes $1,018.50 a day. The answer is $1,018.50.", "\\boxed{\\dfrac{1}{2}}"]:
        print(f"{text!r:60} number: {extract_answer(text)!r:12} math: {extract_answer(text, 'math')!r}")
