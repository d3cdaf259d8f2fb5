"""
align.py -- ALIGN: agents search, the principal ranks, the agents learn what to submit, the principal picks.

ALIGN, "Aligned Delegation with Performance Guarantees for Multi-Agent LLM Reasoning" (arXiv 2602.00127).
`solve` below is the whole pipeline for one question, one step per line, in the paper's order:

    1. candidates    each agent's MCTS finds complete solutions                       (mcts.py)
    2. utilities     solutions grouped into answer classes; U^i(a) = self-consistency  (utility.py)
    3. order         the principal orders the pooled classes once                     (principal.py)
    4-6. rounds      agents submit a ~ pi^i, the principal's ranking gives feedback r, Hedge updates pi^i
    7. final pick    the principal's top class among the agents' final submissions
    8. diagnostics   regret against the Hedge bound (Theorem 2), Nash gap (Theorem 3), Pareto compliance
                     beside its chance level, the share of best responses the rule makes Pareto-dominated

Steps 4-8 need no model: `play_delegation_game` takes each agent's classes with their utilities and the
principal's ranking. The synthetic games of theory.py use it to check the theorems.

Run:
    python align.py --question "Ava has 5 apples and buys 7 more. How many apples does she have?"
    python align.py --simulate            # synthetic games (theory.py): Theorems 1-3 with printed figures
    python align.py --study RECORDS.jsonl # ORACLE STUDY (theory.py): a run's pools, simulated principals

A forker tries a new delegation rule in the block marked `# DELEGATION RULE:` (registered by name in
DELEGATION_RULES, chosen with --rule); the game and its diagnostics (the regret bound included) follow from it.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import runpy
from typing import Callable

import numpy as np

from engine import run_programs
from hedge import Hedge, hedge_regret_bound
from llm import (PRESETS, ConfigError, ModelLoadError, check_device_and_dtype, check_model_name, derive_seed, load_llm,
                 option, parse_configs, print_config, require, require_at_least)
from mcts import SearchConfig, make_agents, search_all, validate_question, validate_search_config
from principal import PRINCIPAL_MODES, PrincipalOrder, plackett_luce_order, rank_program, select_final
from utility import same_answer


@dataclasses.dataclass
class GameConfig:
    """The delegation game (ALIGN steps 3-7)."""
    eta: float = option(0.1, "[paper] Hedge learning rate")
    max_rounds: int = option(20, "[paper] at most this many rounds")
    rule: str = option("product", "delegation rule (the DELEGATION RULE block): product ([paper] u = U*r) or "
                                  "product01 ([ours] u = U*(1+r)/2, feedback in [0, 1])")
    stopping: str = option("argmax", "[ours] stop early: argmax (every agent's most likely class the same after "
                                     "each of the last --patience rounds), l1 (every policy moved less than "
                                     "--tolerance in the last round), none")
    patience: int = option(3, "[ours] argmax stopping: the last rounds after which every agent's most likely class "
                              "must be the same (1 stops after the first round)")
    tolerance: float = option(1e-3, "[ours] l1 stopping: the L1 move below which a policy counts as still")
    principal_mode: str | None = option(None, "[ours] principal's order (principal.py): score (its P(Yes) that a "
                                              "solution is right), listwise, consistency or likelihood (default: the "
                                              "preset's, tiny " + PRESETS["tiny"]["principal_mode"] + ", paper "
                                              + PRESETS["paper"]["principal_mode"] + ")")
    principal_samples: int = option(8, "[ours] consistency mode: the principal's own sampled solutions")
    principal_temperature: float = option(0.7, "[ours] consistency mode: their temperature")
    principal_tau: float = option(0.0, "[ours] Plackett-Luce temperature of each round's ranking (0: fixed)")

    def __post_init__(self):
        require(self, "rule", lambda rule: rule in DELEGATION_RULES, f"one of {', '.join(DELEGATION_RULES)}")
        require(self, "stopping", lambda rule: rule in STOPPING_RULES, f"one of {', '.join(STOPPING_RULES)}")


def validate_game_config(config: GameConfig) -> None:
    """A one-line ConfigError for a game setting with no meaning (a rate or a round count that is not positive)."""
    require(config, "eta", lambda eta: eta > 0, "positive", "it is Hedge's learning rate (the paper's: 0.1)")
    require_at_least(config, 1, "max_rounds", "patience", "principal_samples")
    require(config, "principal_temperature", lambda t: t >= 0, "at least 0")
    require(config, "tolerance", lambda tolerance: tolerance >= 0, "at least 0")
    require(config, "principal_mode", lambda mode: mode is None or mode in PRINCIPAL_MODES,
            f"one of {', '.join(PRINCIPAL_MODES)}")
    require(config, "principal_tau", lambda tau: tau >= 0, "at least 0", "0 is the principal's fixed order")


def with_preset_defaults(config: GameConfig, preset: str) -> GameConfig:
    """The game settings with the preset's principal mode wherever --principal-mode was left out."""
    if config.principal_mode is None:
        return dataclasses.replace(config, principal_mode=PRESETS[preset]["principal_mode"])
    return config


# ================================================================ the pipeline, one question

def solve(question: str, kind: str, agents: list, principal, search_config: SearchConfig,
          game_config: GameConfig, seed: int = 0, examples: list | None = None) -> dict:
    """ALIGN on one question: returns the game's record, with the answer under "prediction".
    `examples`: the problem's own few-shot exemplars for the agents (BBH, MMLU; None: the built-in ones)."""
    seeds = [derive_seed(seed, "search", i) for i in range(len(agents))]
    searches = candidates(agents, question, kind, search_config, seeds, examples)  # 1. [paper] MCTS per agent
    pool = pool_classes(searches)                                             # 2. [paper] U^i(a) per class
    order = principal_order(principal, question, kind, pool, game_config,
                            derive_seed(seed, "principal"))                   # 3. the principal's order
    return delegate(pool, order, game_config, derive_seed(seed, "align"))     # 4-8. the game


def candidates(agents: list, question: str, kind: str, config: SearchConfig, seeds: list,
               examples: list | None = None, engine: bool = True) -> list:
    """Step 1. [paper] Each agent generates candidate answers with MCTS (16 rollouts, depth 5).
    [ours] The agents' searches run in lockstep (engine.py), sharing the prompt where their backbone is shared."""
    return search_all([(agent, question, kind, seed, examples) for agent, seed in zip(agents, seeds)], config,
                      arenas=[question] * len(agents), engine=engine)


@dataclasses.dataclass
class Player:
    """One agent as the game sees it: its answer classes (indices into the pool) and U^i of each."""
    name: str
    actions: list                 # pool indices of this agent's answer classes
    utility: np.ndarray           # U^i(a) for each action, in [0, 1]


@dataclasses.dataclass
class Pool:
    """Step 2. The agents' answer classes pooled: C = the union of every C_i, merged by `same_answer`."""
    answers: list                 # one answer per pooled class
    representatives: list         # the Sample shown to the principal for each class
    players: list                 # one Player per agent (an agent with no class has no actions)
    homes: list = dataclasses.field(default_factory=list)   # per agent: the pooled class of each of its classes


def pool_classes(searches: list) -> Pool:
    """Pool the agents' classes. [ours] A pooled class's representative is its highest-reward solution.

    U^i(a) is each agent's own self-consistency share (utility.py): [paper] "the empirical frequency of
    answer a among agent i's samples".
    """
    answers, representatives, players, homes = [], [], [], []
    for result in searches:
        actions, utilities, own_homes = [], [], []
        for c in result.classes:
            home = next((k for k, a in enumerate(answers) if same_answer(a, c.answer)), None)
            if home is None:
                answers.append(c.answer)
                representatives.append(c.representative)
                home = len(answers) - 1
            elif c.representative.reward > representatives[home].reward:
                representatives[home] = c.representative
            own_homes.append(home)
            if home in actions:   # [ours] same_answer is not transitive for decimals (2.334 ~ 2.33 ~ 2.326), so two
                utilities[actions.index(home)] += c.utility   # of an agent's classes can meet here: one action
                continue
            actions.append(home)
            utilities.append(c.utility)
        players.append(Player(result.agent, actions, np.array(utilities)))
        homes.append(own_homes)
    return Pool(answers, representatives, players, homes)


def principal_order(principal, question: str, kind: str, pool: Pool, config: GameConfig, seed: int,
                    engine: bool = True) -> PrincipalOrder | None:
    """Step 3. [ours] The principal orders the pooled classes once per question (None: an empty pool)."""
    (order,) = run_programs([principal_order_program(principal, question, kind, pool, config, seed)],
                            engine=engine and hasattr(principal, "model"))
    return order


def principal_order_program(principal, question: str, kind: str, pool: Pool, config: GameConfig, seed: int):
    """Step 3 as a program (engine.py), so many questions' orders can be computed in lockstep."""
    if config.principal_mode is None:
        raise ValueError("GameConfig.principal_mode is unset: name a mode, or take the preset's with "
                         "with_preset_defaults(config, preset)")
    return rank_program(principal, question, kind, pool.answers, [r.trace for r in pool.representatives],
                        config.principal_mode, seed, config.principal_samples, config.principal_temperature)


# ================================================================ DELEGATION RULE
# DELEGATION RULE: everything that says what a submission is worth to an agent sits in this block, so a
# forker changes it here and the game, the counterfactual utilities and the regret bound all follow.
#   - the feedback's shape over ranks: rank k (0 = best) of m distinct submissions -> r
#   - the agent's utility of a submission: u = f(U^i(a), r)
#   - the range of u (max - min over U in [0, 1] and every r), which Hedge's regret bound must use

@dataclasses.dataclass(frozen=True)
class DelegationRule:
    name: str
    feedback: Callable            # (k, m) -> r: the principal's feedback for rank k of m
    utility: Callable             # (U, r) -> u: what the agent gets for a submission
    utility_range: float          # max u - min u; the regret bound of Theorem 2 scales with it


def linear_rank_feedback(k: int, m: int) -> float:
    # [paper] +1 for the top-ranked submission, -1 for the bottom one.
    # [ours] linear in between; a lone submission (m = 1) gets +1.
    return 1.0 if m == 1 else 1.0 - 2.0 * k / (m - 1)


PRODUCT = DelegationRule(
    "product",
    feedback=linear_rank_feedback,
    utility=lambda U, r: U * r,   # [paper] "internal preference x ranking feedback"
    utility_range=2.0,            # U in [0, 1], r in [-1, 1]  =>  u in [-1, 1]
)
# [ours] With r < 0 the product rewards a *lower* U: behind another agent's top submission, a class of
# U 0.6 at rank 2 earns -0.6 and a class of U 0.4 at rank 3 earns -0.4, so the Pareto-dominated class is the
# best response, against Assumption 1(i). Mapping the feedback to [0, 1] makes u non-decreasing in U and
# in rank, so some Pareto-optimal class is always a best response.
PRODUCT01 = DelegationRule(
    "product01",
    feedback=linear_rank_feedback,
    utility=lambda U, r: U * (1 + r) / 2,
    utility_range=1.0,            # U in [0, 1], (1 + r) / 2 in [0, 1]  =>  u in [0, 1]
)
DELEGATION_RULES = {rule.name: rule for rule in (PRODUCT, PRODUCT01)}   # GameConfig.rule picks one by name


def rank_feedback(submitted: list, ranking: list, rule: DelegationRule = PRODUCT) -> dict:
    """r for each distinct submitted class, by its rank among the submissions in the principal's `ranking`.

    `submitted` holds pool indices (agents that submitted the same class share its rank); `ranking` is
    the principal's order of all pool indices, best first.
    """
    position = {index: k for k, index in enumerate(ranking)}
    distinct = sorted(set(submitted), key=lambda a: position[a])
    return {a: rule.feedback(k, len(distinct)) for k, a in enumerate(distinct)}


def counterfactual_utilities(player: Player, others_submitted: list, ranking: list,
                             rule: DelegationRule = PRODUCT) -> np.ndarray:
    """u(a) for every action a of the player: what a would have earned against the others' submissions.

    [ours] Full information: the principal's order covers every class, so no extra model call is needed.
    """
    return np.array([rule.utility(player.utility[k], rank_feedback(others_submitted + [a], ranking, rule)[a])
                     for k, a in enumerate(player.actions)])


# ================================================================ steps 4-8: the game

def delegate(pool: Pool, order: PrincipalOrder | None, config: GameConfig, seed: int = 0) -> dict:
    """The game on real candidates: abstaining agents recorded, noise applied, the final answer read off."""
    playing = [p for p in pool.players if p.actions]
    abstained = [p.name for p in pool.players if not p.actions]
    if not playing or order is None:       # no agent reached an answer: nothing to delegate
        return {"prediction": None, "abstained": abstained, "rounds": [], "diagnostics": None}
    rng = np.random.default_rng(seed)
    # [ours] optional noise: each round's ranking is drawn from Plackett-Luce over the scores (tau = 0: fixed)
    game = play_delegation_game(playing, lambda t: plackett_luce_order(order, config.principal_tau, rng),
                                order.order, config, seed)
    game.update(prediction=pool.answers[game["final"]], abstained=abstained, players=[p.name for p in playing],
                pool=[{"answer": a, "score": round(s, 4)} for a, s in zip(pool.answers, order.scores)],
                principal_order=order.order, principal_parse_failed=order.parse_failed)
    return game


def play_delegation_game(players: list, ranking_for_round: Callable[[int], list], base_ranking: list,
                         config: GameConfig, seed: int = 0, learner_class=Hedge) -> dict:
    """Rounds of submission, ranking and Hedge updates; the record of the game with its diagnostics.

    players: agents with at least one class. ranking_for_round(t): the principal's order of all pool
    indices in round t (best first). base_ranking: its deterministic order (the final pick, the
    noise-free Nash gap).
    learner_class: Hedge, or anything with its interface (the tests put impostors here).
    """
    rule = DELEGATION_RULES[config.rule]
    # [paper] policies start uniform; Hedge = online mirror descent with the entropy regulariser (hedge.py)
    learners = [learner_class(len(p.actions), config.eta, seed=seed * 7919 + i) for i, p in enumerate(players)]
    rounds, converged = [], False
    for t in range(config.max_rounds):                                       # [paper] at most T = 20 rounds
        ranking = ranking_for_round(t)
        before = [learner.policy() for learner in learners]
        choices = [learner.sample() for learner in learners]                 # 4. a_t^i ~ pi_t^i (seeded)
        submitted = [p.actions[c] for p, c in zip(players, choices)]
        utilities = []
        for i, (player, learner) in enumerate(zip(players, learners)):
            # 5. u_t^i(a) for every a: the feedback a would have got against the others' submissions
            u = counterfactual_utilities(player, submitted[:i] + submitted[i + 1:], ranking, rule)
            learner.update(u)                                                # 6. Hedge step
            utilities.append(u)
        after = [learner.policy() for learner in learners]
        rounds.append({"submitted": submitted, "ranking": ranking,
                       "feedback": rank_feedback(submitted, ranking, rule),
                       "utilities": [u.round(4).tolist() for u in utilities],
                       "policies": [b.round(4).tolist() for b in before],
                       "moved": [float(np.abs(a - b).sum()) for a, b in zip(after, before)],
                       "most_likely": [int(np.argmax(a)) for a in after],
                       "pareto": [is_pareto_optimal(p, c, ranking) for p, c in zip(players, choices)],
                       "pareto_chance": [pareto_share(p, ranking) for p in players],
                       "dominated": [best_response_is_dominated(p, u, ranking)
                                     for p, u in zip(players, utilities) if len(p.actions) > 1]})
        if should_stop(rounds, players, config):                             # [ours] stopping rule, below
            converged = True
            break
    # 7. [ours] each agent's final submission is the argmax of its final policy; [paper] the principal picks
    final_submissions = [p.actions[int(np.argmax(learner.policy()))] for p, learner in zip(players, learners)]
    # 8. diagnostics
    T = len(rounds)
    regrets = [learner.regret() for learner in learners]
    bounds = [hedge_regret_bound(T, learner.num_actions, config.eta, rule.utility_range)
              if learner.num_actions > 1 else 0.0 for learner in learners]
    averages = [learner.average_policy() for learner in learners]
    # Theorem 3 on the game whose payoff averages the rankings drawn (tau > 0: a noisy principal), and on the
    # noise-free order alone (the same figure when tau = 0)
    drawn = [r["ranking"] for r in rounds]
    gap = nash_gap(players, averages, drawn, rule)
    noise_free = gap if all(r == base_ranking for r in drawn) else nash_gap(players, averages, [base_ranking], rule)
    flat = lambda key: [x for r in rounds for x in r[key]]                  # noqa: E731
    return {
        "final_submissions": final_submissions,
        "final": select_final(final_submissions, base_ranking),
        "rounds": rounds,
        "final_policies": [learner.policy().round(4).tolist() for learner in learners],
        "average_policies": [p.round(4).tolist() for p in averages],
        "diagnostics": {
            "rounds": T, "converged": converged,
            "regret": regrets, "regret_bound": bounds,                         # Theorem 2
            # over the agents with a choice (an agent with one class has no regret and a bound of 0): None if none
            "regret_ratio": mean_or_none([r / b for r, b in zip(regrets, bounds) if b > 0]),
            "nash_gap": gap, "nash_gap_noise_free": noise_free,                # Theorem 3
            "pareto": float(np.mean(flat("pareto"))),                          # Assumption 1(i) ...
            "pareto_chance": float(np.mean(flat("pareto_chance"))),            # ... and its chance level
            "dominated": mean_or_none(flat("dominated")),                      # agents with a choice; None: none
        },
    }


def mean_or_none(values: list) -> float | None:
    """The mean of a diagnostic over the agents it is defined for; None where it is defined for none (every agent
    had one class), so that a table's average leaves the question out rather than counting it as 0."""
    return float(np.mean(values)) if values else None


# [ours] When to stop before max_rounds. The paper says "stop early at convergence" and no more.
#   argmax  every agent's most likely class has stayed the same over the last `patience` rounds (the final
#           answer reads only these classes, so more rounds would not change it unless a leader flips);
#   l1      every policy moved less than `tolerance` in L1 in the last round. At eta = 0.1 a two-class policy
#           under the largest utility gap first moves less than 1e-3 near round 31, so a game with clear gaps
#           plays all T = 20 rounds (it never fired in the synthetic games); but a round moves a policy by about
#           eta x its utility gap, so where every agent's gaps are under ~0.02 (classes tied in U and in rank,
#           or all of an agent's classes ranked below the others' submissions at nearly equal U) it fires after
#           one flat round, which is not convergence;
#   none    always play max_rounds rounds (the fixed horizon of Theorems 2 and 3).
STOPPING_RULES = ("argmax", "l1", "none")


def should_stop(rounds: list, players: list, config: GameConfig) -> bool:
    if all(len(p.actions) == 1 for p in players):                # [ours] nobody has a choice: one round decides
        return True
    if config.stopping == "argmax":
        recent = [r["most_likely"] for r in rounds[-config.patience:]]
        return len(recent) == config.patience and all(m == recent[0] for m in recent)
    if config.stopping == "l1":
        return max(rounds[-1]["moved"]) < config.tolerance
    return False


def is_pareto_optimal(player: Player, choice: int, ranking: list) -> bool:
    """[ours] A submission is Pareto-optimal when no other class of the same agent has both higher U and a
    better rank."""
    position = {index: k for k, index in enumerate(ranking)}
    a = player.actions[choice]
    return not any(player.utility[k] > player.utility[choice] and position[b] < position[a]
                   for k, b in enumerate(player.actions))


def pareto_share(player: Player, ranking: list) -> float:
    """The chance level of Pareto compliance: the share of the agent's classes that are Pareto-optimal, i.e.
    the compliance of a uniformly random submission on the same pool."""
    return float(np.mean([is_pareto_optimal(player, k, ranking) for k in range(len(player.actions))]))


def best_response_is_dominated(player: Player, utilities: np.ndarray, ranking: list) -> bool:
    """Every class that maximises this round's u is Pareto-dominated: the rule makes dominated play the best
    response (breaking Assumption 1(i) by construction, not by the agents' learning)."""
    best = np.flatnonzero(utilities >= utilities.max() - 1e-12)
    return not any(is_pareto_optimal(player, k, ranking) for k in best)


def expected_utilities(players: list, policies: list, i: int, rankings: list,
                       rule: DelegationRule = PRODUCT) -> np.ndarray:
    """E[u^i(a)] for each action a of agent i when the others play their (mixed) policies independently and
    the ranking is drawn uniformly from `rankings` (one ranking: the noise-free principal).

    Exact: enumerates the distinct rankings and the others' joint submissions (a few classes each, a few agents).
    """
    others = [j for j in range(len(players)) if j != i]
    values = np.zeros(len(players[i].actions))
    for ranking, count in collections.Counter(tuple(r) for r in rankings).items():
        weight = count / len(rankings)
        for joint in itertools.product(*[range(len(players[j].actions)) for j in others]):
            probability = weight * np.prod([policies[j][c] for j, c in zip(others, joint)])
            if probability == 0:
                continue
            submitted = [players[j].actions[c] for j, c in zip(others, joint)]
            values += probability * counterfactual_utilities(players[i], submitted, list(ranking), rule)
    return values


def nash_gap(players: list, policies: list, rankings: list, rule: DelegationRule = PRODUCT) -> float:
    """The largest gain any agent gets by deviating unilaterally from the profile `policies` (0 at a Nash
    equilibrium), in the game whose ranking is drawn from `rankings`: an agent submits before the ranking is
    drawn, so it deviates against the average. Theorem 3: for the average policies it shrinks as T grows."""
    gaps = []
    for i in range(len(players)):
        values = expected_utilities(players, policies, i, rankings, rule)
        gaps.append(float(values.max() - policies[i] @ values))
    return max(gaps) if gaps else 0.0


# ================================================================ command line

@dataclasses.dataclass
class SolveConfig:
    """python align.py: solve one question with ALIGN and print the game as it unfolds."""
    question: str = option("Ava has 5 apples and buys 7 more. How many apples does she have?", "the question")
    kind: str = option("number", "answer kind: number, math, choice or text")
    preset: str = option("tiny", "tiny or paper: which models play the agents and the principal")
    model: str | None = option(None, "one backbone for every agent and the principal")
    seed: int = option(0, "random seed")
    device: str | None = option(None, "cuda, cpu, ...")
    simulate: bool = option(False, "run the synthetic theory checks of theory.py instead (no model)")
    study: str | None = option(None, "ORACLE STUDY (theory.py, no model): replay this evaluate.py records file with "
                                     "simulated principals that read the gold answers; no method sees them")


def print_game(record: dict, answers: list) -> None:
    for t, r in enumerate(record["rounds"], 1):
        subs = ", ".join(f"{answers[a]!r}" for a in r["submitted"])
        fb = ", ".join(f"{answers[a]!r}:{v:+.2f}" for a, v in r["feedback"].items())
        print(f"  round {t:2d}: submitted [{subs}]  feedback {{{fb}}}  policies {r['policies']}")
    d = record["diagnostics"]
    print(f"  final submissions {[answers[a] for a in record['final_submissions']]} -> answer {record['prediction']!r}")
    print(f"  rounds {d['rounds']} (converged: {d['converged']}), regret {np.round(d['regret'], 3).tolist()} "
          f"<= bound {np.round(d['regret_bound'], 2).tolist()}, Nash gap {d['nash_gap']:.4f}, "
          f"Pareto compliance {d['pareto']:.2f} (chance {d['pareto_chance']:.2f}), "
          f"dominated best responses {'n/a' if d['dominated'] is None else format(d['dominated'], '.2f')}")


def validate_solve_config(config: SolveConfig) -> None:
    """A one-line ConfigError for a bad command line of align.py, before any model is loaded."""
    validate_question(config.question, config.kind)
    require(config, "preset", lambda preset: preset in PRESETS, f"one of {', '.join(PRESETS)}")
    require(config, "seed", lambda seed: seed >= 0, "at least 0")
    check_device_and_dtype(config.device)
    if config.model:
        check_model_name(config.model)


def main(argv=None) -> None:
    solve_config, search_config, game_config = parse_configs(__doc__.split("\n\n")[0], SolveConfig,
                                                             SearchConfig, GameConfig, argv=argv)
    try:
        validate_solve_config(solve_config)
        validate_search_config(search_config)
        validate_game_config(game_config)
    except (ConfigError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}") from None
    game_config = with_preset_defaults(game_config, solve_config.preset)
    print_config(solve_config, search_config, game_config)
    if solve_config.simulate or solve_config.study:   # theory.py imports this file, so it is run, not imported
        theory = runpy.run_module("theory", alter_sys=True)
        if solve_config.study:                         # the oracle study, under this command's game configuration
            theory["print_study"](solve_config.study, game_config, seed=solve_config.seed)
        else:                                          # every table starts from this command's game configuration
            theory["print_theory_checks"](seed=solve_config.seed, config=game_config)
        return
    try:
        agents = make_agents(solve_config.preset, solve_config.model, solve_config.device)
        principal = load_llm(solve_config.model or PRESETS[solve_config.preset]["principal"], solve_config.device)
    except (ConfigError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}") from None
    # the pipeline of `solve`, step by step, printing as it goes
    seed = solve_config.seed
    searches = candidates(agents, solve_config.question, solve_config.kind, search_config,
                          [derive_seed(seed, "search", i) for i in range(len(agents))])
    for result in searches:
        print(f"{result.agent}: " + ", ".join(f"{c.answer!r} (U={c.utility:.2f})" for c in result.classes))
    pool = pool_classes(searches)
    order = principal_order(principal, solve_config.question, solve_config.kind, pool, game_config,
                            derive_seed(seed, "principal"))
    if order is not None:
        print("principal's order: " + " > ".join(f"{pool.answers[k]!r} ({order.scores[k]:.2f})"
                                                 for k in order.order))
    record = delegate(pool, order, game_config, derive_seed(seed, "align"))
    if record["rounds"]:
        print_game(record, pool.answers)
    else:
        print("  no agent reached an answer")


if __name__ == "__main__":
    main()
