"""
align.py -- ALIGN: the delegation game between agents and a principal, composed from the other files.

ALIGN (arXiv 2602.00127): steps 1-8 of the loop in README.md, and the theorems:
    1. each agent's MCTS finds solutions, grouped into answer classes           (mcts.py, utility.py)
    2. internal utility U^i(a): the agent's self-consistency share of class a  (utility.py)
    3. the principal orders the pooled classes once per question              (principal.py)
    4. rounds t = 1..T: each agent submits a ~ pi_t^i; the distinct submissions are ranked; r in [-1, 1]
    5. full-information utilities u_t^i(a) = U^i(a) * r(a | the others' submissions)
    6. Hedge: pi_{t+1}^i(a) proportional to exp(eta * sum_s u_s^i(a)); stop when no policy moves   (hedge.py)
    7. final answer: the principal's top-ranked class among the agents' argmax submissions
    8. diagnostics: regret against the Hedge bound (Theorem 2), Nash gap of the average policies
       (Theorem 3), Pareto compliance, rounds to convergence

The game itself (`play_delegation_game`) needs no model: it takes each agent's classes with their
utilities and the principal's ranking. That is how the synthetic games below check the theorems.

Run:
    python align.py --question "Ava has 5 apples and buys 7 more. How many apples does she have?"
    python align.py --simulate            # synthetic games: Theorems 1-3 with printed figures

A forker tries a new delegation rule where it says `# DELEGATION RULE:`.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import numpy as np

from hedge import Hedge, hedge_regret_bound, tuned_learning_rate
from llm import option, parse_configs, print_config
from principal import plackett_luce_order, rank_feedback, select_final
from utility import same_answer


@dataclasses.dataclass
class GameConfig:
    """The delegation game (ALIGN steps 3-7)."""
    eta: float = option(0.1, "[paper] Hedge learning rate")
    max_rounds: int = option(20, "[paper] at most this many rounds")
    tolerance: float = option(1e-3, "[ours] stop when every policy moved less than this (L1) in a round")
    principal_mode: str = option("score", "[ours] principal's order: score (verification P(Yes)) or listwise")
    principal_tau: float = option(0.0, "[ours] Plackett-Luce temperature of each round's ranking (0: fixed)")


@dataclasses.dataclass
class Player:
    """One agent as the game sees it: its answer classes (pool indices) and U^i of each."""
    name: str
    actions: list                 # pool indices of this agent's answer classes
    utility: np.ndarray           # U^i(a) for each action, in [0, 1]


def pool_classes(search_results) -> tuple:
    """Pool the agents' answer classes (merged by `same_answer`) -> (pooled answers, representatives, players).

    A pooled class's representative is its highest-reward solution across all agents.
    """
    answers, representatives, players = [], [], []
    for result in search_results:
        actions, utilities = [], []
        for c in result.classes:
            home = next((k for k, a in enumerate(answers) if same_answer(a, c.answer)), None)
            if home is None:
                answers.append(c.answer)
                representatives.append(c.representative)
                home = len(answers) - 1
            elif c.representative.reward > representatives[home].reward:
                representatives[home] = c.representative
            actions.append(home)
            utilities.append(c.utility)
        players.append(Player(result.agent, actions, np.array(utilities)))
    return answers, representatives, players


def agent_utility(internal_utility: float, rank_reward: float) -> float:
    # DELEGATION RULE: [paper] an agent's utility combines its internal preference and the principal's
    # ranking feedback as a product, U^i(a) * r. Try another combination here (an additive mix, a
    # threshold on U, ...); the game, the diagnostics and evaluate.py pick it up.
    return internal_utility * rank_reward


def counterfactual_utilities(player: Player, others_submitted: list, ranking: list) -> np.ndarray:
    """u(a) for every action a of the player: the feedback a would have got against the others' submissions.

    [ours] full information: the principal's order covers every class, so no extra model call is needed.
    """
    return np.array([agent_utility(player.utility[k], rank_feedback(others_submitted + [a], ranking)[a])
                     for k, a in enumerate(player.actions)])


def play_delegation_game(players: list, ranking_for_round: Callable[[int], list], base_ranking: list,
                         config: GameConfig, seed: int = 0) -> dict:
    """Rounds of submission, ranking and Hedge updates; returns the record of the game with its diagnostics.

    players: agents with at least one class (agents with none abstain and are left out by the caller).
    ranking_for_round(t): the principal's order of all pool indices in round t (best first).
    base_ranking: the principal's deterministic order, used for the final pick and the Nash gap.
    """
    learners = [Hedge(len(p.actions), config.eta, seed=seed * 7919 + i) for i, p in enumerate(players)]
    rounds = []
    converged = False
    for t in range(config.max_rounds):
        ranking = ranking_for_round(t)
        before = [learner.policy() for learner in learners]
        choices = [learner.sample() for learner in learners]
        submitted = [p.actions[c] for p, c in zip(players, choices)]
        utilities = []
        for i, (player, learner) in enumerate(zip(players, learners)):
            u = counterfactual_utilities(player, submitted[:i] + submitted[i + 1:], ranking)
            learner.update(u)
            utilities.append(u)
        moved = [float(np.abs(learner.policy() - b).sum()) for learner, b in zip(learners, before)]
        rounds.append({"submitted": submitted, "ranking": ranking, "feedback": rank_feedback(submitted, ranking),
                       "utilities": [u.round(4).tolist() for u in utilities],
                       "policies": [b.round(4).tolist() for b in before], "moved": moved,
                       "pareto": [is_pareto_optimal(p, c, ranking) for p, c in zip(players, choices)]})
        if max(moved) < config.tolerance:
            converged = True
            break
    final_submissions = [p.actions[int(np.argmax(learner.policy()))] for p, learner in zip(players, learners)]
    T = len(rounds)
    regrets = [learner.regret() for learner in learners]
    bounds = [hedge_regret_bound(T, p_.num_actions, config.eta) if p_.num_actions > 1 else 0.0 for p_ in learners]
    averages = [learner.average_policy() for learner in learners]
    pareto = [ok for r in rounds for ok in r["pareto"]]
    return {
        "final_submissions": final_submissions,
        "final": select_final(final_submissions, base_ranking),
        "rounds": rounds,
        "final_policies": [learner.policy().round(4).tolist() for learner in learners],
        "diagnostics": {
            "rounds": T, "converged": converged,
            "regret": regrets, "regret_bound": bounds,
            "regret_ratio": float(np.mean([r / b if b > 0 else 0.0 for r, b in zip(regrets, bounds)])),
            "nash_gap": nash_gap(players, averages, base_ranking),
            "pareto": float(np.mean(pareto)) if pareto else 1.0,
        },
    }


def is_pareto_optimal(player: Player, choice: int, ranking: list) -> bool:
    """[ours] A submission is Pareto-optimal when no other class of the same agent has both higher U and a
    better rank."""
    position = {index: k for k, index in enumerate(ranking)}
    a = player.actions[choice]
    return not any(player.utility[k] > player.utility[choice] and position[b] < position[a]
                   for k, b in enumerate(player.actions))


def expected_utilities(players: list, policies: list, i: int, ranking: list) -> np.ndarray:
    """E[u^i(a)] for each action a of agent i when the others play their (mixed) policies independently.

    Exact: enumerates the others' joint submissions (a few classes each, a few agents).
    """
    others = [j for j in range(len(players)) if j != i]
    values = np.zeros(len(players[i].actions))
    for joint in itertools.product(*[range(len(players[j].actions)) for j in others]):
        probability = np.prod([policies[j][c] for j, c in zip(others, joint)])
        if probability == 0:
            continue
        submitted = [players[j].actions[c] for j, c in zip(others, joint)]
        values += probability * counterfactual_utilities(players[i], submitted, ranking)
    return values


def nash_gap(players: list, policies: list, ranking: list) -> float:
    """The largest gain any agent gets by deviating unilaterally from the profile `policies` (0 at a Nash
    equilibrium). Theorem 3: for the average policies it shrinks as T grows."""
    gaps = []
    for i in range(len(players)):
        values = expected_utilities(players, policies, i, ranking)
        gaps.append(float(values.max() - policies[i] @ values))
    return max(gaps) if gaps else 0.0


def delegate(answers: list, players: list, order, config: GameConfig, seed: int = 0) -> dict:
    """The game on real candidates: abstaining agents recorded, noise applied, final answer read off."""
    playing = [p for p in players if p.actions]
    abstained = [p.name for p in players if not p.actions]
    if not playing:  # no agent reached an answer: nothing to delegate
        return {"prediction": None, "abstained": abstained, "rounds": [], "diagnostics": None}
    rng = np.random.default_rng(seed)
    game = play_delegation_game(playing, lambda t: plackett_luce_order(order, config.principal_tau, rng),
                                order.order, config, seed)
    game.update(prediction=answers[game["final"]], abstained=abstained, players=[p.name for p in playing],
                pool=[{"answer": a, "score": round(s, 4)} for a, s in zip(answers, order.scores)],
                principal_order=order.order, principal_parse_failed=order.parse_failed)
    return game


# ---------------------------------------------------------------- synthetic games (the theory checks)

def synthetic_question(rng: np.random.Generator, correlation: float, num_agents: int = 3, pool_size: int = 6):
    """[ours] A question with no LLM: who can find what, how sure each agent is, and what the principal thinks.

    Class 0 is the correct answer. Each agent finds 2-4 classes at random; its self-consistency U favours
    the correct class (agents are better than chance). The principal scores each class as
    correlation * correct + Gaussian noise: correlation > 0 is a principal aligned with correctness (and so
    with the agents, Assumption 1(iii)); correlation < 0 an adversarial one.
    """
    players = []
    for i in range(num_agents):
        found = rng.choice(pool_size, size=rng.integers(2, 5), replace=False)
        weights = rng.dirichlet(np.ones(len(found))) + 0.6 * (found == 0)
        players.append(Player(f"agent-{i}", [int(a) for a in found], weights / weights.sum()))
    scores = correlation * (np.arange(pool_size) == 0) + rng.normal(0, 0.5, pool_size)
    ranking = [int(k) for k in np.argsort(-scores, kind="stable")]
    return players, ranking


def simulate(num_games: int, correlation: float, rounds: int, eta: float | None = None, seed: int = 0,
             tolerance: float = 0.0) -> dict:
    """Seeded synthetic games: ALIGN's accuracy against a single agent's, regret, bound, Nash gap.

    eta=None tunes eta to the horizon (the O(sqrt T) regime of Theorem 2); the single agent answers with
    its own most self-consistent class.
    """
    rng = np.random.default_rng(seed)
    align_correct, single_correct, regret, bound, gaps, over_bound = [], [], [], [], [], 0
    for g in range(num_games):
        players, ranking = synthetic_question(rng, correlation)
        step = eta if eta is not None else tuned_learning_rate(rounds, max(len(p.actions) for p in players))
        config = GameConfig(eta=step, max_rounds=rounds, tolerance=tolerance)
        game = play_delegation_game(players, lambda t: ranking, ranking, config, seed=seed * 100003 + g)
        d = game["diagnostics"]
        align_correct.append(game["final"] == 0)
        single_correct.append(np.mean([p.actions[int(np.argmax(p.utility))] == 0 for p in players]))
        regret.append(np.mean(d["regret"]))
        bound.append(np.mean(d["regret_bound"]))
        over_bound += sum(r > b + 1e-9 for r, b in zip(d["regret"], d["regret_bound"]))
        gaps.append(d["nash_gap"])
    return {"align_accuracy": float(np.mean(align_correct)), "single_accuracy": float(np.mean(single_correct)),
            "regret": float(np.mean(regret)), "regret_bound": float(np.mean(bound)),
            "regret_per_round": float(np.mean(regret)) / rounds, "nash_gap": float(np.mean(gaps)),
            "regret_over_bound": int(over_bound)}


def print_theory_checks(num_games: int = 300, seed: int = 0) -> None:
    print("Theorem 2 and 3 (eta tuned to T, correlation +1):")
    print(f"  {'T':>5} {'regret':>8} {'bound':>8} {'regret/T':>9} {'Nash gap':>9} {'over bound':>11}")
    for T in (10, 40, 160):
        s = simulate(num_games, 1.0, T, seed=seed)
        print(f"  {T:>5} {s['regret']:>8.3f} {s['regret_bound']:>8.3f} {s['regret_per_round']:>9.4f} "
              f"{s['nash_gap']:>9.4f} {s['regret_over_bound']:>11d}")
    print("Theorem 1 (eta = 0.1, T = 20): ALIGN against a single agent, by principal-agent correlation:")
    for correlation in (1.0, 0.5, 0.0, -0.5, -1.0):
        s = simulate(num_games, correlation, 20, eta=0.1, seed=seed)
        print(f"  correlation {correlation:+.1f}: ALIGN {s['align_accuracy']:.3f}  single agent "
              f"{s['single_accuracy']:.3f}")


# ---------------------------------------------------------------- one question, end to end

@dataclasses.dataclass
class SolveConfig:
    """python align.py: solve one question with ALIGN and print the game as it unfolds."""
    question: str = option("Ava has 5 apples and buys 7 more. How many apples does she have?", "the question")
    kind: str = option("number", "answer kind: number or math")
    preset: str = option("tiny", "tiny or paper (see evaluate.py)")
    model: str | None = option(None, "one backbone for every agent and the principal")
    seed: int = option(0, "random seed")
    device: str | None = option(None, "cuda, cpu, ...")
    simulate: bool = option(False, "run the synthetic theory checks instead (no model)")


def print_game(record: dict, answers: list) -> None:
    for t, r in enumerate(record["rounds"], 1):
        subs = ", ".join(f"{answers[a]!r}" for a in r["submitted"])
        fb = ", ".join(f"{answers[a]!r}:{v:+.2f}" for a, v in r["feedback"].items())
        print(f"  round {t:2d}: submitted [{subs}]  feedback {{{fb}}}  policies {r['policies']}")
    d = record["diagnostics"]
    print(f"  final submissions {[answers[a] for a in record['final_submissions']]} -> answer {record['prediction']!r}")
    print(f"  rounds {d['rounds']} (converged: {d['converged']}), regret {np.round(d['regret'], 3).tolist()} "
          f"<= bound {np.round(d['regret_bound'], 2).tolist()}, Nash gap {d['nash_gap']:.4f}, "
          f"Pareto compliance {d['pareto']:.2f}")


if __name__ == "__main__":
    from evaluate import EvalConfig, agent_searches, build_context, principal_order
    from mcts import SearchConfig

    solve, search_config, game_config = parse_configs(__doc__.split("\n\n")[0], SolveConfig, SearchConfig,
                                                      GameConfig)
    print_config(solve, search_config, game_config)
    if solve.simulate:
        print_theory_checks()
        raise SystemExit(0)
    from evaluate import DataError
    from llm import ModelLoadError
    try:
        ctx = build_context(EvalConfig(preset=solve.preset, model=solve.model, seed=solve.seed,
                                       methods="align", device=solve.device), search_config,
                            {"GameConfig": game_config})
    except (DataError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}") from None
    problem = {"id": "cli", "question": solve.question, "kind": solve.kind}
    for agent, result in zip(ctx.agents, agent_searches(problem, ctx)):
        print(f"{agent.name}: " + ", ".join(f"{c.answer!r} (U={c.utility:.2f})" for c in result.classes))
    answers, _, players = pool_classes(agent_searches(problem, ctx))
    order, _ = principal_order(problem, ctx)
    print("principal's order: " + " > ".join(f"{answers[k]!r} ({order.scores[k]:.2f})" for k in order.order))
    record = delegate(answers, players, order, game_config, ctx.seed(problem, "align"))
    if record["rounds"]:
        print_game(record, answers)
    else:
        print("  no agent reached an answer")
