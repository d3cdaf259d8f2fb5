"""
principal.py -- the principal: it orders the pooled answer classes, gives rank feedback, picks the answer.

ALIGN (arXiv 2602.00127): steps 3 and 7 of the loop in align.py (`solve`):
    # [paper] The principal ranks the agents' submissions and selects the final answer.
    # [ours]  The principal orders the pooled classes once per question. Default `score`: a verification
    #         score per class -- the principal's probability of "Yes" to "Is this solution correct?" given
    #         the question and the class's representative trace, read from log-probabilities (no sampling)
    #         -- sorted descending. Alternative `listwise`: one generated ranking of all classes, parsed,
    #         falling back to the score order when the reply cannot be parsed.
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

VERIFY_PROMPT = ("Here is a math problem and a proposed solution.\n\nProblem: {question}\n\n"
                 "Proposed solution:\n{solution}\n\nIs this solution correct? Answer Yes or No.")
LISTWISE_PROMPT = ("Here is a math problem and {m} candidate solutions.\n\nProblem: {question}\n\n{candidates}\n\n"
                   "Rank the candidates from most to least likely to be correct. Reply with the letters only, "
                   "best first, separated by '>', for example: {example}")

PRINCIPAL_MODES = ("score", "listwise")   # what rank_classes accepts as `mode`


@dataclasses.dataclass
class PrincipalOrder:
    """The principal's view of one question's pooled answer classes."""
    answers: list                 # the pooled classes' answers, in pool order
    scores: list                  # verification score of each class, P(Yes) in [0, 1]
    order: list                   # pool indices, best first
    mode: str = "score"
    parse_failed: bool = False    # listwise reply could not be parsed; `order` is the score order
    reply: str = ""               # the listwise reply, for the records

    def position(self, order: list | None = None) -> dict:
        """pool index -> rank position (0 = best) under `order` (default: this order)."""
        return {index: k for k, index in enumerate(self.order if order is None else order)}


def verification_scores(principal, question: str, solutions: list[str]) -> list[float]:
    """P(Yes) / (P(Yes) + P(No)) for each solution: the principal's belief that it is correct."""
    scores = []
    for solution in solutions:
        prompt = principal.chat(VERIFY_PROMPT.format(question=question, solution=solution))
        log_yes, log_no = principal.score(prompt, ["Yes", "No"])
        scores.append(1.0 / (1.0 + math.exp(log_no - log_yes)))
    return scores


def parse_listwise(reply: str, m: int) -> list | None:
    """Letters in a reply like 'B > A > C' -> [1, 0, 2]; None unless it names every candidate exactly once."""
    letters = re.findall(r"\b([A-Z])\b", reply.upper())
    order = [string.ascii_uppercase.index(x) for x in letters if string.ascii_uppercase.index(x) < m]
    deduplicated = list(dict.fromkeys(order))
    return deduplicated if len(deduplicated) == m else None


def rank_classes(principal, question: str, answers: list, solutions: list[str], mode: str = "score",
                 seed: int = 0, max_new_tokens: int = 32) -> PrincipalOrder:
    """The principal's order of the pooled classes (once per question)."""
    if mode not in ("score", "listwise"):
        raise ValueError(f"principal mode must be 'score' or 'listwise', not {mode!r}")
    scores = verification_scores(principal, question, solutions)
    by_score = sorted(range(len(answers)), key=lambda k: -scores[k])   # stable: pool order breaks ties
    if mode == "score" or len(answers) == 1:
        return PrincipalOrder(answers, scores, by_score, mode)
    letters = string.ascii_uppercase[:len(answers)]
    candidates = "\n\n".join(f"({x}) {s}" for x, s in zip(letters, solutions))
    prompt = principal.chat(LISTWISE_PROMPT.format(m=len(answers), question=question, candidates=candidates,
                                                   example=" > ".join(reversed(letters))))
    reply = principal.sample(prompt, 1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed)[0]
    parsed = parse_listwise(reply, len(answers))
    return PrincipalOrder(answers, scores, parsed or by_score, mode, parse_failed=parsed is None, reply=reply)


def plackett_luce_order(order: PrincipalOrder, tau: float, rng: np.random.Generator) -> list:
    """One round's ranking drawn from Plackett-Luce with weights exp(score / tau); tau = 0 keeps `order.order`.

    Sorting score/tau + Gumbel noise, descending, samples exactly from Plackett-Luce (the Gumbel-max trick).
    Listwise orders are perturbed through their rank positions (a linear score from 1 down to 0).
    """
    if tau <= 0:
        return list(order.order)
    m = len(order.answers)
    position = order.position()
    base = np.array(order.scores) if order.mode == "score" else np.array(
        [1 - position[k] / max(m - 1, 1) for k in range(m)])
    keys = base / tau + rng.gumbel(size=m)
    return [int(k) for k in np.argsort(-keys, kind="stable")]


def select_final(submitted: list, ranking: list):
    """[paper] The principal selects the final answer: its top-ranked class among the submissions."""
    position = {index: k for k, index in enumerate(ranking)}
    return min(submitted, key=lambda a: position[a]) if submitted else None
