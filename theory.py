"""
theory.py -- synthetic delegation games: ALIGN's theorems checked on the quantities they are about, no model.

ALIGN, "Aligned Delegation with Performance Guarantees for Multi-Agent LLM Reasoning" (arXiv 2602.00127):
    # [paper] Theorem 1: under a fair comparison -- a single agent with equal access to the same candidate
    #         solutions -- ALIGN's expected *principal utility* is at least the single agent's, under
    #         Assumption 1: (i) Pareto-optimal play, (ii) symmetric agents, (iii) non-negative correlation
    #         between the principal's and the agents' utilities.
    # [paper] Theorem 2: each agent's cumulative regret is O(sqrt T).
    # [paper] Theorem 3: the average policies form a xi_T(delta)-approximate Nash equilibrium.
The games are [ours] (`synthetic_question`): no LLM, every quantity known, the principal-agent correlation
set directly. The game itself is align.py's `play_delegation_game`, unchanged.

Run (seeded, about a minute on one core):
    python theory.py                 # the same as: python align.py --simulate
    python theory.py --study RECORDS.jsonl   # the same as: python align.py --study RECORDS.jsonl

The second command is an ORACLE STUDY (`print_study`, at the end of this file): it replays the candidate pools
saved in an evaluate.py run with simulated principals whose scores correlate with correctness at set levels, to
find how well a principal must know the truth for ALIGN to beat the pooled vote. The simulated principal reads
the gold answers; no method sees them.

It prints Theorem 1 on the principal's utility, with accuracy beside it (outside the theorem); the game's
diagnostics per delegation rule and per stopping rule; Theorems 2 and 3 at the paper's eta = 0.1, T = 20 and
at a tuned eta, with the regret against an adaptive adversary; the Nash gap under a noisy principal; and, last,
Theorem 1's smallest margin over the non-negative correlations.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import types
import zlib

import numpy as np

from align import DELEGATION_RULES, GameConfig, Player, Pool, play_delegation_game, pool_classes
from hedge import Hedge, adversarial_regret, hedge_regret_bound, softmax, tuned_learning_rate
from principal import PrincipalOrder, plackett_luce_order, select_final
from utility import AnswerClass, Sample, is_correct

CORRELATIONS = (1.0, 0.5, 0.0, -0.5, -1.0)


@dataclasses.dataclass
class SyntheticQuestion:
    players: list                  # each agent's classes and its self-consistency U^i over them
    principal_utility: np.ndarray  # the principal's utility of each pooled class; it ranks by it
    quality: np.ndarray            # the agents' shared latent quality of each class
    pooled_utility: np.ndarray     # self-consistency over every agent's samples together

    @property
    def ranking(self) -> list:
        return [int(k) for k in np.argsort(-self.principal_utility, kind="stable")]

    @property
    def correct(self) -> int:      # [ours] the correct answer is the class of highest quality
        return int(np.argmax(self.quality))


def synthetic_question(rng: np.random.Generator, correlation: float, num_agents: int = 3, pool_size: int = 6,
                       samples: int = 8, sharpness: float = 1.0, agent_noise: float = 0.5) -> SyntheticQuestion:
    """[ours] One question: who finds what, how sure each agent is, and what the principal wants.

    Each class k has a latent quality q_k ~ N(0, 1), the agents' common view of it (symmetric agents,
    Assumption 1(ii)). The principal's utility is s = c q + sqrt(1 - c^2) e with e ~ N(0, 1) independent, so
    corr(s, q) = c exactly: the principal-agent correlation of Assumption 1(iii), set directly. Agent i draws
    `samples` solutions, class k with probability proportional to exp(sharpness q_k + agent_noise e^i_k); it
    finds the classes it drew, and U^i is each one's share of its draws. U is a finite-sample, noisy reading of
    q, so corr(s, U) is weaker than c; `simulate` reports it as measured.
    """
    quality = rng.normal(size=pool_size)
    principal_utility = correlation * quality + math.sqrt(1 - correlation ** 2) * rng.normal(size=pool_size)
    players, pooled = [], np.zeros(pool_size)
    for i in range(num_agents):
        counts = rng.multinomial(samples, softmax(sharpness * quality + agent_noise * rng.normal(size=pool_size)))
        found = np.flatnonzero(counts)
        players.append(Player(f"agent-{i}", [int(k) for k in found], counts[found] / samples))
        pooled += counts
    return SyntheticQuestion(players, principal_utility, quality, pooled / pooled.sum())


def delivered_classes(question: SyntheticQuestion, game: dict) -> dict:
    """The class each method delivers on one question."""
    ranking = question.ranking
    return {
        "ALIGN": game["final"],
        # [ours] Theorem 1's single agent: it sees every agent's candidates (the pooled classes) and picks by
        # its own utility, the self-consistency of all the samples together, as if one agent had drawn them
        # (evaluate.py's `vote`)
        "single agent": int(np.argmax(question.pooled_utility)),
        # the no-game control: each agent submits its most self-consistent class once; the principal picks
        "no game": select_final([p.actions[int(np.argmax(p.utility))] for p in question.players], ranking),
        # the principal's top class of the pool (the classes some agent found; the principal ranks all six): the
        # most its utility can be, since ALIGN delivers a class from the same pool (evaluate.py's `principal`)
        "principal's top": next(k for k in ranking if any(k in p.actions for p in question.players)),
    }


def simulate(num_games: int, correlation: float, config: GameConfig, seed: int = 0, tune_eta: bool = False,
             learner_class=Hedge) -> dict:
    """Seeded synthetic games: each method's principal utility and accuracy, and the game's diagnostics.

    tune_eta: eta = sqrt(8 ln K / (T R^2)) per game, the O(sqrt T) regime of Theorem 2.
    """
    rng = np.random.default_rng(seed)
    utility, accuracy, diagnostics = (collections.defaultdict(list) for _ in range(3))
    principal_side, agent_side, regrets, bounds, per_round = [], [], [], [], []
    for g in range(num_games):
        question = synthetic_question(rng, correlation)
        ranking, game_config = question.ranking, config
        if tune_eta:
            game_config = dataclasses.replace(config, eta=tuned_learning_rate(
                config.max_rounds, max(len(p.actions) for p in question.players),
                DELEGATION_RULES[config.rule].utility_range))
        order = PrincipalOrder(list(range(len(ranking))), question.principal_utility.tolist(), ranking)
        noise = np.random.default_rng([seed, g])               # each round's ranking, when tau > 0
        game = play_delegation_game(question.players, lambda t: plackett_luce_order(order, config.principal_tau, noise),
                                    ranking, game_config, seed=seed * 100003 + g, learner_class=learner_class)
        for method, k in delivered_classes(question, game).items():
            utility[method].append(question.principal_utility[k])
            accuracy[method].append(k == question.correct)
        d = game["diagnostics"]
        for key in ("rounds", "converged", "dominated", "pareto", "pareto_chance", "regret_ratio", "nash_gap",
                    "nash_gap_noise_free"):
            diagnostics[key].append(d[key])
        for player, regret, bound in zip(question.players, d["regret"], d["regret_bound"]):
            if len(player.actions) > 1:
                regrets.append(regret)
                bounds.append(bound)
                per_round.append(regret / d["rounds"])
                # the measured principal-agent correlation: s and U centred within each agent's own classes
                principal_side += list(question.principal_utility[player.actions] -
                                       question.principal_utility[player.actions].mean())
                agent_side += list(player.utility - player.utility.mean())
    return {"measured_correlation": float(np.corrcoef(principal_side, agent_side)[0, 1]),
            "principal_utility": {m: float(np.mean(v)) for m, v in utility.items()},
            "accuracy": {m: float(np.mean(v)) for m, v in accuracy.items()},
            **{key: float(np.mean([x for x in v if x is not None])) for key, v in diagnostics.items()},
            "regret": float(np.mean(regrets)), "regret_bound": float(np.mean(bounds)),
            "regret_per_round": float(np.mean(per_round)),
            "regret_over_bound": int(sum(r > b + 1e-9 for r, b in zip(regrets, bounds)))}


def theorem1_margin(runs: dict) -> float:
    """ALIGN's principal utility minus the equal-access single agent's, the smallest over correlations >= 0."""
    return min(runs[c]["principal_utility"]["ALIGN"] - runs[c]["principal_utility"]["single agent"]
               for c in runs if c >= 0)


def print_theory_checks(num_games: int = 300, seed: int = 0, config: GameConfig | None = None) -> float:
    """Print every table; return Theorem 1's smallest margin. The long games (T up to 160, a noisy principal)
    use a third of `num_games`. `config`: the game every table starts from (default: GameConfig()); each table
    changes only what it is about (the rule, the stopping rule, T and eta, tau)."""
    default, long_games = config or GameConfig(), num_games // 3
    vary = lambda **changes: dataclasses.replace(default, **changes)          # noqa: E731
    print(f"Synthetic games, {num_games} per row, seed {seed}: 3 agents, 6 classes, 8 samples per agent; "
          f"eta {default.eta}, T <= {default.max_rounds}, stopping {default.stopping} (patience {default.patience})")
    runs = {(c, rule): simulate(num_games, c, vary(rule=rule), seed) for c in CORRELATIONS
            for rule in DELEGATION_RULES}
    methods = ("single agent", "no game", "principal's top")
    for quantity, title in [("principal_utility", "Theorem 1: the principal's expected utility (its score of the "
                             "delivered class); single agent = equal access, picks by its own utility"),
                            ("accuracy", "Accuracy (delivered class = the best class): OUTSIDE Theorem 1, which is "
                             "about the principal's utility")]:
        print(f"\n{title}")
        print(f"  {'corr set':>8} {'measured':>8} {'ALIGN':>8} {'ALIGN01':>8} {'single':>8} {'no game':>8} "
              f"{'top':>8} {'margin':>8}")
        for c in CORRELATIONS:
            product, product01 = runs[c, "product"], runs[c, "product01"]
            row = [product[quantity]["ALIGN"], product01[quantity]["ALIGN"]] + [product[quantity][m] for m in methods]
            print(f"  {c:>+8.1f} {product['measured_correlation']:>+8.2f} " + " ".join(f"{x:>8.3f}" for x in row)
                  + f" {row[0] - row[2]:>+8.3f}")
    print("  (ALIGN: the paper's product rule, ALIGN01: product01; top: the principal's top class of the pool, "
          "its upper bound;\n   margin: ALIGN - single. corr < 0 is outside Assumption 1(iii), where the theorem "
          "promises nothing)")

    print("\nThe game per delegation rule, all correlations (Pareto chance: uniform submissions on the same pools):")
    print(f"  {'rule':<10} {'rounds':>7} {'stopped':>8} {'dominated BR':>13} {'Pareto':>7} {'chance':>7} "
          f"{'regret/bound':>13} {'Nash gap':>9}")
    for rule in DELEGATION_RULES:
        mean = lambda key: np.mean([runs[c, rule][key] for c in CORRELATIONS])   # noqa: E731
        print(f"  {rule:<10} {mean('rounds'):>7.2f} {mean('converged'):>8.2f} {mean('dominated'):>13.3f} "
              f"{mean('pareto'):>7.3f} {mean('pareto_chance'):>7.3f} {mean('regret_ratio'):>13.3f} "
              f"{mean('nash_gap'):>9.4f}")

    print(f"\nStopping rules ({default.rule} rule, correlation +0.5, eta {default.eta}, T <= {default.max_rounds}):")
    print(f"  {'stopping':<20} {'rounds':>7} {'stopped':>8} {'ALIGN utility':>14} {'ALIGN accuracy':>15}")
    for name, config in [(f"argmax, patience {p}", vary(stopping="argmax", patience=p)) for p in (2, 3, 5)] + \
                        [(f"l1, tolerance {default.tolerance:g}", vary(stopping="l1")),
                         ("none", vary(stopping="none"))]:
        s = simulate(num_games, 0.5, config, seed)
        print(f"  {name:<20} {s['rounds']:>7.2f} {s['converged']:>8.2f} {s['principal_utility']['ALIGN']:>14.3f} "
              f"{s['accuracy']['ALIGN']:>15.3f}")

    print(f"\nTheorems 2 and 3 ({long_games} games per row; {default.rule} rule, correlation +0.5, all T rounds "
          "played; adversary: 3 actions, the most likely one gets -1, the others +1):")
    print(f"  {'eta':<6} {'T':>4} {'regret':>8} {'bound':>8} {'over bound':>11} {'regret/T':>9} "
          f"{'adversary':>10} {'its bound':>10} {'Nash gap':>9}")
    for eta_name, T in [(f"{default.eta:g}", default.max_rounds), ("tuned", 10), ("tuned", 40), ("tuned", 160)]:
        config = vary(stopping="none", max_rounds=T)
        s = simulate(long_games, 0.5, config, seed, tune_eta=eta_name == "tuned")
        eta = default.eta if eta_name != "tuned" else tuned_learning_rate(T, 3)
        adversary = adversarial_regret(Hedge(3, eta), T)
        print(f"  {eta_name:<6} {T:>4} {s['regret']:>8.3f} {s['regret_bound']:>8.3f} {s['regret_over_bound']:>11d} "
              f"{s['regret_per_round']:>9.4f} {adversary:>10.3f} {hedge_regret_bound(T, 3, eta):>10.3f} "
              f"{s['nash_gap']:>9.4f}")

    print(f"\nA noisy principal ({long_games} games per row; Plackett-Luce, {default.rule} rule, correlation +0.5, "
          f"eta {default.eta}, T = {default.max_rounds} played): Nash gap of the average policies")
    for tau in (0.25, 1.0):
        s = simulate(long_games, 0.5, vary(stopping="none", principal_tau=tau), seed)
        print(f"  tau {tau:<5} over the rankings drawn {s['nash_gap']:.4f}   against the noise-free ranking "
              f"{s['nash_gap_noise_free']:.4f}")

    margin = theorem1_margin({c: runs[c, "product"] for c in CORRELATIONS})
    print(f"\ntheorem1 min margin at corr>=0: {margin:+.3f}")
    return margin


# ================================================================ ORACLE STUDY: when does delegation pay?
# ORACLE STUDY: the simulated principal reads the gold answers; no method sees them. Everything below replays a
# finished run's records: the agents' answer classes and utilities as they were found, a principal of known
# quality put in place of the real one. No model runs, and nothing here reaches evaluate.py's methods.

STUDY_LEVELS = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)
REPLAYED_METHODS = ("align", "principal", "vote")  # their records carry every agent's classes (one search serves all)
STUDY_METHODS = ("ALIGN", "vote", "principal", "single agent", "no game")


@dataclasses.dataclass
class ReplayedProblem:
    """One problem of a run, rebuilt from its records."""
    problem_id: str
    pool: Pool                  # the pooled classes and the agents as Players, made by align.pool_classes
    counts: np.ndarray          # samples in each pooled class, all agents together
    solutions: int              # every agent's samples, answerless ones included
    correct: np.ndarray         # ORACLE: each pooled class graded against the gold answer
    agents_utility: np.ndarray  # the agents' mean U of each class, 0 for an agent that did not find it
    recorded: dict              # what the run recorded, to check the replay: its pool's answers, vote's answer

    @property
    def pooled_utility(self) -> np.ndarray:   # self-consistency of all the samples together (theory's single agent)
        return self.counts / max(self.solutions, 1)


def read_jsonl(path: str) -> list[dict]:
    """A run's records (a line that does not parse, cut short by a kill, is dropped)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as error:
        raise SystemExit(f"error: cannot read the records: {error}") from None
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "problem_id" in record:                   # not the settings line an output file starts with
            records.append(record)
    return records


def replay_problems(records: list[dict]) -> tuple[list, list]:
    """Each problem's candidate pool from its align record (else its principal or vote record).

    Records keep each agent's classes with their utility and count -- all the game needs. They keep no traces,
    and a simulated principal needs none: the representatives are placeholders. Returns the problems with a
    non-empty pool, and the ids of those skipped (no agent reached an answer).
    """
    chosen, recorded = {}, collections.defaultdict(dict)
    for r in records:
        method = r["method"].partition("@")[0]
        if method not in REPLAYED_METHODS or not r.get("agents"):
            continue
        if r["problem_id"] not in chosen or method == "align":
            chosen[r["problem_id"]] = r
        if r.get("pool"):
            recorded[r["problem_id"]]["pool"] = [c["answer"] for c in r["pool"]]
        if r["method"] == "vote":
            recorded[r["problem_id"]]["vote"] = r["prediction"]
    problems, skipped = [], []
    for problem_id, r in chosen.items():
        searches = [types.SimpleNamespace(agent=a["agent"], classes=[   # pool_classes reads .agent and .classes
            AnswerClass(c["answer"], [Sample(c["answer"], "")] * c["count"], c["utility"]) for c in a["classes"]])
            for a in r["agents"]]
        pool = pool_classes(searches)                                 # merged by same_answer, as in the run
        if not pool.answers:
            skipped.append(problem_id)
            continue
        counts, agents_utility = np.zeros(len(pool.answers)), np.zeros(len(pool.answers))
        for search, player, homes in zip(searches, pool.players, pool.homes):
            np.add.at(counts, homes, [len(c.samples) for c in search.classes])   # two classes may share a home
            agents_utility[player.actions] += player.utility
        correct = np.array([is_correct(a, r["gold"]) for a in pool.answers])       # ORACLE: reads the gold
        problems.append(ReplayedProblem(problem_id, pool, counts, sum(a["solutions"] for a in r["agents"]), correct,
                                        agents_utility / len(pool.players), dict(recorded[problem_id])))
    return problems, skipped


def oracle_scores(correct: np.ndarray, correlation: float, noise: np.ndarray) -> np.ndarray:
    """ORACLE. [ours] The simulated principal's score of each pooled class: s = c z + sqrt(1 - c^2) e, with z the
    classes' correctness standardised within the problem (mean 0, variance 1; z = 0 when every class is right or
    every class is wrong) and e ~ N(0, 1) independent. Over the noise corr(s, correctness) = c; on a problem's few
    classes the sample correlation scatters around it, and the study prints it as measured."""
    y = correct.astype(float)
    z = (y - y.mean()) / y.std() if y.std() > 0 else np.zeros_like(y)
    return correlation * z + math.sqrt(max(0.0, 1 - correlation ** 2)) * noise


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's correlation; None where undefined (fewer than 2 points, or a side constant): no NaN, no warning.
    With evaluate.py's `principal_correlations`, the same definition: per problem, then averaged."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def replay_game(problem: ReplayedProblem, correlation: float, draw: int, config: GameConfig, seed: int = 0) -> dict:
    """One draw of the simulated principal on one problem, and the class each method delivers.

    Common random numbers: the noise e and the game's seed depend on (seed, draw, problem), not on the level,
    so between levels only c changes and the curve is smooth.
    """
    index = zlib.crc32(str(problem.problem_id).encode())              # a stable number per problem
    rng = np.random.default_rng([seed, draw, index])
    scores = oracle_scores(problem.correct, correlation, rng.normal(size=len(problem.correct)))
    ranking = [int(k) for k in np.argsort(-scores, kind="stable")]
    order = PrincipalOrder(problem.pool.answers, scores.tolist(), ranking)
    playing = [p for p in problem.pool.players if p.actions]
    game = play_delegation_game(playing, lambda t: plackett_luce_order(order, config.principal_tau, rng), ranking,
                                config, seed=seed * 100003 + draw * 1009 + index)
    delivered = {
        "ALIGN": game["final"],
        "vote": int(np.argmax(problem.counts)),       # the pooled majority; ties: the earliest class, as in evaluate
        "principal": ranking[0],                      # the principal's own pick: its top class of the pool
        # [ours] Theorem 1's equal-access single agent, as in `delivered_classes`: the highest self-consistency of
        # all the samples together. It is the pooled vote by definition; printed to keep the theorem's comparison.
        "single agent": int(np.argmax(problem.pooled_utility)),
        "no game": select_final([p.actions[int(np.argmax(p.utility))] for p in playing], ranking),
    }
    return {"scores": scores, "ranking": ranking, "delivered": delivered,
            "final_submissions": game["final_submissions"]}


def principal_quality_study(problems: list, levels=STUDY_LEVELS, draws: int = 20, config: GameConfig | None = None,
                            seed: int = 0) -> dict:
    """ORACLE (the scores read the gold). Per level c: each method's accuracy and principal utility, averaged over
    problems and draws; the correlations measured; how often ALIGN delivers a class the principal scores highest,
    and how often the right class is in the pool but in no agent's final submission."""
    config = config or GameConfig()
    results = {}
    for c in levels:
        tally = collections.defaultdict(list)
        for draw in range(draws):
            for problem in problems:
                game = replay_game(problem, c, draw, config, seed)
                for method, k in game["delivered"].items():
                    tally["accuracy", method].append(problem.correct[k])
                    tally["utility", method].append(game["scores"][k])
                scores = game["scores"]                 # "top": a class the principal scores highest (ties count)
                tally["top delivered"].append(scores[game["delivered"]["ALIGN"]] == scores.max())
                if problem.correct.any():
                    tally["missed"].append(not problem.correct[game["final_submissions"]].any())
                for key, other in (("corr correct", problem.correct), ("corr agents", problem.agents_utility)):
                    value = pearson(game["scores"], other.astype(float))
                    if value is not None:
                        tally[key].append(value)
        mean = lambda key: float(np.mean(tally[key])) if tally[key] else None    # noqa: E731
        results[c] = {"accuracy": {m: mean(("accuracy", m)) for m in STUDY_METHODS},
                      "principal_utility": {m: mean(("utility", m)) for m in STUDY_METHODS},
                      **{key: mean(key) for key in ("corr correct", "corr agents", "top delivered", "missed")}}
    return results


def break_even(results: dict) -> float | None:
    """The lowest level at which ALIGN's accuracy is strictly above vote's; a tie does not count. None: never."""
    return next((c for c in sorted(results) if results[c]["accuracy"]["ALIGN"] > results[c]["accuracy"]["vote"]),
                None)


def print_study(path: str, config: GameConfig | None = None, draws: int = 20, seed: int = 0) -> float | None:
    """ORACLE STUDY: the simulated principal reads the gold answers; no method sees them.

    Replays the pools of the run in `path` (records of evaluate.py) at every level of STUDY_LEVELS and prints each
    method's accuracy and principal utility, then the break-even line; returns the break-even level (None: none).
    """
    config = config or GameConfig()
    problems, skipped = replay_problems(read_jsonl(path))
    fmt = lambda x, spec="+.2f": "n/a" if x is None else format(x, spec)    # noqa: E731
    print("ORACLE STUDY: the simulated principal reads the gold answers; no method sees them.")
    # the replay checked against the run: the same pooled classes, the same pooled vote
    pools = [p.recorded["pool"] == p.pool.answers for p in problems if "pool" in p.recorded]
    votes = [p.recorded["vote"] == p.pool.answers[int(np.argmax(p.counts))] for p in problems if "vote" in p.recorded]
    print(f"{path}: {len(problems)} problems replayed, {len(skipped)} skipped (empty pool); the right answer is in "
          f"the pool on {sum(p.correct.any() for p in problems)}. Replay checks: pool as recorded "
          f"{sum(pools)}/{len(pools)}, vote as recorded {sum(votes)}/{len(votes)}.")
    print(f"Simulated principal: s = c z(correct) + sqrt(1 - c^2) e; {draws} draws per level, seed {seed}. Game: eta "
          f"{config.eta}, T <= {config.max_rounds}, rule {config.rule}, stopping {config.stopping} "
          f"(patience {config.patience}), tau {config.principal_tau}")
    if not problems:
        print("break-even principal correlation: none")
        return None
    results = principal_quality_study(problems, STUDY_LEVELS, draws, config, seed)
    columns = "".join(f" {m:>10}" for m in ("ALIGN", "vote", "principal", "single", "no game"))
    print("\nAccuracy (the delivered class is right)")
    print(f"  {'corr set':>8} {'measured':>8} {'P~agents':>8}{columns} {'top deliv.':>10} {'missed':>8}")
    for c, s in results.items():
        print(f"  {c:>+8.2f} {fmt(s['corr correct']):>8} {fmt(s['corr agents']):>8}"
              + "".join(f" {s['accuracy'][m]:>10.3f}" for m in STUDY_METHODS)
              + f" {fmt(s['top delivered'], '.3f'):>10} {fmt(s['missed'], '.3f'):>8}")
    print("\nThe principal's utility (its score of the delivered class)")
    print(f"  {'corr set':>8}{columns} {'margin':>8}")
    for c, s in results.items():
        u = s["principal_utility"]
        print(f"  {c:>+8.2f}" + "".join(f" {u[m]:>10.3f}" for m in STUDY_METHODS)
              + f" {u['ALIGN'] - u['single agent']:>+8.3f}")
    print("  (measured: corr(s, correctness) and P~agents: corr(s, the agents' mean U), per problem, averaged where "
          "defined, as in evaluate.py's table;\n   principal: its own top class of the pool; single: Theorem 1's "
          "equal-access agent, the pooled self-consistency, which is the pooled vote;\n   no game: each agent "
          "submits its most self-consistent class once; top deliv.: ALIGN delivered a class the principal scores "
          "highest;\n   missed: the right class was in the pool but in no agent's final submission; "
          "margin: ALIGN - single)")
    level = break_even(results)
    print("\nBreak-even: the lowest level at which ALIGN's accuracy is above vote's (equal accuracy does not count).")
    print(f"break-even principal correlation: {'none' if level is None else f'{level:.2f}'}")
    return level


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", metavar="RECORDS.jsonl", help="ORACLE STUDY: replay the records of an evaluate.py "
                        "run with simulated principals of known quality (reads the gold answers)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the games, at least 0 (default: 0)")
    arguments = parser.parse_args()               # `python align.py --simulate` takes the game's flags as well
    if arguments.seed < 0:
        parser.error(f"--seed must be at least 0 (got {arguments.seed})")
    if arguments.study:
        print_study(arguments.study, seed=arguments.seed)
    else:
        print_theory_checks(seed=arguments.seed)
