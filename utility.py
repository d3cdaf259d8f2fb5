"""
utility.py -- final answers, when two answers are the same, and what an answer is worth to an agent.

ALIGN (arXiv 2602.00127): steps 1-2 of the loop in README.md:
    # [paper] Internal utility U^i(a): self-consistency, the empirical frequency of answer a among
    #         agent i's K samples.
    # [ours]  Samples are grouped into answer classes by `same_answer`; each class keeps one representative
    #         trace (its highest-reward one); U^i(a) = (agent i's samples in class a) / (agent i's samples).

A problem's `kind` says how its answers are read (`extract_answer(text, kind)`, all [ours]):
    number  GSM8K, GSM-Hard, arith, BBH's integer tasks: the last stated `\\boxed{N}`, `#### N` or "the answer
            is N", else the last number. Canonical form: no commas, no `.0` on integers, decimals as printed.
    math    MATH: the last `\\boxed{...}` (braces matched), else the last "the answer is $X$" or `#### X`;
            canonical form: `normalize_math`.
    choice  BBH multiple choice, MMLU: an option letter, from "the answer is (B)", "answer: C", `\\boxed{C}`,
            else a letter alone at the end, else the last "(X)". Canonical form: the letter, `B`.
    text    BBH's free-form targets (True/False, yes/no, valid/invalid, word lists, Dyck sequences): the last
            "the answer is X", else `\\boxed{X}`, else the last line; quotes, bold and a final period dropped.

One function, `same_answer`, decides equivalence everywhere: majority votes, utilities, the principal's
classes and the grader. It needs no kind: it compares canonical forms, and its rules (numbers by value, `(B)`
is `B`, truth words in any case) are safe for every kind. A forker who wants a different notion of "same
answer" (code, free text) edits it and `extract_answer`, and everything else follows. `is_correct(prediction,
gold, kind)` reads the gold by its kind's rules first (`canonical_answer`), so BBH's `(B)` and MMLU's `B` agree.

Run `python utility.py "The answer is $1,000."` to see what every kind extracts.
"""
from __future__ import annotations

import dataclasses
import re
import sys
from decimal import Decimal
from fractions import Fraction

KINDS = ("number", "math", "choice", "text")

# ---------------------------------------------------------------- reading numbers

_NUMBER = re.compile(r"""
    (?<![\d,.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?  # 1,018.50 or 1018.50, not the tail of a longer number
    (?!\d|,\d)                                         # [ours] "1,22" is no number: not 122, not 1, not 22
    (?:[eE][-+]?\d+|\s*(?:\\times|×|\\cdot)\s*10\^\{?[-+]?\d+\}?)?  # 2.0107e-06, 9.28 \times 10^{12}
    | (?<![\d.])-?\.\d+(?:[eE][-+]?\d+)?               # .35625
""", re.X)
_PLAIN_NUMBER = re.compile(
    r"([-+]?)(\d*)(?:\.(\d*))?(?:[eE]([-+]?\d+)|(?:\\times|×|\\cdot)10\^\{?([-+]?\d+)\}?)?")


def _clean_number(token: str) -> str | None:
    """A number token, canonical: `$1,018.50` -> `1018.50`, `18.00` -> `18`, `2.0107e-06` -> `0.0000020107`."""
    token = re.sub(r"[\s,$]", "", token.replace("−", "-")).rstrip(".")
    match = _PLAIN_NUMBER.fullmatch(token)
    if not match or not (match.group(2) or match.group(3)):
        return None
    exponent = int(match.group(4) or match.group(5) or 0)
    if abs(exponent) > 100:                            # [ours] no benchmark answer is that big; keeps ints small
        return None
    mantissa = f"{match.group(1)}{match.group(2) or '0'}" + (f".{match.group(3)}" if match.group(3) else "")
    value = Decimal(f"{mantissa}e{exponent}")          # Decimal(str) is exact: no float rounding of 17-digit numbers
    if value == value.to_integral_value():
        return str(int(value))                         # [ours] an integer-valued decimal is the integer: 18.00 == 18
    return format(value, "f")                          # the digits as printed, so their precision is kept


@dataclasses.dataclass(frozen=True)
class Number:
    """A numeric answer: its exact value, and for a decimal the unit of its last printed digit."""
    value: Fraction
    last_place: Fraction | None = None                 # None: an exact answer (integer or fraction)
    digits: int = 0                                    # significant digits printed


def parse_number(answer: str) -> Number | None:
    """A plain number (`-3`, `2.5`, `2.0107e-06`, `9.28\\times10^{12}`) or a fraction (`\\frac{1}{2}`, `-3/4`)."""
    s = answer.replace("$", "").strip()
    fraction = (re.fullmatch(r"([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}", s)
                or re.fullmatch(r"([-+]?)\(?([-+]?\d+)/([-+]?\d+)\)?", s))
    if fraction:
        if int(fraction.group(3)) == 0:
            return None
        value = Fraction(int(fraction.group(2)), int(fraction.group(3)))
        return Number(-value if fraction.group(1) == "-" else value)
    match = _PLAIN_NUMBER.fullmatch(s)
    if not match or not (match.group(2) or match.group(3)):
        return None
    sign, whole, decimals, exponent_e, exponent_times = match.groups()
    exponent = int(exponent_e or exponent_times or 0)
    if abs(exponent) > 100:
        return None
    printed = (whole or "") + (decimals or "")
    value = Fraction(int(printed), 10 ** len(decimals or "")) * Fraction(10) ** exponent
    value = -value if sign == "-" else value
    if decimals is None and exponent_e is None and exponent_times is None:
        return Number(value)                           # an integer is exact
    return Number(value, last_place=Fraction(10) ** (exponent - len(decimals or "")), digits=len(printed.lstrip("0")))


def numbers_match(x: Number, y: Number) -> bool:
    """Whether two numeric answers are the same number, given the digits each one carries."""
    if x.value == y.value:
        return True
    decimals = [n for n in (x, y) if n.last_place is not None]
    if not decimals:
        return False                                   # [ours] exact answers compare exactly: 1/99 != 1/100
    gap = abs(x.value - y.value)
    # [ours] Binary-float noise: GSM-Hard's targets are Python floats (55938720.00000001, 0.30000000000000004),
    #        so a decimal may differ from an answer by 1e-12 of its size. Integers never get this slack.
    if gap <= Fraction(1, 10 ** 12) * max(abs(x.value), abs(y.value)):
        return True
    # [ours] A decimal stands for every number that rounds to it: 2.33 matches 2.3333333 (within half a unit of
    #        its last printed place), if it carries at least 3 significant digits: 2.3 != 7/3, 1.3 != 1.25,
    #        0.0009 != 2.0107e-06, 0.0 != 1e-6. The coarser of the two decimals sets the tolerance.
    coarse = max(decimals, key=lambda n: n.last_place)
    return coarse.digits >= 3 and gap <= coarse.last_place / 2


# ---------------------------------------------------------------- LaTeX answers

_UNIT_WORDS = (r"cm|mm|km|m|meters?|in|inch(?:es)?|ft|feet|foot|yards?|miles?|units?|sq|square|dollars?|cents?|"
               r"degrees?|hours?|minutes?|seconds?|days?|weeks?|years?|mph|kg|g|grams?|pounds?|lbs?|ounces?|oz|"
               r"liters?|ml|percent")
_TEXT_COMMANDS = r"\\(?:text|textbf|textrm|textnormal|mathrm|mathbf|mbox)\s*\{([^{}]*)\}"
_TEXT_UNIT = r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d\}?)?$"   # 10\text{ cm}^2
_BOLD = re.compile(r"(?<![\w*])\*\*(\S[^*\n]*?)\*\*(?![\w*])")     # **73**, markdown bold; 2**3 is no bold
_BRACED_COMMAND = re.compile(r"\\(frac|sqrt)(?![a-zA-Z])")


def _next_argument(s: str, i: int) -> tuple[str | None, int]:
    """The next TeX argument from s[i]: a braced group's contents, a control word, or one character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s) or s[i] == "}":
        return None, i
    if s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                return s[i + 1:j], j + 1
        return None, i                                 # unbalanced: leave the rest as it is
    token = re.compile(r"\\[a-zA-Z]+|\\.|.").match(s, i)
    return token.group(0), token.end()


def _brace_arguments(s: str) -> str:
    """Braces around bare arguments: `\\frac59` -> `\\frac{5}{9}`, `\\sqrt3` -> `\\sqrt{3}`, `\\frac{270}7` too.

    [ours] A bare argument is one token (a character or a control word), as TeX reads it.
    """
    out, i = [], 0
    while i < len(s):
        command = _BRACED_COMMAND.match(s, i)
        if not command:
            out.append(s[i])
            i += 1
            continue
        out.append(command.group(0))
        i = command.end()
        if command.group(1) == "sqrt" and s.startswith("[", i) and "]" in s[i:]:
            out.append(s[i:s.index("]", i) + 1])       # \sqrt[3]{8}: the index stays as written
            i = s.index("]", i) + 1
        for _ in range(2 if command.group(1) == "frac" else 1):
            argument, i = _next_argument(s, i)
            if argument is None:
                break
            out.append("{" + _brace_arguments(argument) + "}")
    return "".join(out)


def _normalize_once(answer: str) -> str:
    s = answer.strip().replace("−", "-").replace("±", "\\pm ").replace("°", "^\\circ")
    s = _BOLD.sub(r"\1", s)                                                 # **73** -> 73
    s = re.sub(r"(?<!\\)\$", "", s).strip()                                 # $...$ delimiters
    s = re.sub(r"(?<!\\)\\[\[\]()]", "", s)                                # \[ \] \( \) delimiters
    s = re.sub(r"\\(?:left|right|big|Big|bigl|bigr|Bigl|Bigr)(?![a-zA-Z])", "", s)
    s = re.sub(r"(?<!\\)\\[!,;: ]|~", "", s)                              # thin spaces: 10,\!080 -> 10,080
    # [ours] A unit is dropped only when it follows a number: as \text{...} (`10\text{ cm}^2`, `\frac{270}7\text{
    #        degrees}`), or as a known unit word after a space (`5 cm`). `2x`, `3i`, `2k` keep their variable.
    s = re.sub(_TEXT_UNIT, "", s)
    s = re.sub(r"^([-+]?[\d.,]*\d)\s+(?:" + _UNIT_WORDS + r")\.?(?:\^\{?\d\}?)?$", r"\1", s)
    s = re.sub(_TEXT_COMMANDS, r"\1", s)                                   # \text{13} -> 13, \text{(C)} -> (C)
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    s = re.sub(r"\^\{?\\circ\}?", "", s).replace("\\%", "").replace("%", "").replace("\\$", "")
    # [ours] Whitespace goes, except one space between two letters: `\pi r` is not `\pir`, and a word list
    #        `apple banana` stays two words.
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(?<![A-Za-z]) | (?![A-Za-z])", "", s)
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):              # [ours] 1,000 -> 1000, only whole
        s = s.replace(",", "")                                             # numbers: (1,000) is a pair
    s = _brace_arguments(s)
    s = s.rstrip(".")
    s = re.sub(r"^[A-Za-z]=(?=[^=]+$)", "", s)                             # "y = -2x" answers "-2x"
    return s


def normalize_math(answer: str) -> str:
    """A canonical string for a LaTeX answer: enough for MATH-style answers, not a CAS.

    [ours] The rules run until nothing changes, so normalize_math(normalize_math(s)) == normalize_math(s):
    answers are normalised at extraction and again at comparison.
    """
    s = answer
    for _ in range(10):
        previous, s = s, _normalize_once(s)
        if s == previous:
            break
    return s


# ---------------------------------------------------------------- extraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# [ours] "answer is X" anywhere; "Answer: X" only at the start of a line (a step "find the answer: 3 + 4" is
#        no answer); "#### X" as GSM8K writes it. Each rest of line stops at a next "answer is".
_STATED = re.compile(r"(?:\banswer\s+is\b\s*:?|^[^\S\n]*(?:the\s+)?(?:final\s+)?answer\s*:)\s*"
                     r"((?:(?!\banswer\s+is\b)[^\n])*)|####\s*([^\n]*)", re.I | re.M)
_OPTION = re.compile(r"\s*(?:[Oo]ption|[Cc]hoice)?\s*(?:\(([A-Za-z])\)|([A-Z])\)?)(?![A-Za-z0-9])")
_TRUTH_WORDS = {"true", "false", "yes", "no", "valid", "invalid"}


def _statements(text: str) -> list[tuple[int, str, str]]:
    """Where the text states an answer: (position, "boxed" or "said", what it states), in text order."""
    found = []
    for match in _BOXED.finditer(text):
        content, _ = _next_argument(text, match.end() - 1)
        if content is not None:                        # None: unbalanced, the model was cut off
            found.append((match.start(), "boxed", content.strip()))
    for match in _STATED.finditer(text):
        rest = match.group(1) if match.group(1) is not None else match.group(2)
        found.append((match.start(), "said", _sentence(rest)))
    return sorted(found)


def _sentence(rest: str) -> str:
    """The stated answer in a rest of line: `$X$`, else up to the end of the sentence."""
    math = re.match(r"\s*(?:\$+((?:\\\$|[^$])+)\$|\\\((.+?)\\\)|\\\[(.+?)\\\])", rest)   # \$ is a dollar
    if math:
        return next(g for g in math.groups() if g is not None)
    return re.split(r"\.(?=\s|$)", rest)[0].strip()


def _option_letter(statement: str) -> str | None:
    """The option letter a statement gives: `(B)`, `B`, `B)`, `option B`, `\\text{(B)}`, else its first `(B)`."""
    s = re.sub(_TEXT_COMMANDS, r"\1", statement).replace("**", "").replace("$", "")
    match = _OPTION.match(s) or re.search(r"\(([A-Z])\)", s)
    if not match:
        return None
    letter = next(g for g in match.groups() if g is not None)
    return letter.upper()                              # [ours] "(b)" is B; a bare letter must be a capital


def _clean_text(statement: str) -> str | None:
    """A free-form answer: no bold, quotes or final period; spaces collapsed; Dyck brackets without spaces."""
    s = re.sub(_TEXT_COMMANDS, r"\1", statement).replace("**", "").strip().rstrip(".").strip()
    quoted = re.fullmatch(r"([\"'`“‘])(.*)([\"'`”’])", s)
    if quoted and (quoted.group(1) + quoted.group(3)) in ('""', "''", "``", "“”", "‘’"):
        s = quoted.group(2).strip().rstrip(".").strip()
    s = " ".join(s.split())
    if re.fullmatch(r"[()\[\]{}<> ]+", s):
        s = s.replace(" ", "")                         # [ours] `) ] }` is `)]}`: in brackets, spaces are layout
    number = _clean_number(s) if _NUMBER.fullmatch(s.lstrip("$")) else None
    return number or s or None                         # a number is compared as a number


def canonical_answer(answer: str, kind: str = "number") -> str | None:
    """A stated answer (what follows "the answer is", a `\\boxed{}`, a gold answer) read by its kind's rules."""
    if kind == "number":
        numbers = _NUMBER.findall(answer.replace("−", "-"))
        return _clean_number(numbers[0]) if numbers else None    # [ours] "5 cm" -> 5; "2 + 3 = 5" -> 2
    if kind == "math":
        return normalize_math(answer) or None
    if kind == "choice":
        return _option_letter(answer)
    if kind == "text":
        return _clean_text(answer)
    raise ValueError(f"unknown answer kind {kind!r}; choose one of {KINDS}")


def explicit_answer(text: str, kind: str = "number") -> str | None:
    """The answer the text *states* (`\\boxed{X}`, `#### X`, "The answer is X", "Answer: X"), canonical; or None.

    MCTS uses this to decide that a step ends a solution ("Option (A) says 12/11/1937." states nothing);
    `extract_answer` adds the fallbacks.
    """
    # [ours] The last statement that reads as an answer of the kind wins, except that for math a box beats
    #        prose ("the answer is correct" is no answer) and for text "the answer is X" beats a box (BBH's
    #        exemplars end "So the answer is X.").
    preferred = {"math": "boxed", "text": "said"}.get(kind)
    statements = _statements(_BOLD.sub(r"\1", text))                # **Answer:** 73
    for _, source, stated in sorted(statements, key=lambda st: (st[1] == preferred, st[0]), reverse=True):
        answer = canonical_answer(stated, kind)
        if answer:
            return answer
    return None


def extract_answer(text: str, kind: str = "number") -> str | None:
    """The final answer of a model's solution text, canonical for its kind; None when there is none.

    The stated answer (`explicit_answer`), else a fallback: number: the last number in the text; math: none;
    choice: a letter alone at the end ("... so C."), else the last "(X)"; text: the last non-empty line.
    """
    stated = explicit_answer(text, kind)
    if stated is not None or kind == "math":
        return stated
    if kind == "number":
        numbers = _NUMBER.findall(text.replace("−", "-"))
        return _clean_number(numbers[-1]) if numbers else None
    if kind == "choice":
        # [ours] "A farmer has..." and "it is a trick" give no letter: a bare capital counts only at the very end
        alone_at_end = re.search(r"(?:^|[\s:*])\(?([A-Z])\)?[\s.*)]*$", text)
        in_parentheses = re.findall(r"\(([A-Z])\)", text)
        return alone_at_end.group(1) if alone_at_end else (in_parentheses[-1] if in_parentheses else None)
    lines = [line for line in text.splitlines() if line.strip()]
    return canonical_answer(lines[-1], kind) if lines else None


def answer_kind_of_target(target: str) -> str:
    """The kind of a BBH (or MMLU) target: `(A)` or `A` -> choice, `-12` -> number, anything else -> text."""
    if re.fullmatch(r"\(?[A-Z]\)?", target.strip()):
        return "choice"
    return "number" if re.fullmatch(r"-?\d+(?:\.\d+)?", target.strip()) else "text"


# ---------------------------------------------------------------- equivalence

def _comparable(answer: str) -> str:
    """The string `same_answer` compares: normalised LaTeX, an option letter bare, a truth word in lower case."""
    s = normalize_math(answer)
    option = re.fullmatch(r"\(([A-Z])\)", s)
    if option:
        return option.group(1)                         # [ours] option (B) is B: BBH's gold is (B), MMLU's is B
    return s.lower() if s.lower() in _TRUTH_WORDS else s   # [ours] True == true, Yes == yes, valid == Valid


def same_answer(a: str | None, b: str | None) -> bool:
    """Whether two answers are the same answer. A missing or empty answer equals nothing, itself included.

    Same canonical string, or the same number (`numbers_match`: exact for integers and fractions, to the
    printed digits for decimals).
    """
    if a is None or b is None:
        return False
    x, y = _comparable(str(a)), _comparable(str(b))
    if not x or not y:
        return False
    if x == y:
        return True
    nx, ny = parse_number(x), parse_number(y)
    return nx is not None and ny is not None and numbers_match(nx, ny)


def is_correct(prediction: str | None, gold: str, kind: str | None = None) -> bool:
    """The grader: the only place a gold answer is read. With a kind, both are first read by its rules."""
    if prediction is None:
        return False
    if kind is not None:
        prediction = canonical_answer(prediction, kind) or prediction
        gold = canonical_answer(gold, kind) or gold
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
    examples = ["Janet makes $1,018.50 a day. The answer is $1,018.50.", "\\boxed{\\dfrac{1}{2}}",
                "(A) 12/11/1937 is wrong. So the answer is (B).", "So the answer is ] } ]."]
    for text in sys.argv[1:] or examples:
        print(repr(text))
        for kind in KINDS:
            print(f"    {kind:7} {extract_answer(text, kind)!r}")
