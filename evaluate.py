"""
evaluate.py -- datasets, methods, and the run that compares them at equal cost accounting.

    python evaluate.py --dataset arith --methods cot,sc --limit 30          # minutes on 2 CPU cores
    python evaluate.py --dataset gsm8k --methods cot,sc,vote,principal,align --preset paper   # on a GPU
    torchrun --nproc-per-node 4 evaluate.py --dataset gsm8k --preset paper   # data-parallel, one GPU a rank

Every method answers every problem through the same counters (llm.py): model calls, prompt and generated
tokens, wall seconds. Methods built on the agents' MCTS (`mcts`, `vote`, `principal`, `align`) share one
search per problem within a run, and each of them is charged the full cost of that search, so every row
of the table says what that method would spend on its own.

Output: one JSONL record per (problem, method), appended and flushed as it goes; `--resume` skips what is
done, so a run killed half-way loses nothing. At the end: accuracy with a 95% Wilson interval, and cost
per question. Every random choice is seeded from (--seed, problem id, method), so a resumed run and an
uninterrupted one give the same records.

A forker adds a method by writing `def method_NAME(problem, ctx)` and adding it to METHODS.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
import urllib.request

from llm import EMBEDDED_ALIAS, ModelLoadError, add_costs, load_llm, option, parse_configs, print_config
from mcts import Agent, SearchConfig, search
from principal import rank_classes
from utility import Sample, extract_answer, is_correct, majority_answer

# ---------------------------------------------------------------- datasets
# Each loader returns problems: {"id", "question", "answer" (gold, a string), "kind" ("number" or "math")}.

SOURCES = {  # name: (file under the data folder, public source it is downloaded from when absent)
    "gsm8k": ("gsm8k/test.jsonl",
              "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/test.jsonl"),
    "gsm8k_train": ("gsm8k/train.jsonl",
                    "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/train.jsonl"),
    "gsm_hard": ("gsm_hard/gsmhardv2.jsonl",
                 "https://raw.githubusercontent.com/reasoning-machines/pal/main/datasets/gsmhardv2.jsonl"),
    "math500": ("math500/test.jsonl",  # byte-identical to openai/prm800k's math_splits/test.jsonl
                "https://raw.githubusercontent.com/ZubinGou/math-evaluation-harness/main/data/math_oai/test.jsonl"),
    "math": ("math/test.jsonl",
             "https://raw.githubusercontent.com/ZubinGou/math-evaluation-harness/main/data/math/test.jsonl"),
}
DATASETS = ["arith", "gsm8k", "gsm_hard", "math500", "math"]
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "align-delegation", "data")


class DataError(ValueError):
    """A dataset could not be had or read; the message says what to do."""


def dataset_file(name: str, data_dir: str | None) -> str:
    """The local path of a dataset file: from --data-dir / $ALIGN_DATA_DIR, else downloaded once to a cache."""
    relative, url = SOURCES[name]
    data_dir = data_dir or os.environ.get("ALIGN_DATA_DIR")
    if data_dir:
        path = os.path.join(data_dir, relative)
        if not os.path.isfile(path):
            raise DataError(f"dataset {name!r}: no file {path}. The data folder must hold {relative}.")
        return path
    path = os.path.join(DEFAULT_CACHE, relative)
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print(f"downloading {name} from {url} to {path}", file=sys.stderr)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except Exception as error:
            raise DataError(f"dataset {name!r}: could not download {url} ({type(error).__name__}: {error}).\n"
                            f"  Offline? Pass --data-dir DIR (or set ALIGN_DATA_DIR) to a folder holding "
                            f"{relative}.") from None
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)  # never leave a half-written file where a whole one is expected
    return path


def read_jsonl(path: str, required: tuple) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}).") from None
            missing = [k for k in required if k not in record]
            if not isinstance(record, dict) or missing:
                raise DataError(f"{path}, line {number}: missing field(s) {missing}; expected {list(required)}.")
            records.append(record)
    return records


def load_problems(name: str, data_dir: str | None = None, limit: int | None = None, seed: int = 0) -> list[dict]:
    """The problems of a dataset, in file order (arith: generated from `seed`), at most `limit` of them."""
    if name == "arith":
        return arith_problems(limit or 200, split="test", seed=seed)
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; choose one of {DATASETS}.")
    path = dataset_file(name, data_dir)
    if name.startswith("gsm8k"):
        rows = read_jsonl(path, ("question", "answer"))
        problems = [{"id": f"{name}-{i}", "question": r["question"], "kind": "number",
                     "answer": _gsm8k_gold(r["answer"], path, i)} for i, r in enumerate(rows)]
    elif name == "gsm_hard":
        rows = read_jsonl(path, ("input", "target"))
        problems = [{"id": f"gsm_hard-{i}", "question": r["input"], "answer": str(r["target"]), "kind": "number"}
                    for i, r in enumerate(rows)]
    elif name == "math500":
        rows = read_jsonl(path, ("problem", "answer"))
        problems = [{"id": r.get("unique_id", f"math500-{i}"), "question": r["problem"], "answer": r["answer"],
                     "kind": "math"} for i, r in enumerate(rows)]
    else:  # the full MATH test set: the gold answer is the last \boxed{} of the solution
        rows = read_jsonl(path, ("problem", "solution"))
        problems = [{"id": f"math-{r.get('idx', i)}", "question": r["problem"], "kind": "math",
                     "answer": extract_answer(r["solution"], "math")} for i, r in enumerate(rows)]
    return problems[:limit] if limit else problems


def _gsm8k_gold(answer: str, path: str, index: int) -> str:
    if "####" not in answer:
        raise DataError(f"{path}, record {index + 1}: the answer has no '#### N' line.")
    return answer.split("####")[-1].strip().replace(",", "")


# [ours] `arith`: one- and two-step arithmetic word problems generated from a seed, always available
# offline. The embedded 135M model answers enough of them that differences between methods show on a CPU.
_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kim", "Leo"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cards", "shells", "coins"]


def arith_problems(count: int, split: str = "test", seed: int = 0) -> list[dict]:
    """`count` arithmetic word problems. The train split never repeats a question of the test split."""
    rng = random.Random(f"arith-{split}-{seed}")
    held_out = {p["question"] for p in arith_problems(1000, "test", seed)} if split == "train" else set()
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


# ---------------------------------------------------------------- configuration

PRESETS = {
    # [ours] tiny: the paper's homogeneous-agent setting on the embedded model -- one backbone, three
    # temperatures -- with the same model as principal and leader. Runs on a CPU.
    "tiny": {"agents": [(EMBEDDED_ALIAS, 0.5), (EMBEDDED_ALIAS, 0.7), (EMBEDDED_ALIAS, 1.0)],
             "principal": EMBEDDED_ALIAS, "leader": EMBEDDED_ALIAS},
    # [paper] three heterogeneous agents and a Qwen2.5-7B principal (exact checkpoints and the agents'
    # temperature are [ours]). Their bf16 weights take ~53 GB: one 80 GB GPU.
    "paper": {"agents": [("mistralai/Ministral-8B-Instruct-2410", 0.7), ("HuggingFaceH4/zephyr-7b-beta", 0.7),
                         ("microsoft/Phi-3-mini-4k-instruct", 0.7)],
              "principal": "Qwen/Qwen2.5-7B-Instruct", "leader": "Qwen/Qwen2.5-7B-Instruct"},
}


@dataclasses.dataclass
class EvalConfig:
    """python evaluate.py: run methods on a dataset and print the accuracy and cost table."""
    dataset: str = option("gsm8k", f"one of {DATASETS}")
    methods: str = option("cot,sc", "comma-separated methods, run on the same problems")
    preset: str = option("tiny", "tiny (embedded model, CPU) or paper (the paper's models, GPU)")
    limit: int | None = option(None, "evaluate only the first N problems")
    seed: int = option(0, "seed of every random choice (and of the arith problems)")
    data_dir: str | None = option(None, "folder holding the dataset files (else $ALIGN_DATA_DIR, else download)")
    output: str | None = option(None, "JSONL file of records (default runs/DATASET-PRESET-seedSEED.jsonl)")
    resume: bool = option(False, "skip (problem, method) pairs already in the output file")
    overwrite: bool = option(False, "start the output file afresh")
    model: str | None = option(None, "use this backbone for every agent, the principal and the leader")
    principal_model: str | None = option(None, "the principal's backbone (default: the preset's)")
    leader: str | None = option(None, "the leader's backbone, e.g. a folder saved by `mlpo.py train`")
    device: str | None = option(None, "cuda, cpu, ... (default: cuda when present)")
    dtype: str | None = option(None, "float32, bfloat16 (default: bf16 on cuda, fp32 on cpu)")
    max_new_tokens: int = option(256, "[ours] max new tokens of a cot / sc solution")
    sc_samples: int = option(8, "[ours] sampled chains for self-consistency")
    sc_temperature: float = option(0.7, "[ours] temperature of the self-consistency chains")
    progress: bool = option(True, "show a progress bar")


def derive_seed(*parts) -> int:
    """A seed from any parts (e.g. run seed, problem id, method): stable across runs and resumes."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big") >> 1


# ---------------------------------------------------------------- methods
# A method takes a problem and the run context and returns at least {"prediction": ..., "raw": ...}.
# Only `question` and `kind` of the problem may reach a model: the gold answer is read by the grader alone.

@dataclasses.dataclass
class Context:
    config: EvalConfig
    agents: list
    principal: object = None
    leader: object = None
    search_config: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    extra_configs: dict = dataclasses.field(default_factory=dict)
    shared_work: dict = dataclasses.field(default_factory=dict)  # this problem's searches and order

    def seed(self, problem, *parts) -> int:
        return derive_seed(self.config.seed, problem["id"], *parts)


def method_cot(problem, ctx):
    """Few-shot chain of thought, greedy, the first agent's model."""
    agent = ctx.agents[0]
    text = agent.llm.sample(agent.prompt(problem["question"], problem["kind"]), 1, temperature=0.0,
                            max_new_tokens=ctx.config.max_new_tokens)[0]
    return {"prediction": extract_answer(text, problem["kind"]), "raw": [text]}


def method_sc(problem, ctx):
    """Self-consistency: k sampled chains of the first agent's model, majority vote."""
    agent, k = ctx.agents[0], ctx.config.sc_samples
    texts = agent.llm.sample(agent.prompt(problem["question"], problem["kind"]), k,
                             temperature=ctx.config.sc_temperature, max_new_tokens=ctx.config.max_new_tokens,
                             seed=ctx.seed(problem, "sc"))
    samples = [Sample(extract_answer(t, problem["kind"]), t) for t in texts]
    return {"prediction": majority_answer(samples), "raw": texts,
            "answers": [s.answer for s in samples]}


def agent_searches(problem, ctx):
    """Every agent's MCTS on this problem, run once and shared by the methods that need it."""
    if problem["id"] not in ctx.shared_work:
        ctx.shared_work.clear()
        results = [search(agent, problem["question"], problem["kind"], ctx.search_config,
                          seed=ctx.seed(problem, "search", i)) for i, agent in enumerate(ctx.agents)]
        for i, result in enumerate(results):
            for sample in result.samples:
                sample.agent = i
        ctx.shared_work[problem["id"]] = results
    return ctx.shared_work[problem["id"]]


def describe_search(result) -> dict:
    """The JSONL view of one agent's search: its answer classes with utilities, and what it spent."""
    return {"agent": result.agent, "solutions": len(result.samples), "cost": result.cost,
            "classes": [{"answer": c.answer, "utility": round(c.utility, 4), "count": len(c.samples)}
                        for c in result.classes]}


def search_charge(results, *more_costs) -> dict:
    """The shared work (searches, the principal's order) a method used: charged to it in full by `run`."""
    return {"shared_cost": add_costs(*[r.cost for r in results], *more_costs)}


def method_mcts(problem, ctx):
    """One agent's MCTS (the first agent), majority over its solutions: rStar-like, no discriminator."""
    result = agent_searches(problem, ctx)[0]
    return {"prediction": majority_answer(result.samples), "raw": [s.trace for s in result.samples],
            "agents": [describe_search(result)], **search_charge([result])}


def method_vote(problem, ctx):
    """All agents' MCTS solutions pooled, majority vote."""
    results = agent_searches(problem, ctx)
    pooled = [s for r in results for s in r.samples]
    return {"prediction": majority_answer(pooled), "raw": [s.trace for s in pooled],
            "agents": [describe_search(r) for r in results], **search_charge(results)}


def principal_order(problem, ctx):
    """The principal's order of the pooled classes, computed once per problem; returns (order, its cost)."""
    from align import GameConfig, pool_classes  # align.py imports this file for its command line

    key = ("order", problem["id"], id(ctx.principal))
    if key not in ctx.shared_work:
        answers, representatives, _ = pool_classes(agent_searches(problem, ctx))
        game = ctx.extra_configs.get("GameConfig", GameConfig())
        before, start = ctx.principal.counters.snapshot(), time.perf_counter()
        order = rank_classes(ctx.principal, problem["question"], answers, [r.trace for r in representatives],
                             game.principal_mode, seed=ctx.seed(problem, "principal")) if answers else None
        cost = {**ctx.principal.counters.since(before), "seconds": time.perf_counter() - start}
        ctx.shared_work[key] = (order, cost)
    return ctx.shared_work[key]


def method_principal(problem, ctx):
    """The principal's top class among all agents' pooled candidates (Theorem 1's equal-access comparison)."""
    from align import pool_classes

    results = agent_searches(problem, ctx)
    answers, _, _ = pool_classes(results)
    order, order_cost = principal_order(problem, ctx)
    charge = search_charge(results, order_cost)
    return {"prediction": answers[order.order[0]] if order else None,
            "raw": [order.reply] if order and order.reply else [],
            "pool": [{"answer": a, "score": round(x, 4)} for a, x in zip(answers, order.scores)] if order else [],
            "principal_parse_failed": bool(order and order.parse_failed),
            "agents": [describe_search(r) for r in results], **charge}


def method_align(problem, ctx):
    """ALIGN: the delegation game over the agents' candidates (align.py)."""
    from align import GameConfig, delegate, pool_classes

    results = agent_searches(problem, ctx)
    answers, _, players = pool_classes(results)
    order, order_cost = principal_order(problem, ctx)
    game = (delegate(answers, players, order, ctx.extra_configs.get("GameConfig", GameConfig()),
                     ctx.seed(problem, "align")) if order else {"prediction": None, "diagnostics": None,
                                                                   "abstained": [p.name for p in players]})
    if game.get("diagnostics") is None:
        game.pop("diagnostics", None)   # no game was played: no diagnostics to average
    return {**game, "raw": [], "agents": [describe_search(r) for r in results], **search_charge(results, order_cost)}


def method_leader(problem, ctx, team=True):
    """MLPO inference: the team answers, the leader aggregates, for T rounds (mlpo.py)."""
    from mlpo import LeaderConfig, lead

    return lead(problem["question"], problem["kind"], ctx.agents, ctx.leader,
                ctx.extra_configs.get("LeaderConfig", LeaderConfig()), ctx.seed(problem, "leader"), team=team)


def method_leader_solo(problem, ctx):
    """The leader alone, with no team (does MLPO training help the leader by itself?)."""
    return method_leader(problem, ctx, team=False)


METHODS = {"cot": method_cot, "sc": method_sc, "mcts": method_mcts, "vote": method_vote,
           "principal": method_principal, "align": method_align,
           "leader": method_leader, "leader-solo": method_leader_solo}
# A method named NAME@MODEL runs NAME with MODEL as its leader (leader methods) or its principal (principal,
# align): e.g. `--methods leader,leader@checkpoints/leader` puts an untrained and a trained leader side by side.
SWAPPABLE_ROLE = {"leader": "leader", "leader-solo": "leader", "principal": "principal", "align": "principal"}


# ---------------------------------------------------------------- the run
# TRY NOT TO MODIFY: records, resume, the table, data parallelism.

def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple:
    """95% Wilson score interval of a proportion (sound at 0% and 100%, unlike the normal approximation)."""
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def read_records(path: str) -> list[dict]:
    """Records of an output file; a line cut short by a kill is dropped (its pair will be run again)."""
    records = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return records


def drop_partial_last_line(path: str) -> None:
    """A kill can leave half a record at the end of a file: cut it, so the next record starts on its own line."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def summarize(records: list[dict], methods: list[str]) -> str:
    """The table: accuracy with a 95% interval and cost per question, one row per method."""
    width = max([len(m) for m in methods] + [6])
    header = (f"{'method':<{width}} {'n':>5} {'accuracy':>9} {'95% CI':>15} {'calls/q':>8} {'prompt tok/q':>12} "
              f"{'gen tok/q':>10} {'sec/q':>7}")
    diagnostic_columns = [("regret/bound", "regret_ratio"), ("Nash gap", "nash_gap"), ("Pareto", "pareto"),
                          ("rounds", "rounds")]
    if any("diagnostics" in r for r in records):
        header += "".join(f" {name:>12}" for name, _ in diagnostic_columns)
    lines = [header, "-" * len(header)]
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        if not rows:
            continue
        n, correct = len(rows), sum(r["correct"] for r in rows)
        low, high = wilson_interval(correct, n)
        mean = lambda key: sum(r[key] for r in rows) / n  # noqa: E731
        line = (f"{method:<{width}} {n:>5} {correct / n:>9.1%} {f'[{low:.1%}, {high:.1%}]':>15} "
                f"{mean('calls'):>8.1f} {mean('prompt_tokens'):>12.0f} {mean('generated_tokens'):>10.0f} "
                f"{mean('seconds'):>7.1f}")
        diagnostics = [r["diagnostics"] for r in rows if r.get("diagnostics")]
        if diagnostics:
            line += "".join(f" {sum(d[key] for d in diagnostics) / len(diagnostics):>12.3f}"
                            for _, key in diagnostic_columns)
        lines.append(line)
    if {m.partition("@")[0] for m in methods} & {"vote", "principal", "align"}:
        lines.append("(for scale: the ALIGN paper reports 73-103 model calls and 52K-264K tokens per question)")
    return "\n".join(lines)


def build_context(config: EvalConfig, search_config: SearchConfig, extra_configs: dict | None = None,
                  device: str | None = None) -> Context:
    """Load the preset's models (each backbone once) and make the agents, principal and leader."""
    if config.preset not in PRESETS:
        raise DataError(f"unknown preset {config.preset!r}; choose one of {list(PRESETS)}.")
    preset = PRESETS[config.preset]
    load = lambda name: load_llm(name, device or config.device, config.dtype)  # noqa: E731
    agents = [Agent(f"agent-{i}:{config.model or name}@T={temperature}", load(config.model or name), temperature)
              for i, (name, temperature) in enumerate(preset["agents"])]
    context = Context(config, agents, search_config=search_config, extra_configs=extra_configs or {})
    methods = config.methods.split(",")
    bases = {m.partition("@")[0] for m in methods}
    if {"principal", "align"} & bases:
        context.principal = load(config.principal_model or config.model or preset["principal"])
    if {"leader", "leader-solo"} & bases:
        context.leader = load(config.leader or config.model or preset["leader"])
    return context


def run(config: EvalConfig, search_config: SearchConfig, extra_configs: dict | None = None) -> list[dict]:
    """Evaluate, writing records as it goes; returns all records of the requested methods."""
    methods = [m.strip() for m in config.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m.partition("@")[0] not in METHODS]
    if unknown:
        raise DataError(f"unknown method(s) {unknown}; available: {sorted(METHODS)}.")
    unswappable = [m for m in methods if "@" in m and m.partition("@")[0] not in SWAPPABLE_ROLE]
    if unswappable:
        raise DataError(f"{unswappable}: only {sorted(SWAPPABLE_ROLE)} take @MODEL (a leader or a principal).")
    if config.dataset not in DATASETS:
        raise DataError(f"unknown dataset {config.dataset!r}; choose one of {DATASETS}.")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    output = config.output or os.path.join("runs", f"{config.dataset}-{config.preset}-seed{config.seed}.jsonl")
    rank_files = [f"{output}.rank{r}" for r in range(world)] if world > 1 else []
    if os.path.exists(output) and not (config.resume or config.overwrite):  # every rank stops, none hangs
        raise DataError(f"{output} exists: pass --resume to continue it, --overwrite to start again, "
                        f"or --output to write elsewhere.")
    device = config.device
    if world > 1:
        import torch
        import torch.distributed as dist
        if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
        dist.barrier()  # rank 0 has checked the output file before anyone writes
    if config.overwrite and rank == 0:
        for path in [output] + rank_files:
            if os.path.exists(path):
                os.remove(path)
    if world > 1:
        dist.barrier()
    problems = load_problems(config.dataset, config.data_dir, config.limit, config.seed)
    done = {(r["problem_id"], r["method"]) for path in [output] + rank_files for r in read_records(path)}
    mine = problems[rank::world]
    todo = [(p, m) for p in mine for m in methods if (p["id"], m) not in done]
    if rank == 0:
        print(f"{config.dataset}: {len(problems)} problems x {len(methods)} methods; "
              f"{len(done & {(p['id'], m) for p in problems for m in methods})} already done; writing {output}")
    ctx = build_context(config, search_config, extra_configs, device)
    swapped = {m: load_llm(m.partition("@")[2], device, config.dtype) for m in methods if "@" in m}
    llms = list({id(m): m for m in [a.llm for a in ctx.agents] + [ctx.principal, ctx.leader, *swapped.values()]
                 if m}.values())
    default_roles = {"leader": ctx.leader, "principal": ctx.principal}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    from tqdm import tqdm
    my_file = rank_files[rank] if world > 1 else output
    drop_partial_last_line(my_file)
    with open(my_file, "a", encoding="utf-8") as out:
        for problem, method in tqdm(todo, disable=not config.progress or rank != 0, desc="evaluating",
                                    dynamic_ncols=True):
            # work shared by several methods (the agents' searches, the principal's order) is done before the
            # clock starts; each method that uses it is charged its full cost (search_charge)
            base = method.partition("@")[0]
            if base in SWAPPABLE_ROLE:  # this row's leader or principal
                role = SWAPPABLE_ROLE[base]
                setattr(ctx, role, swapped.get(method, default_roles[role]))
            if base in ("mcts", "vote", "principal", "align"):
                agent_searches(problem, ctx)
            if base in ("principal", "align"):
                principal_order(problem, ctx)
            before = [llm.counters.snapshot() for llm in llms]
            start = time.perf_counter()
            result = METHODS[base](problem, ctx)
            shared = result.pop("shared_cost", {})
            spent = add_costs(*[llm.counters.since(b) for llm, b in zip(llms, before)],
                              {k: v for k, v in shared.items() if k != "seconds"})
            spent["seconds"] = time.perf_counter() - start + shared.get("seconds", 0.0)
            record = {"problem_id": problem["id"], "dataset": config.dataset, "method": method,
                      "question": problem["question"], "prediction": result.pop("prediction"),
                      "gold": problem["answer"]}
            record["correct"] = is_correct(record["prediction"], problem["answer"])
            record.update({k: round(v, 3) if isinstance(v, float) else v for k, v in spent.items()})
            record.update(result)
            out.write(json.dumps(record) + "\n")
            out.flush()
    if world > 1:
        dist.barrier()
        if rank == 0:  # merge the ranks' records into the one output file
            drop_partial_last_line(output)
            merged = {(r["problem_id"], r["method"]) for r in read_records(output)}
            with open(output, "a", encoding="utf-8") as out:
                for path in rank_files:
                    for r in read_records(path):
                        if (r["problem_id"], r["method"]) not in merged:
                            out.write(json.dumps(r) + "\n")
                            merged.add((r["problem_id"], r["method"]))
                    os.remove(path)
        dist.barrier()
        dist.destroy_process_group()
    wanted = {p["id"] for p in problems}
    return [r for r in read_records(output) if r["problem_id"] in wanted and r["method"] in methods]


def main(argv=None):
    from align import GameConfig
    from mlpo import LeaderConfig

    config_classes = [EvalConfig, SearchConfig, GameConfig, LeaderConfig]
    configs = parse_configs(__doc__.split("\n\n")[0], *config_classes, argv=argv)
    config, search_config = configs[0], configs[1]
    extra = {type(c).__name__: c for c in configs[2:]}
    if int(os.environ.get("RANK", 0)) == 0:
        print_config(*configs)
    try:
        records = run(config, search_config, extra)
    except (DataError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}")
    if int(os.environ.get("RANK", 0)) == 0:
        print(summarize(records, [m.strip() for m in config.methods.split(",") if m.strip()]))
        if sys.platform != "win32":
            import resource  # peak resident memory of this process (Linux reports kilobytes)
            print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB")
    return records


if __name__ == "__main__":
    main()
