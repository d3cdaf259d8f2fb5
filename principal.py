"""
principal.py -- the principal: it orders the pooled answer classes, gives rank feedback, picks the answer.

ALIGN (arXiv 2602.00127): steps 3 and 7 of the loop in align.py (`solve`):
    # [paper] The principal ranks the agents' submissions and selects the final answer.
    # [ours]  The principal orders the pooled classes once per question, in one of four modes (the paper does
    #         not say how its principal ranks): `score`, its P("Yes") to "Is this solution correct?" for each
    #         class's representative; `listwise`, one generated ranking; `consistency`, the share of its own
    #         solutions in each class; `likelihood`, its mean token log-probability of each representative.
    #         See `rank_program`.
    # [ours]  Optional noise: each round's ranking is drawn from a Plackett-Luce model over the scores
    #         with temperature tau (tau = 0: the deterministic order).
How a rank turns into the agents' feedback r is part of the delegation rule, in align.py.

The principal sees the question and candidate solutions, never the gold answer.

A forker who wants another principal (pairwise comparisons, a reward model) writes a function returning a
`PrincipalOrder` and passes it to align.py.
"""
from __future__ import annotations

import dataclasses
import math
import re
import string

import numpy as np

from engine import Request, run_programs
from utility import extract_answer, same_answer

VERIFY_PROMPT = ("Here is a problem and a proposed solution.\n\nProblem: {question}\n\n"
                 "Proposed solution:\n{solution}\n\nIs this solution correct? Answer Yes or No.")
SOLVE_PROMPT = "Solve this problem step by step. End with 'The answer is X.'\n\n{question}"
LISTWISE_PROMPT = ("Here is a problem and {m} candidate solutions.\n\nProblem: {question}\n\n{candidates}\n\n"
                   "Rank the candidates from most to least likely to be correct. Reply with the letters only, "
                   "best first, separated by '>', for example: {example}")



@dataclasses.dataclass
class PrincipalOrder:
    """The principal's view of one question's pooled answer classes."""
    answers: list                 # the pooled classes' answers, in pool order
    scores: list                  # the mode's score of each class (score, listwise: P(Yes); consistency: share)
    order: list                   # pool indices, best first
    mode: str = "score"
    parse_failed: bool = False    # listwise: no ranking read (a reply that does not parse, or more than 26 classes,
                                  # when none is asked for); `order` is the score order
    reply: str = ""               # the listwise reply, for the records

    def position(self, order: list | None = None) -> dict:
        """pool index -> rank position (0 = best) under `order` (default: this order)."""
        return {index: k for k, index in enumerate(self.order if order is None else order)}


PRINCIPAL_MODES = ("score", "listwise", "consistency", "likelihood")   # what rank_program accepts as `mode`


def rank_program(principal, question: str, kind: str, answers: list, solutions: list[str], mode: str = "score",
                 seed: int = 0, samples: int = 8, temperature: float = 0.7, max_new_tokens: int = 256):
    """The principal's order of the pooled classes (once per question), as a program for engine.run_programs:
    it yields the model requests it needs and returns a PrincipalOrder. Every mode is [ours]: the paper does
    not say how its principal ranks. `solutions[k]` is class k's representative trace.

      score        its P(Yes) to "Is this solution correct?" for each class's representative, sorted
      listwise     one generated ranking of all classes, parsed; the score order when the reply can't be read
      consistency  it solves the problem itself `samples` times (one batched request) and prefers the classes
                   its own answers fall into, by their share; the verification score breaks ties
      likelihood   its mean token log-probability of each class's representative, given the problem
    """
    if mode not in PRINCIPAL_MODES:
        raise ValueError(f"principal mode must be one of {', '.join(PRINCIPAL_MODES)}, not {mode!r}")
    m = len(answers)
    if m == 0:                                       # nothing to order: no agent reached an answer
        return None
    verification = []
    if mode != "likelihood":
        # P(Yes) / (P(Yes) + P(No)), read from log-probabilities: its belief that the solution is correct
        yes_no = yield [Request(principal, principal.chat(VERIFY_PROMPT.format(question=question, solution=s)),
                                score=("Yes", "No")) for s in solutions]
        verification = [1.0 / (1.0 + math.exp(log_no - log_yes)) for log_yes, log_no in yes_no]
    by_score = sorted(range(m), key=lambda k: -verification[k]) if verification else list(range(m))
    if mode == "score" or m == 1 and mode != "likelihood":
        return PrincipalOrder(answers, verification, by_score, mode)
    if mode == "listwise":
        # [ours] Letters name the candidates, so at most 26 (beyond that, the score order). The format's example
        # is the letters in a seeded random order: a small model may copy it, and an example in a fixed order (it
        # was the pool order reversed) would then put that order, the same on every question, in place of the
        # principal's. (Refusing a reply that equals the example would refuse half the genuine rankings of two
        # candidates.) The reply may take ~3 tokens a candidate.
        if m > len(string.ascii_uppercase):
            return PrincipalOrder(answers, verification, by_score, mode, parse_failed=True)
        letters = string.ascii_uppercase[:m]
        example = [int(k) for k in np.random.default_rng([seed, m]).permutation(m)]
        listing = "\n\n".join(f"({x}) {s}" for x, s in zip(letters, solutions))
        prompt = principal.chat(LISTWISE_PROMPT.format(m=m, question=question, candidates=listing,
                                                       example=" > ".join(letters[k] for k in example)))
        [[reply]] = yield [Request(principal, prompt, max_new_tokens=max(32, 8 + 3 * m), seed=seed)]
        parsed = parse_listwise(reply.text, m)
        return PrincipalOrder(answers, verification, parsed or by_score, mode, parse_failed=parsed is None,
                              reply=reply.text)
    solve_prompt = principal.chat(SOLVE_PROMPT.format(question=question))
    if mode == "consistency":
        [own] = yield [Request(principal, solve_prompt, n=samples, temperature=temperature,
                               max_new_tokens=max_new_tokens, seed=seed)]
        own_answers = [extract_answer(g.text, kind) for g in own]
        share = [sum(same_answer(a, x) for x in own_answers) / len(own_answers) for a in answers]
        order = sorted(range(m), key=lambda k: (-share[k], -verification[k]))
        return PrincipalOrder(answers, share, order, mode)
    # likelihood: log p(solution | problem) / its length in tokens
    [log_probabilities] = yield [Request(principal, solve_prompt, score=tuple(solutions))]
    mean = [lp / max(1, len(principal.encode(s))) for lp, s in zip(log_probabilities, solutions)]
    return PrincipalOrder(answers, mean, sorted(range(m), key=lambda k: -mean[k]), mode)


def parse_listwise(reply: str, m: int) -> list | None:
    """Letters in a reply like 'B > A > C' -> [1, 0, 2]; None unless it names every candidate exactly once."""
    letters = re.findall(r"\b([A-Z])\b", reply.upper())
    order = [string.ascii_uppercase.index(x) for x in letters if string.ascii_uppercase.index(x) < m]
    deduplicated = list(dict.fromkeys(order))
    return deduplicated if len(deduplicated) == m else None


def rank_classes(principal, question: str, answers: list, solutions: list[str], mode: str = "score",
                 seed: int = 0, kind: str = "number", **options) -> PrincipalOrder | None:
    """`rank_program` run alone (the engine when the principal is a loaded model, else the reference path)."""
    (order,) = run_programs([rank_program(principal, question, kind, answers, solutions, mode, seed, **options)],
                            engine=hasattr(principal, "model"))
    return order


def plackett_luce_order(order: PrincipalOrder, tau: float, rng: np.random.Generator) -> list:
    """One round's ranking drawn from Plackett-Luce with weights exp(score / tau); tau = 0 keeps `order.order`.

    Sorting score/tau + Gumbel noise, descending, samples exactly from Plackett-Luce (the Gumbel-max trick).
    Listwise orders are perturbed through their rank positions (a linear score from 1 down to 0).
    """
    if tau <= 0:
        return list(order.order)
    m = len(order.answers)
    position = order.position()
    base = np.array(order.scores) if order.mode != "listwise" else np.array(
        [1 - position[k] / max(m - 1, 1) for k in range(m)])
    keys = base / tau + rng.gumbel(size=m)
    return [int(k) for k in np.argsort(-keys, kind="stable")]


def select_final(submitted: list, ranking: list):
    """[paper] The principal selects the final answer: its top-ranked class among the submissions."""
    position = {index: k for k, index in enumerate(ranking)}
    return min(submitted, key=lambda a: position[a]) if submitted else None
