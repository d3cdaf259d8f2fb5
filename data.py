"""
data.py -- the datasets: where each comes from, how it is read, and the offline `arith` generator.

Every loader returns a list of problems, each a dict:

    {"id": str, "question": str, "answer": str (the gold answer: read by the grader only), "kind": str}

`kind` says how answers are read and compared (utility.py): "number" (GSM8K, GSM-Hard, arith) or "math"
(MATH, MATH-500: LaTeX answers in \\boxed{}).

Files come from a data folder -- `--data-dir DIR` or $ALIGN_DATA_DIR, a folder holding `gsm8k/test.jsonl`,
`gsm_hard/gsmhardv2.jsonl`, `math500/test.jsonl`, ... -- or, when none is given, are downloaded once from
their public source into ~/.cache/align-delegation/data. A malformed file gets an error naming file and line.

Run `python data.py gsm8k --data-dir DIR` to print a dataset's size and first problem.

A forker adds a dataset with one function below and one entry in `DATASETS`.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import urllib.request

from utility import extract_answer

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
        url = SOURCES[relative]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print(f"downloading {url} to {path}", file=sys.stderr)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except Exception as error:
            raise DataError(f"could not download {url} ({type(error).__name__}: {error}). "
                            f"Offline? Pass --data-dir DIR (or set ALIGN_DATA_DIR) to a folder holding "
                            f"{relative}.") from None
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)  # never leave a half-written file where a whole one is expected
    return path


def read_jsonl(path: str, required: tuple) -> list[dict]:
    """The records of a JSONL file, each checked for the `required` fields."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}).") from None
            missing = [k for k in required if k not in record] if isinstance(record, dict) else list(required)
            if missing:
                raise DataError(f"{path}, line {number}: missing field(s) {missing}; expected {list(required)}.")
            records.append(record)
    return records


# ---------------------------------------------------------------- one function per dataset

def gsm8k(data_dir: str | None = None, split: str = "test", seed: int = 0) -> list[dict]:
    """GSM8K (Cobbe et al., 2021): grade-school word problems; the gold answer follows `####`.

    {"id": "gsm8k-0", "question": "Janet's ducks lay 16 eggs per day. She eats three for breakfast ...",
     "answer": "18", "kind": "number"}
    """
    path = dataset_file(f"gsm8k/{split}.jsonl", data_dir)
    problems = []
    for i, row in enumerate(read_jsonl(path, ("question", "answer"))):
        if "####" not in row["answer"]:
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
    return [{"id": r.get("unique_id", f"math500-{i}"), "question": r["problem"], "answer": r["answer"],
             "kind": "math"} for i, r in enumerate(rows)]


def math(data_dir: str | None = None, split: str = "test", seed: int = 0) -> list[dict]:
    """MATH (Hendrycks et al., 2021), all 5,000 test problems; the gold is the solution's last \\boxed{}.

    {"id": "math-0", "question": "How many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?",
     "answer": "2", "kind": "math"}
    """
    rows = read_jsonl(dataset_file("math/test.jsonl", data_dir), ("problem", "solution"))
    return [{"id": f"math-{r.get('idx', i)}", "question": r["problem"], "kind": "math",
             "answer": extract_answer(r["solution"], "math")} for i, r in enumerate(rows)]


# [ours] `arith`: one- and two-step arithmetic word problems generated from a seed, always available
# offline. The embedded 135M model answers enough of them that differences between methods show on a CPU.
_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kim", "Leo"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cards", "shells", "coins"]
ARITH_SIZE = {"test": 200, "train": 1000}


def arith(data_dir: str | None = None, split: str = "test", seed: int = 0, count: int | None = None) -> list[dict]:
    """`count` generated word problems (200 test, 1000 train by default); train never repeats a test question.

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
            "gsm_hard": (gsm_hard, ("test",)), "math500": (math500, ("test",)), "math": (math, ("test",))}


def load_problems(name: str, data_dir: str | None = None, limit: int | None = None, seed: int = 0,
                  split: str = "test") -> list[dict]:
    """The problems of a dataset's split, in file order (arith: generated from `seed`), at most `limit`."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    loader, splits = DATASETS[name]
    if split not in splits:
        raise DataError(f"dataset {name!r} has no {split} split; it has {list(splits)}.")
    problems = loader(data_dir, split=split, seed=seed)
    return problems[:limit] if limit else problems


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="print a dataset's size and first problem")
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    try:
        loaded = load_problems(args.dataset, args.data_dir, split=args.split)
    except DataError as error:
        raise SystemExit(f"error: {error}")
    print(f"{args.dataset} ({args.split}): {len(loaded)} problems\n{json.dumps(loaded[0], indent=1)}")
