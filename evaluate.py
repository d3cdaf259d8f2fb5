"""
evaluate.py -- run methods on a dataset and compare them at equal cost accounting.

    python evaluate.py --dataset arith --methods cot,sc --limit 30          # minutes on 2 CPU cores
    python evaluate.py --dataset gsm8k --methods cot,sc,vote,principal,align --preset paper   # on a GPU
    python evaluate.py --preset paper --check      # each role's model, its size, the GPU's memory: loads nothing
    torchrun --nproc-per-node 4 evaluate.py --dataset gsm8k --preset paper   # data-parallel, one GPU a rank

Every method answers every problem through the same counters (llm.py): model calls, prompt and generated
tokens, wall seconds. Work several methods use -- the agents' searches, the principal's order -- is done
once per problem and charged in full to every method that uses it (`SharedWork`, the one charging rule),
so every row of the table says what that method would spend on its own.

Output: one JSONL record per (problem, method), appended and flushed as each batch's method finishes; `--resume`
skips what is done and re-runs an unfinished batch whole, so a run killed half-way loses no finished batch. At the
end: accuracy with a 95% Wilson interval, and cost per question. Every random choice is seeded from (--seed,
problem id, purpose), so a resumed run and an uninterrupted one give the same records.

A forker adds a method with one function `method_NAME(problems, ctx) -> list of results` and one entry in
METHODS; nothing else. A method sees each problem's id, question and kind -- never its gold answer.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import shlex
import sys
import time

from tqdm import tqdm

from align import (GameConfig, delegate, pool_classes, principal_order_program, validate_game_config,
                   with_preset_defaults)
from data import DataError, DATASETS, load_problems
from engine import BATCH_SIZE, IN_FLIGHT, IN_FLIGHT_CPU, Request, keep_big_blocks_in_mmap, run_programs
from llm import (DEFAULT_DTYPE, PRESETS, ConfigError, ModelLoadError, add_costs, check_device_and_dtype,
                 check_model_name, cuda_available, derive_seed, describe_models, load_llm, option, parse_configs,
                 print_config, require, require_at_least, spent)
from mcts import SearchConfig, make_agents, search_all, validate_search_config
from mlpo import LeaderConfig, lead_program, validate_leader_config
from utility import Sample, extract_answer, is_correct, majority_answer


@dataclasses.dataclass
class EvalConfig:
    """python evaluate.py: run methods on a dataset and print the accuracy and cost table."""
    dataset: str = option("gsm8k", f"one of {sorted(DATASETS)} (bbh:TASK or mmlu:SUBJECT picks some)")
    split: str = option("test", "test, or train where a dataset has one (arith, gsm8k): for choosing settings "
                                "without touching the test problems")
    methods: str = option("cot,sc,mcts,vote,principal,align",
                          "comma-separated methods, run on the same problems (the paper's comparison by default; "
                          "also leader, leader-solo, NAME@MODEL)")
    preset: str = option("tiny", "tiny (embedded model, CPU) or paper (the paper's models, GPU)")
    limit: int | None = option(None, "evaluate only the first N problems")
    seed: int = option(0, "seed of every random choice (and of the arith problems)")
    data_dir: str | None = option(None, "folder holding the dataset files (else $ALIGN_DATA_DIR, else download)")
    output: str | None = option(None, "JSONL file of records (default runs/DATASET[-train]-PRESET-seedSEED.jsonl)")
    resume: bool = option(False, "skip (problem, method) pairs already in the output file")
    overwrite: bool = option(False, "start the output file afresh")
    model: str | None = option(None, "use this backbone for every agent, the principal and the leader")
    principal_model: str | None = option(None, "the principal's backbone (default: the preset's)")
    leader: str | None = option(None, "the leader's backbone, e.g. a folder saved by `mlpo.py train`")
    device: str | None = option(None, "cuda, cpu, ... (default: cuda when present)")
    dtype: str | None = option(None, "float32, bfloat16 (default: bf16 on cuda, fp32 on cpu)")
    batch_size: int | None = option(None, "problems run together, every method in lockstep; a resumed run re-runs "
                                          "an unfinished batch (default: "
                                          f"{BATCH_SIZE['cpu']} on a CPU, {BATCH_SIZE['cuda']} on a GPU)")
    in_flight: int | None = option(None, "of a batch, the most problems whose model calls run at once: the next "
                                         "one starts as one ends (a rolling window), so memory follows this number "
                                         f"(default: {IN_FLIGHT['cpu']} on a CPU, {IN_FLIGHT_CPU['arith']} for arith's "
                                         "shorter solutions: engine.IN_FLIGHT_CPU; the whole batch on a GPU)")
    engine: bool = option(True, "run the models through the lockstep engine (engine.py); --no-engine: the "
                                "reference path, one program at a time through LLM.generate")
    max_new_tokens: int = option(256, "[ours] max new tokens of a cot / sc solution")
    sc_samples: int = option(8, "[ours] sampled chains for self-consistency")
    sc_temperature: float = option(0.7, "[ours] temperature of the self-consistency chains")
    progress: bool = option(True, "show a progress bar")
    check: bool = option(False, "print each role's model, its size in the dtype, the total against the GPU's "
                                "memory and whether each is in the local cache; load, download and run nothing")


# ================================================================ what methods share, and how it is charged

class SharedWork:
    """Work that several methods use for the same problem, done once and charged in full to each user.

    THE charging rule: a method's cost for a problem = what it asked of the models itself (billed to the
    problem's account while it ran) + the full cost of every piece of shared work it used for that problem,
    whether that work was computed during this method or an earlier one. So a method's charge never depends
    on which methods ran before it.
    """

    def __init__(self):
        self.results, self.costs = {}, {}
        self.used = collections.defaultdict(set)    # problem id -> keys of the shared work used by this method
        self.seconds_computing = 0.0                 # wall time spent computing shared work in this method

    def get(self, keys: list, compute, used: list | None = None) -> list:
        """The shared results `keys` (each a tuple starting with a problem id), computing the missing ones in
        one go: `compute(missing keys)` returns their results, each billed to its key's account. The method
        is charged for `used` (default: all of `keys`)."""
        missing = [key for key in keys if key not in self.results]
        if missing:
            start = time.perf_counter()
            for key, result in zip(missing, compute(missing)):
                self.results[key] = result
            wall = time.perf_counter() - start
            costs = {key: spent(key, forget=True) for key in missing}
            model_seconds = sum(cost["seconds"] for cost in costs.values())
            for key, cost in costs.items():   # the wall time, shared by the time each spent in the models
                share = cost["seconds"] / model_seconds if model_seconds > 0 else 1 / len(missing)
                self.costs[key] = {**cost, "seconds": wall * share}
            self.seconds_computing += wall
        for key in keys if used is None else used:
            self.used[key[0]].add(key)
        return [self.results[key] for key in keys]

    def start_method(self) -> None:
        self.used.clear()
        self.seconds_computing = 0.0

    def charge(self, problem_id: str) -> dict:
        """The full cost of the shared work the current method used for this problem."""
        return add_costs(*[self.costs[key] for key in sorted(self.used[problem_id], key=str)])

    def forget(self) -> None:
        """Drop the results of finished problems (they are large: whole search trees)."""
        self.results.clear()
        self.costs.clear()


class Context:
    """What a method may use: the configuration, the agents, the principal, the leader, and the shared work.

    Models load on first use (one copy per backbone), so a run loads only what its methods ask for.
    """

    def __init__(self, config: EvalConfig, search: SearchConfig | None = None, game: GameConfig | None = None,
                 leader_config: LeaderConfig | None = None, agents: list | None = None, principal=None,
                 leader=None, device: str | None = None):
        self.config = config
        self.search = search or SearchConfig()
        self.game = with_preset_defaults(game or GameConfig(), config.preset)
        self.leader_config = leader_config or LeaderConfig()
        self.device = device or config.device
        self._agents, self._principal, self._leader = agents, principal, leader
        self.role_model = None          # a NAME@MODEL row: MODEL plays the principal and the leader
        self.shared = SharedWork()
        self.seconds_loading = 0.0      # wall time spent loading models (no method is charged for it)

    def seed(self, problem, *parts) -> int:
        return derive_seed(self.config.seed, problem["id"], *parts)

    def _load(self, name: str):
        start = time.perf_counter()
        model = load_llm(name, self.device, self.config.dtype)
        self.seconds_loading += time.perf_counter() - start
        return model

    @property
    def agents(self) -> list:
        if self._agents is None:
            start = time.perf_counter()
            self._agents = make_agents(self.config.preset, self.config.model, self.device, self.config.dtype)
            self.seconds_loading += time.perf_counter() - start
        return self._agents

    @property
    def principal(self):
        if self.role_model:
            return self._load(self.role_model)
        if self._principal is None:
            self._principal = self._load(self.config.principal_model or self.config.model
                                         or PRESETS[self.config.preset]["principal"])
        return self._principal

    @property
    def leader(self):
        if self.role_model:
            return self._load(self.role_model)
        if self._leader is None:
            self._leader = self._load(self.config.leader or self.config.model or PRESETS[self.config.preset]["leader"])
        return self._leader

    def run(self, problems: list, program) -> list:
        """`program(problem)` (a generator, see engine.py) for every problem, all in lockstep; each problem's
        model use billed to it. Returns what each program returned."""
        return run_programs([program(p) for p in problems], accounts=[p["id"] for p in problems],
                            arenas=[p["id"] for p in problems], engine=self.config.engine,
                            window=self.config.in_flight)

    # -------------------------------------------------------- the shared work: ALIGN steps 1 and 3
    def searches(self, problems: list, agents: range | None = None) -> list:
        """Each agent's MCTS on each problem (mcts.search_all: all of them in lockstep), once per problem and
        agent; `agents` picks the ones the method uses and is charged for (default: all). Every agent's search
        is computed the first time any is asked for, so the batch is the same whichever method comes first.
        Returns searches[problem][agent]."""
        everyone = range(len(self.agents))
        agents = everyone if agents is None else agents
        keys = [(p["id"], "search", i) for p in problems for i in everyone]
        used = [(p["id"], "search", i) for p in problems for i in agents]
        by_id = {p["id"]: p for p in problems}

        def compute(missing):
            jobs = [(self.agents[i], by_id[pid]["question"], by_id[pid]["kind"], self.seed(by_id[pid], "search", i),
                     by_id[pid].get("examples")) for pid, _, i in missing]
            return search_all(jobs, self.search, accounts=missing, arenas=[pid for pid, _, _ in missing],
                              engine=self.config.engine, window=self.config.in_flight)
        results = dict(zip(keys, self.shared.get(keys, compute, used)))
        for key, result in results.items():
            result.cost = self.shared.costs[key]
        return [[results[(p["id"], "search", i)] for i in agents] for p in problems]

    def pools(self, problems: list) -> list:
        return [pool_classes(searches) for searches in self.searches(problems)]

    def principal_orders(self, problems: list) -> list:
        """The principal's order of each problem's pooled classes (align.principal_order_program), once per
        problem and principal, all problems in lockstep."""
        pools, principal = {p["id"]: pool for p, pool in zip(problems, self.pools(problems))}, self.principal
        by_id = {p["id"]: p for p in problems}

        def compute(missing):
            programs = [principal_order_program(principal, by_id[pid]["question"], by_id[pid]["kind"], pools[pid],
                                                self.game, self.seed(by_id[pid], "principal")) for pid, *_ in missing]
            return run_programs(programs, accounts=missing, arenas=[pid for pid, *_ in missing],
                                engine=self.config.engine, window=self.config.in_flight)
        return self.shared.get([(p["id"], "order", principal.name, self.game.principal_mode) for p in problems],
                               compute)


# ================================================================ methods
# Each takes a list of problems (id, question, kind, examples) and the context, and returns one result per
# problem: a dict with at least "prediction"; every other key goes into the record as it is. A method that asks
# the models itself writes a program per problem (a generator that yields engine.Requests, see engine.py) and
# runs it with `ctx.run`, so all problems of the batch share each model call.

def method_cot(problems, ctx):
    """Few-shot chain of thought, greedy, the first agent's model."""
    agent = ctx.agents[0]

    def program(problem):
        [[solution]] = yield [Request(agent.llm, agent.prompt(problem["question"], problem["kind"],
                                                              problem.get("examples")),
                                      max_new_tokens=ctx.config.max_new_tokens)]
        return {"prediction": extract_answer(solution.text, problem["kind"]), "raw": [solution.text]}
    return ctx.run(problems, program)


def method_sc(problems, ctx):
    """Self-consistency: k sampled chains of the first agent's model, majority vote."""
    agent = ctx.agents[0]

    def program(problem):
        [chains] = yield [Request(agent.llm, agent.prompt(problem["question"], problem["kind"], problem.get("examples")),
                                  n=ctx.config.sc_samples, temperature=ctx.config.sc_temperature,
                                  max_new_tokens=ctx.config.max_new_tokens, seed=ctx.seed(problem, "sc"))]
        samples = [Sample(extract_answer(c.text, problem["kind"]), c.text) for c in chains]
        return {"prediction": majority_answer(samples), "raw": [c.text for c in chains],
                "answers": [s.answer for s in samples]}
    return ctx.run(problems, program)


def method_mcts(problems, ctx):
    """One agent's MCTS (the first agent), majority over its solutions: rStar-like, no discriminator."""
    return [{"prediction": majority_answer(first.samples), "raw": [s.trace for s in first.samples],
             "agents": [first.describe()]} for (first,) in ctx.searches(problems, agents=range(1))]


def method_vote(problems, ctx):
    """All agents' MCTS solutions pooled, majority vote."""
    results = []
    for searches in ctx.searches(problems):
        pooled = [s for r in searches for s in r.samples]
        results.append({"prediction": majority_answer(pooled), "raw": [s.trace for s in pooled],
                        "agents": [r.describe() for r in searches]})
    return results


def method_principal(problems, ctx):
    """The principal's top class among all agents' pooled candidates: for the principal's own utility, an upper
    bound on what ALIGN (which delivers a class from the same pool) can reach."""
    results = []
    for searches, pool, order in zip(ctx.searches(problems), ctx.pools(problems), ctx.principal_orders(problems)):
        results.append({"prediction": pool.answers[order.order[0]] if order else None,
                        "raw": [order.reply] if order and order.reply else [],
                        "pool": [{"answer": a, "score": round(x, 4)} for a, x in zip(pool.answers, order.scores)]
                        if order else [],
                        "principal_parse_failed": bool(order and order.parse_failed),
                        "agents": [r.describe() for r in searches]})
    return results


def method_align(problems, ctx):
    """ALIGN: the delegation game over the agents' candidates and the principal's order (align.py)."""
    results = []
    for problem, searches, pool, order in zip(problems, ctx.searches(problems), ctx.pools(problems),
                                              ctx.principal_orders(problems)):
        game = delegate(pool, order, ctx.game, ctx.seed(problem, "align"))
        if game["diagnostics"] is None:
            game.pop("diagnostics")           # no game was played: no diagnostics to average
        results.append({**game, "raw": [], "agents": [r.describe() for r in searches]})
    return results


def method_leader(problems, ctx, team=True):
    """MLPO inference: the team answers, the leader aggregates, for T rounds (mlpo.py)."""
    agents, leader = ctx.agents, ctx.leader
    return ctx.run(problems, lambda p: lead_program(p["question"], p["kind"], agents, leader, ctx.leader_config,
                                                    ctx.seed(p, "leader"), team=team, examples=p.get("examples")))


def method_leader_solo(problems, ctx):
    """The leader alone, with no team (does MLPO training help the leader by itself?)."""
    return method_leader(problems, ctx, team=False)


METHODS = {"cot": method_cot, "sc": method_sc, "mcts": method_mcts, "vote": method_vote,
           "principal": method_principal, "align": method_align,
           "leader": method_leader, "leader-solo": method_leader_solo}
# A method named NAME@MODEL runs NAME with MODEL as its principal and its leader: e.g.
# `--methods leader,leader@checkpoints/leader` puts an untrained and a trained leader side by side. Only the methods
# that use a principal or a leader take @MODEL (a new method that uses ctx.principal or ctx.leader joins the list).
WITH_A_MODEL = ("principal", "align", "leader", "leader-solo")


def parse_methods(text: str) -> list[str]:
    """The --methods list, parsed once: spaces are fine; a duplicate or unknown name is an error."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m.partition("@")[0] not in METHODS or m.endswith("@")]
    if unknown:
        raise DataError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)} (and NAME@MODEL).")
    idle = [m for m in methods if "@" in m and m.partition("@")[0] not in WITH_A_MODEL]
    if idle:
        raise DataError(f"{idle[0]}: {idle[0].partition('@')[0]} uses neither a principal nor a leader, so @MODEL "
                        f"would change nothing; @MODEL goes with {', '.join(WITH_A_MODEL)}.")
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise DataError(f"method(s) {duplicates} listed twice in --methods; list each once.")
    if not methods:
        raise DataError(f"--methods is empty; pass some of: {', '.join(METHODS)}.")
    return methods


# ================================================================ the run
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
            try:
                lines = f.readlines()
            except UnicodeDecodeError:
                raise DataError(f"{path} is not a records file (not UTF-8 text); pass --overwrite to start it again "
                                f"or --output to write elsewhere.") from None
        for line in lines:
            if not line.endswith("\n"):              # cut short (drop_partial_last_line cuts it): run it again
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "problem_id" in record and "method" in record:   # not the settings
                records.append(record)
    return records


def drop_partial_last_line(path: str) -> None:
    """A kill can leave half a record at the end of a file: cut it, so the next record starts on its own line."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def principal_correlations(rows: list[dict]) -> dict:
    """What the principal knew, measured after grading: nothing here flows back into a method.

    [ours] For one record with a `pool` (principal, align), over its pooled classes:
      - the principal's score of each class (the record's `pool`);
      - the class's correctness, 1 if its answer is the gold answer (`is_correct` without a kind, i.e.
        `same_answer`; records keep no kind), else 0;
      - the agents' utility of the class: the mean over all the record's agents of U^i(class), with U^i = 0
        for an agent that did not find it (the mean, not the max: a class every agent found counts for more
        than one a single agent found, as in the pooled vote).
    Pearson's correlation of the scores with each, per problem, then averaged over the problems where it is
    defined. It is undefined on a problem with fewer than two classes, constant scores or a constant other
    side (no class right, or every class right): such a problem says nothing about whether the principal's
    order tracks the quantity, and is left out. Per problem, not pooled over problems, because the principal's
    order acts within a problem only: pooling would credit a principal whose scores merely run higher on the
    problems that happen to be easy. It is also the x-axis of `python align.py --study`.
    Returns {"correct": (mean or None, problems used), "agents": (mean or None, problems used)}.
    """
    def pearson(x: list, y: list):
        if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:      # exact test for constants: no NaN, no warning
            return None
        mx, my = sum(x) / len(x), sum(y) / len(y)
        sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
        return sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))

    per_problem = {"correct": [], "agents": []}
    for r in rows:
        pool, agents = r.get("pool") or [], r.get("agents") or []
        scores = [c["score"] for c in pool]
        correct = [float(is_correct(c["answer"], r["gold"])) for c in pool]   # reads the gold: after grading
        # an agent's utility of a pooled class: its classes there (two of them can meet in one, as pool_classes
        # pools them); is_correct without a kind is same_answer
        utility = [sum(sum(k["utility"] for k in a["classes"] if is_correct(k["answer"], c["answer"]))
                       for a in agents) / max(len(agents), 1) for c in pool]
        for key, other in (("correct", correct), ("agents", utility)):
            value = pearson(scores, other)
            if value is not None:
                per_problem[key].append(value)
    return {key: (sum(v) / len(v) if v else None, len(v)) for key, v in per_problem.items()}


def summarize(records: list[dict], methods: list[str]) -> str:
    """The table: accuracy with a 95% interval and cost per question, one row per method; for methods with a
    principal, how its scores correlated with correctness and with the agents' utilities (`principal_correlations`)."""
    width = max([len(m) for m in methods] + [6])
    header = (f"{'method':<{width}} {'n':>5} {'accuracy':>9} {'95% CI':>15} {'calls/q':>8} {'prompt tok/q':>12} "
              f"{'gen tok/q':>10} {'sec/q':>7}")
    correlation_columns = ("corr(P,correct)", "corr(P,agents)")
    diagnostic_columns = [("regret/bound", "regret_ratio"), ("Nash gap", "nash_gap"), ("Pareto", "pareto"),
                          ("chance level", "pareto_chance"), ("dominated BR", "dominated"), ("rounds", "rounds")]
    shown = [r for r in records if r["method"] in methods]
    with_pool = any(r.get("pool") for r in shown)
    if with_pool:
        header += "".join(f" {name:>15}" for name in correlation_columns)
    if any("diagnostics" in r for r in shown):
        header += "".join(f" {name:>12}" for name, _ in diagnostic_columns)
    lines, used = [header, "-" * len(header)], []
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
        if with_pool:
            if any(r.get("pool") for r in rows):
                correlations = principal_correlations(rows)
                line += "".join(f" {'n/a' if value is None else f'{value:+.2f}':>15}"
                                for value, _ in correlations.values())
                used.append(f"{method} {correlations['correct'][1]} and {correlations['agents'][1]}")
            else:
                line += " " * 16 * len(correlation_columns)
        diagnostics = [r["diagnostics"] for r in rows if r.get("diagnostics")]
        for _, key in diagnostic_columns if diagnostics else ():
            values = [d[key] for d in diagnostics if d.get(key) is not None]   # older runs lack some; None: n/a
            line += f" {sum(values) / len(values):>12.3f}" if values else f" {'n/a':>12}"
        lines.append(line.rstrip())
    if used:
        lines.append("(corr(P,correct), corr(P,agents): per problem, Pearson's correlation of the principal's scores "
                     "of the pooled classes with their correctness\n and with the agents' mean utility, averaged over "
                     f"the problems where it is defined; problems used: {'; '.join(used)})")
    if {m.partition("@")[0] for m in methods} & {"vote", "principal", "align"}:
        lines.append("(for scale: the ALIGN paper reports 73-103 model calls and 52K-264K tokens per question)")
    return "\n".join(lines)


def run_methods(problems: list, methods: list, ctx: Context, write, done: set = frozenset()) -> None:
    """Run every method on a batch of problems and write one record per (problem, method) not in `done`,
    charged by the rule of `SharedWork`. `write(problem, method, record)` stores a record.

    A method runs on the whole batch whenever any of its records is missing, so the batch (and with it every
    model call) is the same in a resumed run as in an uninterrupted one.
    """
    public = [{k: p[k] for k in ("id", "question", "kind", "examples") if k in p} for p in problems]  # no gold answer
    for method in methods:
        if all((p["id"], method) in done for p in problems):
            continue
        base, _, role_model = method.partition("@")
        ctx.role_model = role_model or None
        ctx.shared.start_method()
        before = [spent(p["id"]) for p in public]
        start, loading = time.perf_counter(), ctx.seconds_loading
        results = METHODS[base](public, ctx)
        own_seconds = (time.perf_counter() - start - ctx.shared.seconds_computing
                       - (ctx.seconds_loading - loading)) / len(problems)
        for problem, result, earlier in zip(problems, results, before):
            own = {k: v - earlier[k] for k, v in spent(problem["id"]).items()}
            cost = add_costs(own, ctx.shared.charge(problem["id"]))
            cost["seconds"] = own_seconds + ctx.shared.charge(problem["id"])["seconds"]
            record = {"problem_id": problem["id"], "dataset": problem.get("dataset"), "method": method,
                      "question": problem["question"], "prediction": result.pop("prediction"),
                      "gold": problem["answer"]}
            record["correct"] = is_correct(record["prediction"], problem["answer"], problem["kind"])  # reads the gold
            record.update({k: round(v, 3) if isinstance(v, float) else v for k, v in cost.items()})
            record.update(result)
            if (problem["id"], method) not in done:
                write(problem, method, record)
    ctx.role_model = None
    ctx.shared.forget()


def record_settings(config: EvalConfig, search: SearchConfig, game: GameConfig, leader_config: LeaderConfig) -> dict:
    """The settings that shape a record: an output file carries them on its first line, and `--resume` refuses
    to mix records made with other ones. (Left out: what only says which records to make or where -- methods,
    limit, output, data folder -- and the batch size, the problems in flight and the device, which change no record
    beyond float rounding. The dtype is in: `run` passes the one that runs, the machine's default if not given.)"""
    kept = {k: v for k, v in dataclasses.asdict(config).items()
            if k not in ("methods", "limit", "output", "resume", "overwrite", "data_dir", "device", "batch_size",
                         "in_flight", "progress")}
    return {**kept, **dataclasses.asdict(search), **dataclasses.asdict(game), **dataclasses.asdict(leader_config)}


def read_settings(path: str) -> dict | None:
    """The settings line of an output file (None: the file has none)."""
    if os.path.exists(path):
        with open(path, "rb") as f:                    # the first line alone (read_records reports bad bytes later)
            try:
                first = json.loads(f.readline().decode("utf-8") or "{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None
            return first.get("settings") if isinstance(first, dict) else None
    return None


def check_resume(path: str, settings: dict) -> None:
    """Refuse to resume a file written with other settings, saying which ones differ."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    written = read_settings(path)
    if written is None:
        raise DataError(f"{path} has no settings line, so its records cannot be checked against this run; "
                        f"pass --overwrite to start again or --output to write elsewhere.")
    differ = [f"{k}={written.get(k)!r} there, {v!r} here" for k, v in settings.items() if written.get(k) != v]
    if differ:
        raise DataError(f"{path} was written with other settings ({'; '.join(differ)}): --resume with the same "
                        f"settings, or pass --output to write elsewhere.")


def resume_command(world: int = 1) -> str:
    """The command line that continues this run (as many processes as it had: torchrun when more than one)."""
    args = [a for a in sys.argv[1:] if a not in ("--overwrite", "--resume")]
    launcher = ["python"] if world == 1 else ["torchrun", f"--nproc-per-node={world}"]
    return " ".join(shlex.quote(a) for a in [*launcher, os.path.basename(sys.argv[0]) or "evaluate.py", *args,
                                             "--resume"])


def rank_files_of(output: str) -> list[str]:
    """The per-process files of a data-parallel run writing `output` (output.rank0, ...), whatever its size: a run
    resumed with another number of processes still finds them, counts their records as done and merges them."""
    folder, name = os.path.split(os.path.abspath(output))
    if not os.path.isdir(folder):
        return []
    ranks = [f for f in os.listdir(folder) if f.startswith(name + ".rank") and f[len(name) + 5:].isdigit()]
    return [os.path.join(os.path.dirname(output), f) for f in sorted(ranks, key=lambda f: int(f[len(name) + 5:]))]


def batch_and_window(config: EvalConfig, machine: str) -> tuple[int, int | None]:
    """(--batch-size, --in-flight), each the machine's default when not given (engine.BATCH_SIZE, IN_FLIGHT; on a CPU,
    IN_FLIGHT_CPU for the datasets whose problems are small enough for more at once); in flight None: the whole
    batch at once."""
    batch_size = config.batch_size or BATCH_SIZE[machine]
    if machine == "cpu":
        default = IN_FLIGHT_CPU.get(config.dataset.partition(":")[0], IN_FLIGHT["cpu"])
    else:
        default = IN_FLIGHT[machine]
    in_flight = config.in_flight or default
    return batch_size, (in_flight if in_flight and in_flight < batch_size else None)


def run(config: EvalConfig, search: SearchConfig | None = None, game: GameConfig | None = None,
        leader_config: LeaderConfig | None = None) -> list[dict]:
    """Evaluate, writing records as it goes; returns all records of the requested methods."""
    search, game, leader_config = search or SearchConfig(), game or GameConfig(), leader_config or LeaderConfig()
    methods = parse_methods(config.methods)
    if config.dataset.partition(":")[0] not in DATASETS:           # bbh:TASK,... picks tasks (data.py)
        raise DataError(f"unknown dataset {config.dataset!r}; choose one of {sorted(DATASETS)}.")
    if config.preset not in PRESETS:
        raise DataError(f"unknown preset {config.preset!r}; choose one of {sorted(PRESETS)}.")
    game = with_preset_defaults(game, config.preset)     # the records' settings name the mode that ran
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    split = "" if config.split == "test" else f"-{config.split}"
    output = config.output or os.path.join("runs", f"{config.dataset.replace(':', '_')}{split}-{config.preset}-"
                                                   f"seed{config.seed}.jsonl")
    my_rank_file = f"{output}.rank{rank}" if world > 1 else None
    if (os.path.exists(output) or rank_files_of(output)) and not (config.resume or config.overwrite):
        raise DataError(f"{output} (or its .rankN files) exists: pass --resume to continue it, --overwrite to start "
                        f"again, or --output to write elsewhere.")                                  # every rank stops
    if config.resume and not config.overwrite and rank_files_of(output) and not os.path.exists(output):
        raise DataError(f"{output} is missing but its .rankN files are there, so their records cannot be checked "
                        f"against this run's settings; pass --overwrite to start again.")
    device = config.device
    machine = "cuda" if str(device or "").startswith("cuda") or (device is None and cuda_available()) else "cpu"
    # the settings name the dtype that runs (a GPU's bf16 and a CPU's fp32 write different text, so a file is
    # not continued in the other)
    settings = record_settings(dataclasses.replace(config, dtype=config.dtype or DEFAULT_DTYPE[machine]), search,
                               game, leader_config)
    if config.resume and not config.overwrite:
        check_resume(output, settings)
    problems = [{**p, "dataset": config.dataset}        # before anything is written: a data error leaves no file
                for p in load_problems(config.dataset, config.data_dir, config.limit, config.seed, config.split)]
    if world > 1:
        import torch
        import torch.distributed as dist
        if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
        dist.barrier()  # rank 0 has checked the output file before anyone writes
    if config.overwrite and rank == 0:
        for path in [output] + rank_files_of(output):
            if os.path.exists(path):
                os.remove(path)
    if rank == 0 and (not os.path.exists(output) or os.path.getsize(output) == 0):
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w", encoding="utf-8") as f:                     # the first line: the settings
            f.write(json.dumps({"settings": settings}) + "\n")
    if world > 1:
        dist.barrier()
    rank_files = rank_files_of(output)            # this run's, and any a run with another number of processes left
    done = {(r["problem_id"], r["method"]) for path in [output] + rank_files for r in read_records(path)}
    mine = problems[rank::world]
    batch_size, in_flight = batch_and_window(config, machine)
    config = dataclasses.replace(config, in_flight=in_flight)
    batches = [mine[k:k + batch_size] for k in range(0, len(mine), batch_size)]
    finished = sum(all((p["id"], m) in done for m in methods) for p in mine)
    if rank == 0:
        print(f"{config.dataset}: {len(problems)} problems x {len(methods)} methods ({', '.join(methods)}); "
              f"{finished} problems already done; batches of {batch_size} problems"
              f"{f', {config.in_flight} at once' if config.in_flight else ''}; "
              f"writing {output}")
    ctx = Context(config, search, game, leader_config, device=device)
    my_file = my_rank_file or output
    drop_partial_last_line(my_file)
    written = 0
    try:
        with open(my_file, "a", encoding="utf-8") as out, \
                tqdm(total=len(mine), initial=finished, disable=not config.progress or rank != 0, unit="problem",
                     desc="evaluating", dynamic_ncols=True) as bar:
            def write(problem, method, record):
                nonlocal written
                out.write(json.dumps(record) + "\n")
                out.flush()
                written += 1
            for batch in batches:
                if all((p["id"], m) in done for p in batch for m in methods):
                    continue
                run_methods(batch, methods, ctx, write, done)
                bar.update(sum(not all((p["id"], m) in done for m in methods) for p in batch))
    except KeyboardInterrupt:
        safe = len(read_records(my_file))
        raise SystemExit(f"interrupted: {safe} records are safe in {my_file} ({written} written by this run); "
                         f"continue with: {resume_command(world)}") from None
    if world > 1:
        dist.barrier()
    if rank == 0:  # merge the ranks' records (this run's, or an earlier run's) into the one output file
        drop_partial_last_line(output)
        merged = {(r["problem_id"], r["method"]) for r in read_records(output)}
        with open(output, "a", encoding="utf-8") as out:
            for path in rank_files_of(output):
                for r in read_records(path):
                    if (r["problem_id"], r["method"]) not in merged:
                        out.write(json.dumps(r) + "\n")
                        merged.add((r["problem_id"], r["method"]))
                out.flush()
                os.remove(path)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    wanted = {p["id"] for p in problems}
    return [r for r in read_records(output) if r["problem_id"] in wanted and r["method"] in methods]


def validate_eval_config(config: EvalConfig, search: SearchConfig, game: GameConfig,
                         leader_config: LeaderConfig) -> None:
    """A one-line error (ConfigError, DataError, ModelLoadError) for a command line the input alone shows is
    wrong, before any data or model is loaded."""
    methods = parse_methods(config.methods)
    if config.dataset.partition(":")[0] not in DATASETS:           # bbh:TASK,... picks tasks (data.py)
        raise ConfigError(f"--dataset must be one of {', '.join(sorted(DATASETS))} (got {config.dataset!r})")
    splits = DATASETS[config.dataset.partition(":")[0]][1]
    require(config, "split", lambda split: split in splits, f"one of {', '.join(splits)} for this dataset")
    require(config, "preset", lambda preset: preset in PRESETS, f"one of {', '.join(PRESETS)}")
    require(config, "limit", lambda limit: limit is None or limit >= 1, "at least 1",
            "leave it out for every problem")
    require_at_least(config, 1, "sc_samples", "max_new_tokens")
    require(config, "batch_size", lambda size: size is None or size >= 1, "at least 1",
            "leave it out for the default of this machine")
    require(config, "in_flight", lambda size: size is None or size >= 1, "at least 1",
            "leave it out for the default of this machine")
    require(config, "sc_temperature", lambda t: t >= 0, "at least 0")
    if config.resume and config.overwrite:
        raise ConfigError("--resume continues the output file and --overwrite starts it afresh; pass one of them")
    if config.data_dir and not os.path.isdir(config.data_dir):
        raise ConfigError(f"--data-dir {config.data_dir}: no such folder; pass the folder holding the dataset files")
    if config.output and os.path.isdir(config.output):
        raise ConfigError(f"--output {config.output} is a folder; pass a file name, e.g. {config.output}/run.jsonl")
    check_device_and_dtype(config.device, config.dtype)
    for name in [config.model, config.principal_model, config.leader] + [m.partition("@")[2] for m in methods]:
        if name:
            check_model_name(name)
    validate_search_config(search)
    validate_game_config(game)
    validate_leader_config(leader_config)


def role_models(config: EvalConfig) -> list:
    """(role, model name) for every role a run of this configuration may load, as Context would load it."""
    preset = PRESETS[config.preset]
    roles = [(f"agent-{i} (T={temperature})", config.model or name) for i, (name, temperature)
             in enumerate(preset["agents"])]
    roles.append(("principal", config.principal_model or config.model or preset["principal"]))
    roles.append(("leader", config.leader or config.model or preset["leader"]))
    return roles + [(f"principal+leader of {method.partition('@')[0]}@", method.partition("@")[2])
                    for method in parse_methods(config.methods) if "@" in method]


def main(argv=None):
    config, search, game, leader_config = parse_configs(__doc__.split("\n\n")[0], EvalConfig, SearchConfig,
                                                        GameConfig, LeaderConfig, argv=argv)
    try:
        validate_eval_config(config, search, game, leader_config)
    except (ConfigError, DataError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}") from None
    if config.check:
        print(describe_models(role_models(config), config.device, config.dtype))
        return []
    game = with_preset_defaults(game, config.preset)     # --principal-mode left out: the preset's
    keep_big_blocks_in_mmap()                             # a long run's memory stays flat (engine.py)
    if int(os.environ.get("RANK", 0)) == 0:
        print_config(config, search, game, leader_config)
    try:
        records = run(config, search, game, leader_config)
    except (ConfigError, DataError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}") from None
    if int(os.environ.get("RANK", 0)) == 0:
        print(summarize(records, parse_methods(config.methods)))
        if sys.platform != "win32":
            import resource  # peak resident memory of this process (Linux reports kilobytes)
            print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB")
    return records


if __name__ == "__main__":
    main()
