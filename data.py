"""
data.py -- the datasets: where each comes from, how it is read, and the offline `arith` generator.

Every loader returns a list of problems, each a dict:

    {"id": str, "question": str, "answer": str (the gold answer: read by the grader only), "kind": str,
     "examples": [(question, answer), ...]  (optional: the benchmark's own few-shot exemplars)}

`kind` says how answers are read and compared (utility.py): "number" (GSM8K, GSM-Hard, arith, BBH's counting
and arithmetic tasks), "math" (MATH, MATH-500: LaTeX answers in \\boxed{}), "choice" (an option letter: MMLU,
BBH's multiple-choice tasks) or "text" (BBH's free-form targets). `examples` are worked exemplars that ship
with the benchmark (BBH's chain-of-thought prompts, MMLU's dev split); they are not the problem's answer, so
methods may show them to a model (mcts.Agent.prompt); problems without them get the built-in exemplars.

Files come from a data folder -- `--data-dir DIR` or $ALIGN_DATA_DIR, a folder holding `gsm8k/test.jsonl`,
`gsm_hard/gsmhardv2.jsonl`, `math500/test.jsonl`, `bbh/<task>.json`, `mmlu/test/<subject>_test.csv`, ... --
or, when none is given, are downloaded once from their public source into ~/.cache/align-delegation/data.
A malformed file gets an error naming file and line.

BBH and MMLU are sets of tasks: `bbh` is all 27 tasks, `bbh:date_understanding,navigate` some of them
(`mmlu:anatomy` likewise), and their problems are interleaved round-robin across tasks, so `--limit 20`
samples several tasks rather than the first one.

Run `python data.py gsm8k --data-dir DIR` (or `bbh`, `mmlu:anatomy`) to print a dataset's size and first problem.

A forker adds a dataset with one function below and one entry in `DATASETS`.
"""
from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import os
import random
import re
import shutil
import sys
import tarfile
import urllib.request

from utility import answer_kind_of_target, extract_answer

# BIG-Bench Hard's 27 tasks and MMLU's 57 subjects, in the fixed order `bbh` and `mmlu` take them.
BBH_TASKS = [
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting"]
MMLU_SUBJECTS = [
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies",
    "machine_learning", "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes",
    "moral_scenarios", "nutrition", "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies", "sociology",
    "us_foreign_policy", "virology", "world_religions"]
SUBSETS = {"bbh": BBH_TASKS, "mmlu": MMLU_SUBJECTS}   # what `bbh:TASK,...` and `mmlu:SUBJECT,...` may name

# Where each file lives inside the data folder, and the public source it is downloaded from when absent.
SOURCES = {
    "gsm8k/test.jsonl":
        "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/test.jsonl",
    "gsm8k/train.jsonl":
        "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/train.jsonl",
    "gsm_hard/gsmhardv2.jsonl":
        "https://raw.githubusercontent.com/reasoning-machines/pal/main/datasets/gsmhardv2.jsonl",
    "math500/test.jsonl":  # byte-identical to openai/prm800k's math_splits/test.jsonl
        "https://raw.githubusercontent.com/ZubinGou/math-evaluation-harness/main/data/math_oai/test.jsonl",
    "math/test.jsonl":
        "https://raw.githubusercontent.com/ZubinGou/math-evaluation-harness/main/data/math/test.jsonl",
}
BBH_SOURCE = "https://raw.githubusercontent.com/suzgunmirac/BIG-Bench-Hard/main/"
SOURCES.update({f"bbh/{task}.json": f"{BBH_SOURCE}bbh/{task}.json" for task in BBH_TASKS})
SOURCES.update({f"bbh/cot-prompts/{task}.txt": f"{BBH_SOURCE}cot-prompts/{task}.txt" for task in BBH_TASKS})
# Files that come in one tarball: data-folder prefix -> (tarball, {folder inside it: folder under the prefix}).
# MMLU's tarball also holds `val/` and `auxiliary_train/` (~160 MB); only `test/` and `dev/` are kept.
ARCHIVES = {"mmlu/": ("https://people.eecs.berkeley.edu/~hendrycks/data.tar",
                      {"data/test/": "test/", "data/dev/": "dev/"})}
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "align-delegation", "data")


class DataError(ValueError):
    """A dataset could not be had or read; the message says what to do."""


# ---------------------------------------------------------------- files

def dataset_file(relative: str, data_dir: str | None) -> str:
    """The local path of a data file: from `data_dir` / $ALIGN_DATA_DIR, else downloaded once to a cache."""
    data_dir = data_dir or os.environ.get("ALIGN_DATA_DIR")
    if data_dir:
        path = os.path.join(data_dir, relative)
        if not os.path.isfile(path):
            raise DataError(f"no file {path}: the data folder must hold {relative}.")
        return path
    path = os.path.join(DEFAULT_CACHE, relative)
    if not os.path.isfile(path):
        prefix = next((p for p in ARCHIVES if relative.startswith(p)), None)
        if prefix:
            unpack_archive(prefix, relative)
            if not os.path.isfile(path):
                raise DataError(f"{ARCHIVES[prefix][0]} has no {relative}; pass --data-dir DIR to a folder that does.")
        else:
            download(SOURCES[relative], path, relative)
    return path


def download(url: str, path: str, relative: str) -> None:
    """Fetch `url` to `path`, through a temporary file: never a half-written file where a whole one is expected."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part = f"{path}.{os.getpid()}.part"          # one per process: data-parallel ranks may download at once
    print(f"downloading {url} to {path}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f)
    except Exception as error:
        if os.path.exists(part):
            os.remove(part)
        raise DataError(f"could not download {url} ({type(error).__name__}: {error}). "
                        f"Offline? Pass --data-dir DIR (or set ALIGN_DATA_DIR) to a folder holding "
                        f"{relative}.") from None
    os.replace(part, path)


def unpack_archive(prefix: str, relative: str) -> None:
    """Download a tarball of `ARCHIVES` once and copy the plain files of its kept folders into the cache."""
    url, folders = ARCHIVES[prefix]
    tarball = os.path.join(DEFAULT_CACHE, prefix, f"archive.{os.getpid()}.tar")
    download(url, tarball, relative)
    try:
        with tarfile.open(tarball) as archive:
            for member in archive:
                inside = next((f for f in folders if member.name.startswith(f)), None)
                name = member.name[len(inside):] if inside else ""
                if not member.isfile() or not name or "/" in name or name.startswith("."):
                    continue             # only files directly in a kept folder: nothing lands outside the cache
                target = os.path.join(DEFAULT_CACHE, prefix, folders[inside], name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with archive.extractfile(member) as source, open(f"{target}.{os.getpid()}.part", "wb") as f:
                    shutil.copyfileobj(source, f)
                os.replace(f"{target}.{os.getpid()}.part", target)
    except tarfile.TarError as error:
        raise DataError(f"{url} is not a readable tar file ({error}).") from None
    finally:
        os.remove(tarball)                # [ours] the rest of the tarball is not needed again


def read_text(path: str) -> str:
    """A data file's text; bytes that are not UTF-8 are an error naming the file and the line."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 ({error.reason}).") from None


def read_jsonl(path: str, required: tuple) -> list[dict]:
    """The records of a JSONL file, each checked for the `required` fields (each a non-empty string or a number)."""
    records = []
    lines = read_text(path).replace("\r\n", "\n").replace("\r", "\n").split("\n")   # as a text-mode file reads
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}).") from None
        missing = [k for k in required if k not in record] if isinstance(record, dict) else list(required)
        if missing:
            raise DataError(f"{path}, line {number}: missing field(s) {missing}; expected {list(required)}.")
        empty = [k for k in required if not is_a_value(record[k])]
        if empty:
            raise DataError(f"{path}, line {number}: field(s) {empty} hold {[record[k] for k in empty]}; each "
                            f"of {list(required)} must be a non-empty string or a number.")
        records.append(record)
    if not records:
        raise DataError(f"no problems in {path}: the file holds no records.")
    return records


def is_a_value(value) -> bool:
    """A question or gold answer we can use: a non-empty string or a number (not null, not a list, not true)."""
    return (isinstance(value, str) and bool(value.strip())) or \
        (isinstance(value, (int, float)) and not isinstance(value, bool))


def read_json_examples(path: str, required: tuple) -> list[dict]:
    """The `examples` list of a BBH file (`{"canary": ..., "examples": [{"input": ..., "target": ...}, ...]}`),
    each example checked for the `required` string fields. BBH's files are one line: an error names the example."""
    text = read_text(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}, line {error.lineno}, column {error.colno}: not valid JSON ({error.msg}).") from None
    if not isinstance(document, dict) or not isinstance(document.get("examples"), list):
        raise DataError(f"{path}, line 1: expected an object with a list under 'examples'.")
    if not document["examples"]:
        raise DataError(f"no problems in {path}: its 'examples' list is empty.")
    one_line = "\n" not in text.strip()
    for number, example in enumerate(document["examples"], 1):
        bad = [k for k in required if not isinstance(example, dict) or not isinstance(example.get(k), str)]
        if bad:
            raise DataError(f"{path}, {'line 1, ' if one_line else ''}example {number}: missing or non-string "
                            f"field(s) {bad}; expected {list(required)}.")
    return document["examples"]


def read_cot_prompt(path: str) -> tuple[str, list[tuple[str, str]]]:
    """A BBH chain-of-thought prompt: (the task description, [(question, answer), ...]).

    The file: a canary line, a `-----` line, the task description (one line; snarks adds a paragraph), then
    exemplars separated by blank lines, each `Q: <question>` then `A: Let's think step by step. ... So the
    answer is X.`
    """
    lines = read_text(path).replace("\r\n", "\n").replace("\r", "\n").split("\n")   # as a text-mode file reads
    if len(lines) < 4 or lines[1].strip() != "-----" or not lines[2].strip():
        raise DataError(f"{path}, line 2: expected a canary line, a '-----' line, then the task description.")
    starts = [n for n, line in enumerate(lines) if line.startswith("Q: ")]
    if not starts:
        raise DataError(f"{path}, line {len(lines)}: no exemplar ('Q: ...' at the start of a line).")
    exemplars = []
    for start, end in zip(starts, starts[1:] + [len(lines)]):
        question, separator, answer = "\n".join(lines[start:end]).strip()[len("Q: "):].partition("\nA: ")
        if not separator or not question.strip() or not re.search(r"So the answer is \S.*\.$", answer.strip()):
            raise DataError(f"{path}, line {start + 1}: an exemplar is 'Q: question', then 'A: ...' ending in "
                            f"'So the answer is X.'")
        exemplars.append((question.strip(), answer.strip()))
    return "\n".join(lines[2:starts[0]]).strip(), exemplars


def read_csv_rows(path: str, fields: int, check=None) -> list[list[str]]:
    """The rows of a headerless CSV file, each with exactly `fields` fields and passing `check(row)` (which returns
    what is wrong, or None). Fields may hold newlines and line endings may be mixed (MMLU), so the csv module reads
    the file, never a split on lines. An error names the row and the line it starts on."""
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, first_line = [], 1
    try:
        for row in reader:
            if row:                       # a blank line is no row
                wrong = f"{len(row)} fields, expected {fields}" if len(row) != fields else check and check(row)
                if wrong:
                    raise DataError(f"{path}, row {len(rows) + 1} (line {first_line}): {wrong}.")
                rows.append(row)
            first_line = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{path}, row {len(rows) + 1} (line {first_line}): not valid CSV ({error}).") from None
    return rows


def round_robin(groups: list[list]) -> list:
    """[ours] One item of each group in turn: [a0, b0, c0, a1, b1, c1, a2, c2, ...] (short groups drop out)."""
    return [group[i] for i in range(max(map(len, groups), default=0)) for group in groups if i < len(group)]


# ---------------------------------------------------------------- one function per dataset

def gsm8k(data_dir: str | None = None, split: str = "test", seed: int = 0) -> list[dict]:
    """GSM8K (Cobbe et al., 2021): grade-school word problems; the gold answer follows `####`.

    {"id": "gsm8k-0", "question": "Janet's ducks lay 16 eggs per day. She eats three for breakfast ...",
     "answer": "18", "kind": "number"}
    """
    path = dataset_file(f"gsm8k/{split}.jsonl", data_dir)
    problems = []
    for i, row in enumerate(read_jsonl(path, ("question", "answer"))):
        if "####" not in str(row["answer"]):
            raise DataError(f"{path}, record {i + 1}: the answer has no '#### N' line.")
        gold = row["answer"].split("####")[-1].strip().replace(",", "")
        problems.append({"id": f"gsm8k{'' if split == 'test' else '_' + split}-{i}", "question": row["question"],
                         "answer": gold, "kind": "number"})
    return problems


def gsm_hard(data_dir: str | None = None, split: str = "test", seed: int = 0) -> list[dict]:
    """GSM-Hard (PAL, Gao et al., 2023): GSM8K with large numbers swapped in; targets are floats.

    {"id": "gsm_hard-0", "question": "Janet's ducks lay 16 eggs per day. ... bakes muffins ... with 4933828. ...",
     "answer": "-9867630.0", "kind": "number"}
    """
    rows = read_jsonl(dataset_file("gsm_hard/gsmhardv2.jsonl", data_dir), ("input", "target"))
    return [{"id": f"gsm_hard-{i}", "question": r["input"], "answer": str(r["target"]), "kind": "number"}
            for i, r in enumerate(rows)]


def math500(data_dir: str | None = None, split: str = "test", seed: int = 0) -> list[dict]:
    """MATH-500 (Lightman et al., 2023): the 500 MATH test problems of "Let's verify step by step".

    {"id": "test/precalculus/807.json", "question": "Convert the point $(0,3)$ in rectangular coordinates to
     polar coordinates. ...", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "kind": "math"}
    """
    rows = read_jsonl(dataset_file("math500/test.jsonl", data_dir), ("problem", "answer"))
    return [{"id": str(r.get("unique_id", f"math500-{i}")), "question": r["problem"], "answer": str(r["answer"]),
             "kind": "math"} for i, r in enumerate(rows)]


def math(data_dir: str | None = None, split: str = "test", seed: int = 0) -> list[dict]:
    """MATH (Hendrycks et al., 2021), all 5,000 test problems; the gold is the solution's last \\boxed{}.

    {"id": "math-0", "question": "How many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?",
     "answer": "2", "kind": "math"}
    """
    path = dataset_file("math/test.jsonl", data_dir)
    problems = []
    for i, r in enumerate(read_jsonl(path, ("problem", "solution"))):
        gold = extract_answer(str(r["solution"]), "math")
        if gold is None:
            raise DataError(f"{path}, record {i + 1}: the solution has no \\boxed{{}} answer.")
        problems.append({"id": f"math-{r.get('idx', i)}", "question": r["problem"], "kind": "math", "answer": gold})
    return problems


def bbh(data_dir: str | None = None, split: str = "test", seed: int = 0, subset: list | None = None) -> list[dict]:
    """BIG-Bench Hard (Suzgun et al., 2022): 27 tasks, 6,511 problems, each task with 3 chain-of-thought exemplars.

    {"id": "bbh-date_understanding-0", "question": "Infer the date from context.\\n\\nToday is Christmas Eve of 1937.
     What is the date tomorrow in MM/DD/YYYY?\\nOptions:\\n(A) 12/11/1937\\n...", "answer": "(B)", "kind": "choice",
     "examples": [("Infer the date from context.\\n\\nToday is Christmas Eve of 1937. What is the date 10 days ago
     ...", "Let's think step by step.\\nIf today is Christmas Eve of 1937, ... So the answer is (D)."), ...]}

    [paper BBH] Few-shot chain of thought with the task's 3 exemplars (`bbh/cot-prompts/<task>.txt`).
    [ours] The task description (the prompt file's text before its first exemplar) heads the question and every
           exemplar, so the principal and the leader, which see no exemplars, see it too. BBH has no training split.
    [ours] A task's kind is its targets' most common kind (utility.answer_kind_of_target). Three targets are
           option texts in choice tasks, not letters (movie_recommendation 163 "Monsters, Inc", ruin_names 99
           and 144): their options were split at commas upstream. They stay, with kind choice, and no answer
           can match them -- like causal_judgement's duplicated inputs with opposite targets, an upstream flaw.
    """
    per_task = []
    for task in subset or BBH_TASKS:
        rows = read_json_examples(dataset_file(f"bbh/{task}.json", data_dir), ("input", "target"))
        description, exemplars = read_cot_prompt(dataset_file(f"bbh/cot-prompts/{task}.txt", data_dir))
        examples = [(f"{description}\n\n{q}", a) for q, a in exemplars]
        kind = collections.Counter(answer_kind_of_target(r["target"]) for r in rows).most_common(1)[0][0] \
            if rows else "text"
        per_task.append([{"id": f"bbh-{task}-{i}", "question": f"{description}\n\n{r['input']}",
                          "answer": r["target"], "kind": kind, "examples": examples} for i, r in enumerate(rows)])
    return round_robin(per_task)


def mmlu_question(row: list[str]) -> str:
    """[ours] An MMLU row as a question with its options, laid out as BBH lays out its options."""
    question, *options = (field.strip() for field in row[:5])
    return f"{question}\nOptions:\n" + "\n".join(f"({letter}) {text}" for letter, text in zip("ABCD", options))


def mmlu(data_dir: str | None = None, split: str = "test", seed: int = 0, subset: list | None = None) -> list[dict]:
    """MMLU (Hendrycks et al., 2021): 57 subjects, 14,042 test questions with four options each.

    {"id": "mmlu-abstract_algebra-0", "question": "Find the degree for the given field extension Q(sqrt(2),
     sqrt(3), sqrt(18)) over Q.\\nOptions:\\n(A) 0\\n(B) 4\\n(C) 2\\n(D) 6", "answer": "B", "kind": "choice",
     "examples": [("Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\\nOptions:\\n(A) 0\\n...",
     "The answer is (B)."), ...]}

    [paper MMLU] 5-shot: the subject's 5 `dev` rows are the exemplars; `test` is evaluated. The exemplars carry
    no reasoning, only "The answer is (X)." ([ours] wording). The tarball's `val` and `auxiliary_train` are not
    used (and not in the shared data folder), so MMLU has no training split here.
    """
    per_subject = []
    for subject in subset or MMLU_SUBJECTS:
        dev = read_mmlu_rows(dataset_file(f"mmlu/dev/{subject}_dev.csv", data_dir))
        test = read_mmlu_rows(dataset_file(f"mmlu/test/{subject}_test.csv", data_dir))
        examples = [(mmlu_question(row), f"The answer is ({row[5].strip()}).") for row in dev]
        per_subject.append([{"id": f"mmlu-{subject}-{i}", "question": mmlu_question(row), "answer": row[5].strip(),
                             "kind": "choice", "examples": examples} for i, row in enumerate(test)])
    return round_robin(per_subject)


def read_mmlu_rows(path: str) -> list[list[str]]:
    """MMLU's rows: question, A, B, C, D, answer letter."""
    def wrong(row):
        if row[5].strip() not in ("A", "B", "C", "D"):
            return f"the answer must be A, B, C or D, not {row[5]!r}"
        return None if row[0].strip() else "the question is empty"
    rows = read_csv_rows(path, 6, wrong)
    if not rows:
        raise DataError(f"no problems in {path}: the file holds no rows.")
    return rows


# [ours] `arith`: one- and two-step arithmetic word problems generated from a seed, always available
# offline. The embedded 135M model answers enough of them that differences between methods show on a CPU.
_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kim", "Leo"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cards", "shells", "coins"]
ARITH_SIZE = {"test": 200, "train": 1000}


def arith(data_dir: str | None = None, split: str = "test", seed: int = 0, count: int | None = None) -> list[dict]:
    """`count` generated word problems (200 test, 1000 train by default); train never repeats a test question of
    the same seed (the test split of another seed is other problems, and train does not hold those out).

    {"id": "arith-test-0-0", "question": "Farid buys 8 boxes with 2 shells in each box. How many shells does
     Farid buy?", "answer": "16", "kind": "number"}
    """
    count = count or ARITH_SIZE[split]
    rng = random.Random(f"arith-{split}-{seed}")
    held_out = {p["question"] for p in arith(split="test", seed=seed, count=1000)} if split == "train" else set()
    problems = []
    while len(problems) < count:
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b, c = rng.randint(2, 20), rng.randint(2, 12), rng.randint(1, 9)
        form = rng.randrange(5)
        if form == 0:
            q, gold = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?", a + b
        elif form == 1:
            a += b
            q, gold = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?", a - b
        elif form == 2:
            q, gold = (f"{name} buys {b} boxes with {c} {item} in each box. "
                       f"How many {item} does {name} buy?"), b * c
        elif form == 3:
            c = min(c, a + b - 1)                       # keep the answer positive
            q, gold = (f"{name} has {a} {item}, finds {b} more and then loses {c}. "
                       f"How many {item} does {name} have now?"), a + b - c
        else:
            q, gold = (f"{name} has {b} bags with {c} {item} in each bag and {a} loose {item}. "
                       f"How many {item} does {name} have in all?"), b * c + a
        if q in held_out:
            continue
        problems.append({"id": f"arith-{split}-{seed}-{len(problems)}", "question": q, "answer": str(gold),
                         "kind": "number"})
    return problems


# name -> (loader, the splits it has). Training code asks for split="train"; evaluation for "test".
DATASETS = {"arith": (arith, ("test", "train")), "gsm8k": (gsm8k, ("test", "train")),
            "gsm_hard": (gsm_hard, ("test",)), "math500": (math500, ("test",)), "math": (math, ("test",)),
            "bbh": (bbh, ("test",)), "mmlu": (mmlu, ("test",))}


def load_problems(name: str, data_dir: str | None = None, limit: int | None = None, seed: int = 0,
                  split: str = "test") -> list[dict]:
    """The problems of a dataset's split, in file order (arith: generated from `seed`; BBH, MMLU: round-robin
    over their tasks), at most `limit`. `name` may pick tasks of BBH or MMLU: `bbh:navigate,snarks`."""
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1 (got {limit}); pass None for every problem.")
    name, _, selected = name.partition(":")
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} "
                        f"(or some tasks of one: bbh:TASK,... or mmlu:SUBJECT,...).")
    loader, splits = DATASETS[name]
    if split not in splits:
        raise DataError(f"dataset {name!r} has no {split} split; it has {list(splits)}.")
    subset = list(dict.fromkeys(s.strip() for s in selected.split(",") if s.strip()))
    if subset and name not in SUBSETS:
        raise DataError(f"dataset {name!r} has no tasks to pick; write just {name!r}.")
    unknown = [s for s in subset if s not in SUBSETS.get(name, ())]
    if unknown:
        raise DataError(f"unknown {name} task(s) {unknown}; choose from: {', '.join(SUBSETS[name])}.")
    problems = loader(data_dir, split=split, seed=seed, subset=subset) if subset else \
        loader(data_dir, split=split, seed=seed)
    repeated = [i for i, n in collections.Counter(p["id"] for p in problems).items() if n > 1]
    if repeated:              # records, resume and the searches methods share are all keyed by the problem's id
        raise DataError(f"{name}: problem id(s) {repeated[:3]} appear more than once; give each problem its own id.")
    return problems[:limit] if limit is not None else problems


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="print a dataset's size and first problem")
    parser.add_argument("dataset", help=f"one of {sorted(DATASETS)}, or bbh:TASK,... / mmlu:SUBJECT,...")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    try:
        loaded = load_problems(args.dataset, args.data_dir, split=args.split)
    except DataError as error:
        raise SystemExit(f"error: {error}")
    first = dict(loaded[0])
    examples = first.pop("examples", None)
    kinds = collections.Counter(p["kind"] for p in loaded)
    print(f"{args.dataset} ({args.split}): {len(loaded)} problems ({', '.join(f'{k} {n}' for k, n in kinds.items())})"
          f"\n{json.dumps(first, indent=1)}")
    if examples:
        print(f"its {len(examples)} few-shot exemplars from the benchmark; the first:\n"
              f"{json.dumps(list(examples[0]), indent=1)}")
