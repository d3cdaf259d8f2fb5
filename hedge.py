"""
hedge.py -- Hedge: online mirror descent with the entropy regulariser, over a finite set of actions.

ALIGN (arXiv 2602.00127): step 6 of the loop in README.md, and Theorem 2:
    # [paper] Policy: uniform at start, then exponential weights
    #             pi_t(a)  proportional to  exp(eta * U_{t-1}(a)),    eta = 0.1,
    #         i.e. Hedge = online mirror descent with the entropy regulariser.
    # [paper] Theorem 2: each agent's cumulative regret is O(sqrt(T)).
    # [ours]  U_{t-1} is the *cumulative* utility sum_{s<t} u_s (full information: every action's utility
    #         is known each round), the textbook form of Hedge.

The regret bound we check against is the textbook one (e.g. Cesa-Bianchi & Lugosi, Thm 2.2, rescaled):
for utilities in an interval of width R and K actions, for *any* sequence of utilities,

    regret_T = max_a sum_t u_t(a) - sum_t <pi_t, u_t>  <=  ln(K) / eta  +  eta * T * R^2 / 8.

With eta = sqrt(8 ln K / (T R^2)) the bound is R * sqrt(T ln K / 2) = O(sqrt(T)): Theorem 2's rate.
In ALIGN u = U(a) * r with U in [0, 1] and r in [-1, 1], so R = 2.

Run `python hedge.py` for a demo: three actions, noisy utilities, the policy and the regret against the bound.
"""
from __future__ import annotations

import math

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())  # shift for numerical stability; the result is unchanged
    return z / z.sum()


class Hedge:
    """Exponential weights over `num_actions` actions, with seeded sampling and regret bookkeeping."""

    def __init__(self, num_actions: int, eta: float = 0.1, seed: int = 0):
        if num_actions < 1:
            raise ValueError("Hedge needs at least one action")
        self.eta = eta
        self.cumulative_utility = np.zeros(num_actions)     # sum_{s<=t} u_s(a), for every action a
        self.expected_utility = 0.0                         # sum_{s<=t} <pi_s, u_s>
        self.policies: list[np.ndarray] = []                # pi_1, pi_2, ... as played
        self.rng = np.random.default_rng(seed)

    @property
    def num_actions(self) -> int:
        return len(self.cumulative_utility)

    def policy(self) -> np.ndarray:
        # ALGO LOGIC: pi_{t+1}(a) proportional to exp(eta * sum_{s<=t} u_s(a)); uniform before any update
        return softmax(self.eta * self.cumulative_utility)

    def sample(self) -> int:
        """Draw this round's action from the current policy (seeded)."""
        return int(self.rng.choice(self.num_actions, p=self.policy()))

    def update(self, utilities) -> None:
        """Full-information update with this round's utility of every action."""
        utilities = np.asarray(utilities, dtype=float)
        policy = self.policy()
        self.policies.append(policy)
        self.expected_utility += float(policy @ utilities)
        self.cumulative_utility += utilities

    @property
    def rounds(self) -> int:
        return len(self.policies)

    def regret(self) -> float:
        """max_a sum_t u_t(a) - sum_t <pi_t, u_t>: what the best fixed action would have gained more."""
        return float(self.cumulative_utility.max() - self.expected_utility) if self.rounds else 0.0

    def average_policy(self) -> np.ndarray:
        return np.mean(self.policies, axis=0) if self.policies else self.policy()


def hedge_regret_bound(rounds: int, num_actions: int, eta: float, utility_range: float = 2.0) -> float:
    """ln(K)/eta + eta*T*R^2/8: Hedge's regret after T rounds never exceeds this, whatever the utilities."""
    return math.log(num_actions) / eta + eta * rounds * utility_range ** 2 / 8


def tuned_learning_rate(rounds: int, num_actions: int, utility_range: float = 2.0) -> float:
    """The eta that minimises the bound for a known horizon: sqrt(8 ln K / (T R^2)) (any eta if K = 1)."""
    return math.sqrt(8 * math.log(max(num_actions, 2)) / (rounds * utility_range ** 2))


def adversarial_regret(learner, rounds: int, utility_range: float = 2.0) -> float:
    """The learner's regret against an adaptive adversary: each round, the action it is most likely to play
    gets the lowest utility and every other action the highest. The bound above holds for any sequence of
    utilities, this one included; a learner that commits to one action (follow-the-leader) loses every round."""
    for _ in range(rounds):
        utilities = np.full(learner.num_actions, utility_range / 2)
        utilities[int(np.argmax(learner.policy()))] = -utility_range / 2
        learner.update(utilities)
    return learner.regret()


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    means = np.array([0.2, 0.5, -0.3])  # action 1 is best on average
    print("Hedge on three actions with noisy utilities in [-1, 1] (means 0.2, 0.5, -0.3)")
    for eta_name, eta in [("eta = 0.1 (the paper's)", 0.1), ("eta tuned for T = 200", tuned_learning_rate(200, 3))]:
        learner = Hedge(3, eta=eta, seed=0)
        print(f"\n{eta_name}:")
        for t in range(1, 201):
            learner.update(np.clip(means + rng.normal(0, 0.5, 3), -1, 1))
            if t in (1, 10, 50, 200):
                print(f"  T={t:3d}  policy={np.round(learner.policy(), 3)}  regret={learner.regret():6.2f}  "
                      f"bound={hedge_regret_bound(t, 3, eta):6.2f}  regret/T={learner.regret() / t:.3f}")
