"""
mlpo.py -- MLPO: a leader LLM that reads a team's answers and writes the final one, and how to train it.

MLPO (arXiv 2507.08960), as README.md summarises it:
    # [paper] A team of K untrained agents answers; a single leader LLM reads their answers and writes its
    #         own answer; this repeats for T rounds. Only the leader is trained: a policy-gradient method
    #         with no value network and no explicit agent feedback.
    # [ours, after the paper's reviewers' description]
    #   inference: K = 3 agents, T = 5 rounds; round 0 the agents answer; the leader writes
    #              <think>...</think><answer>...</answer>; in later rounds each agent revises its own answer
    #              given the leader's last output, and the leader aggregates again; the last <answer> wins.
    #   training:  an offline pool of 4 responses per agent per training question, made once; questions the
    #              pool already solves >= 75% of the time are dropped; each prompt shows one response per
    #              agent; G leader samples per prompt; reward 1 if the answer is right; advantage = reward -
    #              group mean (no std division, Dr. GRPO); token terms summed and divided by a constant (not
    #              by each completion's length, Dr. GRPO); PPO-style clipping; optional KL to the start model.
    #   SFT first (the paper's main row, "SFT+MLPO"): synthetic backtracking examples -- the leader prompt with
    #              one response per agent, and a completion that follows a wrong aggregation, notices the error
    #              and backtracks to the right answer, written by the leader itself when asked with a wrong and
    #              a right aggregation, kept only when it ends right -- and cross-entropy on the completion only.

Run:
    python mlpo.py train --dataset arith --steps 20 --output checkpoints/leader-arith     # CPU, minutes
    python evaluate.py --dataset arith --methods leader,leader@checkpoints/leader-arith --limit 30
    python mlpo.py sft --dataset arith --output checkpoints/leader-sft                    # then MLPO from it:
    python mlpo.py train --init-from checkpoints/leader-sft --dataset arith --output checkpoints/leader-sft-mlpo
    python mlpo.py loss-demo                                  # the loss on a hand-made example

A forker edits `mlpo_loss` (the objective), `sft_loss`, `leader_reward`, or the prompts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import sys

import torch
from tqdm import tqdm

from data import DataError, load_problems
from engine import Request, run_programs
from llm import (PRESETS, ConfigError, ModelLoadError, check_device_and_dtype, check_model_name, load_llm, option,
                 parse_configs, print_config, require, require_at_least)
from mcts import make_agents
from utility import extract_answer, is_correct

# ---------------------------------------------------------------- prompts and answers

# [ours] One worked example of the reply format, written for this project. Small models rarely produce the
# tags unprompted; with the example and the reply started with "<think>" they sometimes do.
LEADER_TASK = ("You lead a team of {k} assistants who answered a problem.\n\nProblem: {question}\n\n{team}\n\n"
               "Check their answers and write the final answer. "
               "Reply as <think>your reasoning</think><answer>the final answer</answer>")
SOLO_TASK = ("Solve this problem.\n\nProblem: {question}\n\n"
             "Reply as <think>your reasoning</think><answer>the final answer</answer>")
EXAMPLE_QUESTION = "Mia has 12 pencils. She gives 5 pencils to her brother. How many pencils does Mia have left?"
EXAMPLE_TEAM = ["12 - 5 = 7.\nThe answer is 7.", "12 + 5 = 17.\nThe answer is 17.", "She has 7 left.\nThe answer is 7."]
EXAMPLE_REPLY = ("<think>Mia gives pencils away, so we subtract: 12 - 5 = 7. Assistants 1 and 3 are right.</think>"
                 "<answer>7</answer>")


def format_team(responses: list[str]) -> str:
    return "\n\n".join(f"Assistant {i + 1}:\n{r.strip()}" for i, r in enumerate(responses))


def leader_prompt(leader, question: str, responses: list[str] | None) -> str:
    """The leader's prompt: the question and the team's current responses (none: the leader alone)."""
    if responses is None:
        task = SOLO_TASK.format(question=question)
        example = (SOLO_TASK.format(question=EXAMPLE_QUESTION), EXAMPLE_REPLY)
    else:
        task = LEADER_TASK.format(k=len(responses), question=question, team=format_team(responses))
        example = (LEADER_TASK.format(k=len(EXAMPLE_TEAM), question=EXAMPLE_QUESTION,
                                      team=format_team(EXAMPLE_TEAM)), EXAMPLE_REPLY)
    return leader.chat(task, examples=[example], assistant_prefix="<think>")


def leader_answer(reply: str, kind: str = "number", strict_format: bool = False) -> str | None:
    """The answer of a leader's reply: the last <answer>...</answer> (an unclosed last tag counts too).

    [ours] Without any <answer> tag, the reply's answer is read by `extract_answer` unless strict_format:
    the reviewers' description rewards only a tagged answer, which small models seldom write.
    """
    tagged = re.findall(r"<answer>(.*?)(?:</answer>|$)", reply, flags=re.S)
    if tagged:
        return extract_answer(tagged[-1], kind)
    return None if strict_format else extract_answer(reply, kind)


def leader_reward(reply: str, gold: str, kind: str = "number", strict_format: bool = False) -> float:
    """[ours, after the reviewers] 1 if the reply's answer matches the reference answer, else 0."""
    return float(is_correct(leader_answer(reply, kind, strict_format), gold, kind))


# ---------------------------------------------------------------- inference

@dataclasses.dataclass
class LeaderConfig:
    """The MLPO leader at inference (methods leader and leader-solo)."""
    leader_rounds: int = option(5, "[ours] T: rounds of team answers and leader aggregation")
    leader_temperature: float = option(0.0, "[ours] the leader's temperature at inference (0: greedy)")
    leader_max_new_tokens: int = option(256, "[ours] max new tokens of every answer in the leader's rounds: the "
                                             "team's first answers, the leader's replies, the agents' revisions")
    strict_format: bool = option(False, "[ours] read only a tagged <answer> (else fall back to extract_answer)")


def validate_leader_config(config: LeaderConfig) -> None:
    """A one-line ConfigError for a leader setting that would lead nothing."""
    require_at_least(config, 1, "leader_rounds", "leader_max_new_tokens")
    require(config, "leader_temperature", lambda t: t >= 0, "at least 0", "0 is greedy")


def revision_question(question: str, previous: str, leader_reply: str) -> str:
    return (f"{question}\n\nYour previous answer:\n{previous.strip()}\n\nYour team leader wrote:\n"
            f"<think>{leader_reply.strip()}\n\nWrite your answer again, corrected if needed.")


def lead_program(question: str, kind: str, agents: list, leader, config: LeaderConfig, seed: int = 0,
                 team: bool = True, examples: list | None = None):
    """MLPO inference as a program (engine.py): the team answers, the leader aggregates, the team revises; the
    last <answer> wins. `examples`: the problem's own few-shot exemplars for the agents (BBH, MMLU)."""
    tokens = config.leader_max_new_tokens
    responses = None
    if team:                                         # round 0: every agent answers the question
        answers = yield [Request(a.llm, a.prompt(question, kind, examples), temperature=a.temperature,
                                 max_new_tokens=tokens, seed=seed + i) for i, a in enumerate(agents)]
        responses = [generated.text for (generated,) in answers]
    transcript = []
    for t in range(config.leader_rounds if team else 1):
        [[reply]] = yield [Request(leader, leader_prompt(leader, question, responses),
                                   temperature=config.leader_temperature, max_new_tokens=tokens,
                                   stop=("</answer>",), seed=seed + 100 * (t + 1))]
        transcript.append({"team": responses, "leader": reply.text})
        if team and t + 1 < config.leader_rounds:  # each agent revises its own answer given the leader's reply
            revisions = yield [Request(a.llm, a.prompt(revision_question(question, r, reply.text), kind, examples),
                                       temperature=a.temperature, max_new_tokens=tokens,
                                       seed=seed + 100 * (t + 1) + i + 1)
                               for i, (a, r) in enumerate(zip(agents, responses))]
            responses = [generated.text for (generated,) in revisions]
    final = transcript[-1]["leader"]
    return {"prediction": leader_answer(final, kind, config.strict_format), "raw": [final],
            "tagged": "<answer>" in final, "transcript": transcript}


def lead(question: str, kind: str, agents: list, leader, config: LeaderConfig, seed: int = 0,
         team: bool = True, examples: list | None = None) -> dict:
    """`lead_program` run alone."""
    (result,) = run_programs([lead_program(question, kind, agents, leader, config, seed, team, examples)],
                             engine=hasattr(leader, "model"))
    return result


# ---------------------------------------------------------------- training

@dataclasses.dataclass
class TrainConfig:
    """python mlpo.py train: train the leader with a group-relative policy gradient."""
    dataset: str = option("arith", "training data: arith (its train split) or gsm8k (its train file)")
    data_dir: str | None = option(None, "folder with gsm8k/train.jsonl (else $ALIGN_DATA_DIR, else download)")
    questions: int = option(64, "training questions to build the offline pool from")
    preset: str = option("tiny", "tiny or paper: the team (see evaluate.py)")
    model: str | None = option(None, "one backbone for the team and the starting leader")
    leader: str | None = option(None, "the starting leader (default: the preset's)")
    init_from: str | None = option(None, "start policy-gradient training from this checkpoint, e.g. the folder "
                                         "`mlpo.py sft` saved (the starting leader, and the KL reference)")
    output: str = option("checkpoints/leader", "folder the trained leader is saved to (save_pretrained)")
    responses_per_agent: int = option(4, "[ours] offline pool: responses per agent per question")
    easy_threshold: float = option(0.75, "[ours] drop questions whose pool is correct at least this often")
    steps: int = option(20, "optimiser steps")
    prompts_per_step: int = option(1, "prompts (groups) per step")
    group_size: int = option(4, "G: leader samples per prompt")
    temperature: float = option(1.0, "[ours] the leader's sampling temperature in training")
    max_new_tokens: int = option(96, "[ours] max new tokens of a sampled leader reply, and of each team response "
                                     "in the offline pool (the loss's normaliser is G x this)")
    learning_rate: float = option(1e-5, "[ours] AdamW learning rate")
    clip_epsilon: float = option(0.2, "[ours] PPO clipping range")
    kl_coef: float = option(0.0, "[ours] weight of the KL to the starting model (0: none, as in Dr. GRPO)")
    ppo_epochs: int = option(1, "[ours] gradient steps on each batch of samples")
    strict_format: bool = option(False, "[ours] reward only a tagged <answer>")
    seed: int = option(0, "random seed (the pool, the prompts, the samples)")
    device: str | None = option(None, "cuda, cpu, ...")
    dtype: str = option("float32", "[ours] the trained leader's weights (and its KL reference's): float32, the "
                                   "master weights AdamW needs; the team loads in the machine's default (bf16 on cuda)")


def check_config(config, *at_least_one: str) -> None:
    """A one-line ConfigError for a bad training setting (TrainConfig or SFTConfig), before any model is loaded."""
    require(config, "dataset", lambda dataset: dataset in ("arith", "gsm8k"), "arith or gsm8k",
            "training reads their training splits")
    require(config, "preset", lambda preset: preset in PRESETS, f"one of {', '.join(PRESETS)}")
    require_at_least(config, 1, *at_least_one, "max_new_tokens")
    require(config, "learning_rate", lambda rate: rate > 0, "positive")
    if isinstance(config, TrainConfig):   # G greedy samples would be one sample G times: no advantage, no update
        require(config, "temperature", lambda t: t > 0, "positive",
                "a group of greedy samples is one sample G times, with no advantage to learn from")
    else:
        require(config, "temperature", lambda t: t >= 0, "at least 0")
    for name in ("clip_epsilon", "easy_threshold", "max_grad_norm", "completion_max_new_tokens"):
        if hasattr(config, name):
            require(config, name, lambda value: value > 0, "positive")
    if hasattr(config, "kl_coef"):
        require(config, "kl_coef", lambda value: value >= 0, "at least 0", "0 is no KL term")
    check_device_and_dtype(config.device, config.dtype)
    if os.path.exists(config.output) and not os.path.isdir(config.output):
        raise ConfigError(f"--output {config.output} is a file; the trained leader is saved to a folder (give a new "
                          f"or existing folder)")
    for name in ("model", "leader"):
        if getattr(config, name):
            check_model_name(getattr(config, name))


def build_pool(agents: list, problems: list[dict], responses_per_agent: int, max_new_tokens: int, seed: int):
    """The offline pool: `responses_per_agent` sampled responses of every agent to every question, made once
    (all questions in lockstep, engine.py)."""
    def responses(n, problem):
        answers = yield [Request(a.llm, a.prompt(problem["question"], problem["kind"], problem.get("examples")),
                                 n=responses_per_agent, temperature=a.temperature, max_new_tokens=max_new_tokens,
                                 seed=seed + 97 * n + i) for i, a in enumerate(agents)]
        return [[generated.text for generated in samples] for samples in answers]   # [agent][k]
    print(f"offline pool: {len(problems)} questions x {len(agents)} agents x {responses_per_agent} responses")
    all_responses = run_programs([responses(n, p) for n, p in enumerate(problems)],
                                 engine=all(hasattr(a.llm, "model") for a in agents))
    pool = []
    for problem, team in zip(problems, all_responses):
        correct = [is_correct(extract_answer(r, problem["kind"]), problem["answer"], problem["kind"])
                   for rs in team for r in rs]
        pool.append({**problem, "responses": team, "pool_accuracy": sum(correct) / len(correct)})
    return pool


def drop_easy_questions(pool: list[dict], threshold: float = 0.75) -> list[dict]:
    """[ours, after the reviewers] questions the team already solves >= threshold of the time teach nothing."""
    return [entry for entry in pool if entry["pool_accuracy"] < threshold]


def completion_logprobs(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int):
    """Per-token log p(completion token | everything before it), and the mask of real tokens: (batch, L) each.

    Rows are left-padded, [pads | prompt | completion], so every completion ends in the last column and only
    the last L + 1 positions need logits (L = the longest completion): the vocabulary projection is the
    memory hog of a small model. Completions are right-aligned in the output.
    """
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    width, longest = max(len(r) for r in rows), max(len(c) for c in completion_ids)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=model.device)        # (B, W)
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)      # what generate used: positions skip the pads
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions,
                   logits_to_keep=longest + 1).logits.float()                                       # (B, L+1, V)
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)      # column j predicts token W - L + j
    token_logprobs = logprobs.gather(-1, ids[:, width - longest:, None])[..., 0]                   # (B, L)
    mask = torch.tensor([[0.0] * (longest - len(c)) + [1.0] * len(c) for c in completion_ids], device=model.device)
    return token_logprobs * mask, mask


def mlpo_loss(new_logprobs, old_logprobs, advantages, mask, normalizer: float, clip_epsilon: float = 0.2,
              ref_logprobs=None, kl_coef: float = 0.0):
    """The whole MLPO / Dr. GRPO objective on one screen.

    new_logprobs, old_logprobs, ref_logprobs, mask: (G, L) per completion token; advantages: (G,).
    """
    # ALGO LOGIC:
    ratio = torch.exp(new_logprobs - old_logprobs)                             # pi_theta / pi_old, per token
    unclipped = ratio * advantages[:, None]
    clipped = torch.clamp(ratio, 1 - clip_epsilon, 1 + clip_epsilon) * advantages[:, None]
    per_token = -torch.minimum(unclipped, clipped)                            # PPO-style pessimistic bound
    if ref_logprobs is not None and kl_coef > 0:                              # k3 estimate of KL(pi || ref)
        log_ratio_ref = ref_logprobs - new_logprobs
        per_token = per_token + kl_coef * (torch.exp(log_ratio_ref) - log_ratio_ref - 1)
    return (per_token * mask).sum() / normalizer                              # Dr. GRPO: a constant, not |o_i|


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: reward minus the group mean, with no division by the group's standard deviation."""
    return rewards - rewards.mean()


def train(config: TrainConfig) -> dict:
    """Build the pool, filter it, and run `steps` group-relative policy-gradient steps on the leader."""
    check_config(config, "questions", "responses_per_agent", "steps", "prompts_per_step", "group_size", "ppo_epochs")
    if config.init_from and config.leader:
        raise SystemExit("error: --init-from and --leader both name the starting leader; give one")
    if config.init_from and not os.path.isdir(config.init_from):
        raise SystemExit(f"error: --init-from {config.init_from}: no such folder (give the folder `mlpo.py sft` "
                         f"saved)")
    problems = load_problems(config.dataset, config.data_dir, config.questions, config.seed,
                             split="train")                                      # never a test split
    agents = make_agents(config.preset, config.model, config.device)
    # the leader is a private copy: training must not change the team's shared backbone
    start = config.init_from or config.leader or config.model or PRESETS[config.preset]["leader"]
    print(f"starting leader: {start}")
    # [ours] The trained leader is held in float32 whatever the device (--dtype): AdamW's steps are ~lr (1e-5), under
    # half of bf16's spacing near a typical weight (2^-13 at 0.02), so a bf16 leader keeps almost every weight as it
    # was (measured on the embedded model: one step changed 1.9% of its weights in bf16, 99.97% in float32).
    leader = load_llm(start, config.device, config.dtype, fresh=True)
    reference = (load_llm(start, config.device, config.dtype, fresh=True)          # KL to the start
                 if config.kl_coef > 0 else None)
    pool = build_pool(agents, problems, config.responses_per_agent, config.max_new_tokens, config.seed)
    os.makedirs(config.output, exist_ok=True)
    with open(os.path.join(config.output, "pool.jsonl"), "w") as f:   # what the leader was trained on
        f.writelines(json.dumps(entry) + "\n" for entry in pool)
    kept = drop_easy_questions(pool, config.easy_threshold)
    print(f"pool: {len(pool)} questions, {len(kept)} kept (dropped {len(pool) - len(kept)} with pool accuracy "
          f">= {config.easy_threshold:.0%})")
    if not kept:
        raise SystemExit("error: every question was dropped as easy; use harder data or more --questions")
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(leader.model.parameters(), lr=config.learning_rate)
    normalizer = config.prompts_per_step * config.group_size * config.max_new_tokens
    history = []
    os.makedirs(config.output, exist_ok=True)
    log = open(os.path.join(config.output, "training_log.jsonl"), "w")   # one line per step, flushed
    for step in (bar := tqdm(range(config.steps), desc="train", dynamic_ncols=True)):
        prompt_ids, completion_ids, rewards, advantages = [], [], [], []
        leader.model.eval()
        for g in range(config.prompts_per_step):
            entry = rng.choice(kept)
            team = [rng.choice(responses) for responses in entry["responses"]]   # one response per agent
            prompt = leader_prompt(leader, entry["question"], team)
            replies = leader.sample(prompt, config.group_size, temperature=config.temperature,
                                    max_new_tokens=config.max_new_tokens, stop=["</answer>"],
                                    seed=config.seed * 100003 + step * 101 + g)
            group = torch.tensor([leader_reward(r, entry["answer"], entry["kind"], config.strict_format)
                                  for r in replies])
            rewards.append(group)
            advantages.append(group_advantages(group))
            # [ours] completions are re-tokenised from their text; a closed answer tag is put back
            completion_ids += [leader.encode(r + ("</answer>" if "<answer>" in r else "")) or [leader.pad_id]
                               for r in replies]
            prompt_ids += [leader.encode(prompt)] * config.group_size
        rewards, advantages = torch.cat(rewards), torch.cat(advantages).to(leader.device)
        with torch.no_grad():
            old, mask = completion_logprobs(leader.model, prompt_ids, completion_ids, leader.pad_id)
            ref = completion_logprobs(reference.model, prompt_ids, completion_ids, leader.pad_id)[0] \
                if reference else None
        leader.model.train()
        for _ in range(config.ppo_epochs):
            new, _ = completion_logprobs(leader.model, prompt_ids, completion_ids, leader.pad_id)
            loss = mlpo_loss(new, old, advantages, mask, normalizer, config.clip_epsilon, ref, config.kl_coef)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(leader.model.parameters(), 1.0)
            optimizer.step()
        history.append({"step": step, "reward": rewards.mean().item(), "loss": loss.item(),
                        "rewards": rewards.tolist()})
        log.write(json.dumps(history[-1]) + "\n")
        log.flush()
        bar.write(f"step {step:3d}  reward {rewards.mean().item():.3f}  loss {loss.item():+.5f}")
    log.close()
    leader.model.eval()
    leader.model.save_pretrained(config.output)
    leader.tokenizer.save_pretrained(config.output)
    print(f"saved the trained leader to {config.output}: use it with --leader {config.output} "
          f"or a method named leader@{config.output}")
    return {"history": history, "kept": len(kept), "pool": len(pool)}


# ---------------------------------------------------------------- SFT: synthetic backtracking data, then fine-tuning
# [paper] The main row ("SFT+MLPO") first fine-tunes the leader on synthetic self-correction examples: the leader
#         prompt with one response per agent, and a completion that goes down a wrong path, notices it and
#         backtracks to the correct answer -- generated by prompting the leader with a correct and an incorrect
#         aggregation, kept only when it ends right. The loss is on the completion's tokens only.
# [ours]  Everything else: the pool responses that play the two aggregations, the request's wording, the template
#         fallback, the extra keep rules, the loss's normalisation, the optimiser and its numbers.

@dataclasses.dataclass
class SFTConfig:
    """python mlpo.py sft: fine-tune the leader on synthetic backtracking examples (run before train)."""
    dataset: str = option("arith", "training data: arith (its train split) or gsm8k (its train file)")
    data_dir: str | None = option(None, "folder with gsm8k/train.jsonl (else $ALIGN_DATA_DIR, else download)")
    questions: int = option(64, "training questions to build the offline pool (and the examples) from")
    preset: str = option("tiny", "tiny or paper: the team (see evaluate.py)")
    model: str | None = option(None, "one backbone for the team and the starting leader")
    leader: str | None = option(None, "the starting leader (default: the preset's)")
    output: str = option("checkpoints/leader-sft", "folder for sft_data.jsonl, the log and the fine-tuned leader")
    responses_per_agent: int = option(4, "[ours] offline pool: responses per agent per question")
    max_new_tokens: int = option(96, "[ours] max new tokens of a pool response")
    completion_source: str = option("model-then-template",
                                    "[paper] model: the leader writes the completion, asked with a wrong and a right "
                                    "aggregation; [ours] template: a fixed wrong-then-right text; model-then-template: "
                                    "the template where no sampled completion was kept")
    attempts: int = option(4, "[ours] completions sampled per question (the first kept one is used)")
    temperature: float = option(0.7, "[ours] the leader's temperature when it writes completions")
    completion_max_new_tokens: int = option(256, "[ours] max new tokens of a sampled completion")
    require_wrong_path: bool = option(True, "[ours] keep a sampled completion only if it states the wrong answer "
                                            "before its <answer>")
    epochs: int = option(2, "[ours] passes over the examples")
    batch_size: int = option(4, "[ours] examples per optimiser step")
    learning_rate: float = option(1e-5, "[ours] AdamW learning rate")
    max_grad_norm: float = option(1.0, "[ours] gradient clipping (global norm)")
    seed: int = option(0, "random seed (the pool, the choice of responses, the samples, the order)")
    device: str | None = option(None, "cuda, cpu, ...")
    dtype: str = option("float32", "[ours] the fine-tuned leader's weights: float32, the master weights AdamW "
                                   "needs (see `train`); the team loads in the machine's default (bf16 on cuda)")


COMPLETION_SOURCES = ("model", "template", "model-then-template")
# [ours] The request that asks the leader for a backtracking completion, with a worked example (the one of
# LEADER_TASK, gone wrong first). The reply is started with "<think>", as the leader's own prompt starts it.
BACKTRACK_TASK = ("You lead a team of {k} assistants who answered a math problem.\n\nProblem: {question}\n\n{team}\n\n"
                  "Here are two ways to combine their answers.\nWrong: {wrong}\nRight: {right}\n\n"
                  "Reply as <think>your reasoning</think><answer>the final answer</answer>. In <think>, first follow "
                  "the wrong way as if you believed it, then notice the mistake, write \"Wait,\", re-check, and "
                  "follow the right way. The final answer is the right one.")
EXAMPLE_BACKTRACK = ("<think>Assistant 2 adds: 12 + 5 = 17, so Mia has 17 pencils. Wait, Mia gives pencils away, so "
                     "adding is wrong. Let me re-check: 12 - 5 = 7. Assistants 1 and 3 are right.</think>"
                     "<answer>7</answer>")
BACKTRACK_SENTENCE = "Wait, that is not right. Let me re-check the problem."   # [ours] the template's turn


def choose_aggregations(entry: dict, rng: random.Random) -> dict | None:
    """[ours] The team the leader is shown and the two aggregations, from one question's pool entry.

    Wrong: an incorrect pool response, preferring one that states an answer (a path to follow); it is shown
    as its agent's response. Right: a correct pool response, else "The answer is <reference>." The other
    agents show a random response each. None when every response in the pool is correct.
    """
    kind, gold = entry["kind"], entry["answer"]
    graded = [(i, r, extract_answer(r, kind)) for i, rs in enumerate(entry["responses"]) for r in rs]
    wrong = [(i, r, a) for i, r, a in graded if not is_correct(a, gold, kind)]
    if not wrong:
        return None
    wrong_agent, wrong_text, wrong_answer = rng.choice([w for w in wrong if w[2] is not None] or wrong)
    right = [r for _, r, a in graded if is_correct(a, gold, kind)]
    team = [wrong_text if i == wrong_agent else rng.choice(rs) for i, rs in enumerate(entry["responses"])]
    return {"team": team, "wrong_agent": wrong_agent, "wrong": wrong_text, "wrong_answer": wrong_answer,
            "right": rng.choice(right) if right else f"The answer is {gold}."}


def backtrack_request(leader, question: str, choice: dict) -> str:
    """[paper] The leader itself is asked for the completion, given a wrong and a right aggregation ([ours] wording)."""
    def task(question, team, wrong, right):
        return BACKTRACK_TASK.format(k=len(team), question=question, team=format_team(team),
                                     wrong=wrong.strip(), right=right.strip())
    example = (task(EXAMPLE_QUESTION, EXAMPLE_TEAM, EXAMPLE_TEAM[1], EXAMPLE_TEAM[0]), EXAMPLE_BACKTRACK)
    return leader.chat(task(question, choice["team"], choice["wrong"], choice["right"]), examples=[example],
                       assistant_prefix="<think>")


def template_completion(wrong_agent: int, wrong: str, right: str, answer: str) -> str:
    """[ours] The fallback completion: the wrong response, a fixed backtracking sentence, the right one."""
    return (f"Following Assistant {wrong_agent + 1}: {wrong.strip()}\n{BACKTRACK_SENTENCE}\n{right.strip()}"
            f"</think><answer>{answer}</answer>")


def keep_completion(completion: str, gold: str, kind: str, wrong_answer: str | None, require_wrong_path: bool):
    """[paper] Kept only when it ends right; [ours] in a tagged <answer>, after a sentence stating the wrong answer."""
    thought = completion.rsplit("<answer>", 1)[0]
    sentences = re.split(r"(?<=[.!?])\s+|\n", thought)
    went_wrong = (not require_wrong_path or wrong_answer is None
                  or any(is_correct(extract_answer(s, kind), wrong_answer, kind) for s in sentences))
    return leader_reward(completion, gold, kind, strict_format=True) == 1.0 and went_wrong


def build_sft_data(leader, pool: list[dict], config: SFTConfig) -> list[dict]:
    """One backtracking example per usable question: the leader prompt, a kept completion, and its source."""
    rng, examples = random.Random(config.seed), []
    for n, entry in enumerate(tqdm(pool, desc="sft data", dynamic_ncols=True)):
        choice = choose_aggregations(entry, rng)
        if choice is None:
            continue
        kind, gold, candidates = entry["kind"], entry["answer"], []
        if config.completion_source in ("model", "model-then-template"):
            replies = leader.sample(backtrack_request(leader, entry["question"], choice), config.attempts,
                                    temperature=config.temperature, max_new_tokens=config.completion_max_new_tokens,
                                    stop=["</answer>"], seed=config.seed * 100003 + n)
            candidates += [(r + ("</answer>" if "<answer>" in r else ""), "model") for r in replies]  # the stop back
        if config.completion_source in ("template", "model-then-template"):
            candidates.append((template_completion(choice["wrong_agent"], choice["wrong"], choice["right"], gold),
                               "template"))
        # the first candidate kept; the template holds the wrong response verbatim, so only the model's is checked
        kept = next(((completion, source) for completion, source in candidates if keep_completion(
            completion, gold, kind, choice["wrong_answer"], config.require_wrong_path and source == "model")), None)
        if kept:
            examples.append({"id": entry["id"], "prompt": leader_prompt(leader, entry["question"], choice["team"]),
                             "completion": kept[0], "source": kept[1], "question": entry["question"],
                             "answer": gold, "kind": kind, "team": choice["team"],
                             "wrong_answer": choice["wrong_answer"]})
    return examples


def sft_loss(logprobs, mask):
    """[paper] Next-token cross-entropy on the completion's tokens only: prompt and pad positions are masked out.

    logprobs, mask: (B, L) per completion token (`completion_logprobs`). [ours] The mean over all completion
    tokens of the batch, so a long completion weighs more than a short one (the usual SFT normalisation).
    """
    return -(logprobs * mask).sum() / mask.sum()


def sft(config: SFTConfig) -> dict:
    """Build the pool, make the backtracking examples, and fine-tune the leader on their completions."""
    check_config(config, "questions", "responses_per_agent", "attempts", "epochs", "batch_size")
    if config.completion_source not in COMPLETION_SOURCES:
        raise SystemExit(f"error: --completion-source must be one of {', '.join(COMPLETION_SOURCES)}, "
                         f"not {config.completion_source!r}")
    problems = load_problems(config.dataset, config.data_dir, config.questions, config.seed,
                             split="train")                                      # never a test split
    agents = make_agents(config.preset, config.model, config.device)
    leader = load_llm(config.leader or config.model or PRESETS[config.preset]["leader"], config.device, config.dtype,
                      fresh=True)                        # float32 by default, as in `train` (see there)
    pool = build_pool(agents, problems, config.responses_per_agent, config.max_new_tokens, config.seed)
    leader.model.eval()
    examples = build_sft_data(leader, pool, config)
    os.makedirs(config.output, exist_ok=True)
    for name, records in [("pool.jsonl", pool), ("sft_data.jsonl", examples)]:   # what the leader was tuned on
        with open(os.path.join(config.output, name), "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
    sources = {s: sum(e["source"] == s for e in examples) for s in ("model", "template")}
    print(f"sft data: {len(pool)} questions, {len(examples)} examples ({sources['model']} written by the leader, "
          f"{sources['template']} from the template), {len(pool) - len(examples)} questions without one")
    if not examples:
        raise SystemExit("error: no backtracking example was kept; use more --questions, more --attempts, or "
                         "--completion-source model-then-template")
    # ALGO LOGIC: supervised fine-tuning, the loss on the completion's tokens only
    encoded = [(leader.encode(e["prompt"]), leader.encode(e["completion"])) for e in examples]
    optimizer = torch.optim.AdamW(leader.model.parameters(), lr=config.learning_rate)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    rng, history = random.Random(config.seed), []
    log = open(os.path.join(config.output, "training_log.jsonl"), "w")   # one line per step, flushed
    leader.model.train()
    for step in (bar := tqdm(range(config.epochs * steps_per_epoch), desc="sft", dynamic_ncols=True)):
        epoch, k = divmod(step, steps_per_epoch)
        if k == 0:
            order = rng.sample(range(len(encoded)), len(encoded))           # [ours] a new shuffle every epoch
        batch = [encoded[i] for i in order[k * config.batch_size:(k + 1) * config.batch_size]]
        logprobs, mask = completion_logprobs(leader.model, [p for p, _ in batch], [c for _, c in batch],
                                             leader.pad_id)                # (B, L) each
        loss = sft_loss(logprobs, mask)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(leader.model.parameters(), config.max_grad_norm)
        optimizer.step()
        history.append({"step": step, "epoch": epoch, "loss": loss.item(), "examples": len(batch),
                        "completion_tokens": int(mask.sum().item()), "grad_norm": grad_norm.item()})
        log.write(json.dumps(history[-1]) + "\n")
        log.flush()
        bar.write(f"step {step:3d}  epoch {epoch}  loss {loss.item():.4f}")
    log.close()
    leader.model.eval()
    leader.model.save_pretrained(config.output)
    leader.tokenizer.save_pretrained(config.output)
    print(f"saved the fine-tuned leader to {config.output}; continue with:\n"
          f"  python mlpo.py train --init-from {config.output} --dataset {config.dataset} "
          f"--output {config.output.rstrip('/')}-mlpo")
    return {"history": history, "examples": len(examples), "pool": len(pool), "sources": sources}


def loss_demo():
    """The loss on a tiny hand-made batch, printed term by term."""
    new = torch.tensor([[-1.0, -0.5], [-2.0, 0.0]])
    old = torch.tensor([[-1.2, -0.5], [-1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    advantages = group_advantages(torch.tensor([1.0, 0.0]))
    print(f"rewards [1, 0] -> advantages {advantages.tolist()}")
    print(f"ratios {torch.exp(new - old).tolist()}")
    print(f"loss = {mlpo_loss(new, old, advantages, mask, normalizer=4.0).item():.6f}")


COMMANDS = {"sft": (SFTConfig, sft), "train": (TrainConfig, train)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else None
    if command == "loss-demo":
        return loss_demo()
    if command not in COMMANDS:
        raise SystemExit("usage: python mlpo.py sft [--help] | train [--help] | loss-demo")
    config_class, run = COMMANDS[command]
    (config,) = parse_configs(config_class.__doc__, config_class, argv=argv[1:])
    print_config(config)
    try:
        return run(config)
    except (ConfigError, DataError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
