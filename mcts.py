"""
mcts.py -- agents, and how each one searches for candidate answers with Monte Carlo tree search.

ALIGN (arXiv 2602.00127): step 1 of the loop in README.md:
    # [paper] Each agent generates candidate answers with MCTS: 16 rollouts, maximum depth 5.
    # [paper] Internal utility by self-consistency (utility.py).
    # [ours]  Everything else here: the tree is over partial solutions (a node = the question plus the
    #         reasoning steps so far, one step per line); UCT selection; expansion samples `children` next
    #         steps in one batched call (`root_children` at the root: a root as wide as the rollouts keeps
    #         U^i self-consistency over independent samples, and flattens the tree); a simulation completes the
    #         solution; the reward of a rollout is self-consistency -- the share of the agent's solutions
    #         found so far that agree with the answer it reached; backpropagation of that reward. A step
    #         that states the final answer, or depth `max_depth`, ends a branch. It is an rStar-like search
    #         without rStar's discriminator.

What makes it affordable: `parallel` rollouts are in flight at once (virtual loss keeps them on different
paths), asynchronously -- the moment one ends the next is selected, so a long completion holds up only its
own rollout -- and engine.py runs every search of a batch in lockstep, each rollout continuing the keys and
values of the node it starts from.

The search sees only the question text. The gold answer never reaches it.

Run:
    python mcts.py                             # one agent's tree for one arith problem, printed
    python mcts.py --question "..." --rollouts 8
    python mcts.py --benchmark                 # the engine vs the machine's limit vs the per-agent path

A forker edits `uct_score` (selection), `rollout_reward` (what a solution is worth), or the prompts.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch
from transformers import DynamicCache

from data import load_problems
from engine import BATCH_SIZE, FULL_FORWARD, IN_FLIGHT_CPU, SMALL_FORWARD, Request, Wait, discard, run_programs
from engine import STATS as engine_stats
from llm import (EMBEDDED_ALIAS, PRESETS, ConfigError, ModelLoadError, add_costs, check_device_and_dtype,
                 check_model_name, load_llm, option, parse_configs, print_config, random_model_like, require,
                 require_at_least)
from utility import KINDS, Sample, explicit_answer, extract_answer, group_into_classes, same_answer

# ---------------------------------------------------------------- agents and their prompts
# [ours] Few-shot exemplars written for this project (not taken from any dataset): one step per line,
# ending in a sentence that states the answer, which is what MCTS and the answer extraction expect.
NUMBER_EXAMPLES = [
    ("Mia has 12 pencils. She gives 5 pencils to her brother. How many pencils does Mia have left?",
     "Mia starts with 12 pencils.\nShe gives away 5, so 12 - 5 = 7.\nThe answer is 7."),
    ("A baker makes 4 trays of cookies with 9 cookies on each tray. He sells 10 cookies. "
     "How many cookies are left?",
     "4 trays of 9 cookies is 4 * 9 = 36 cookies.\nAfter selling 10, 36 - 10 = 26 cookies are left.\n"
     "The answer is 26."),
    ("Sam reads 15 pages on Monday and twice as many on Tuesday. How many pages does he read in total?",
     "On Tuesday he reads 2 * 15 = 30 pages.\nIn total he reads 15 + 30 = 45 pages.\nThe answer is 45."),
]
MATH_EXAMPLES = [
    ("What is $\\frac{1}{2} + \\frac{1}{3}$?",
     "The common denominator is 6.\n$\\frac{1}{2} + \\frac{1}{3} = \\frac{3}{6} + \\frac{2}{6} = \\frac{5}{6}$.\n"
     "The answer is $\\boxed{\\frac{5}{6}}$."),
    ("Solve for $x$: $2x + 3 = 11$.",
     "Subtract 3 from both sides: $2x = 8$.\nDivide by 2: $x = 4$.\nThe answer is $\\boxed{4}$."),
]
# [ours] Fallbacks for the new kinds when a problem brings no exemplars of its own (BBH and MMLU problems do:
# the benchmark's, in `problem["examples"]`), written for this project in the BBH answer style.
CHOICE_EXAMPLES = [
    ("Which number is a prime?\nOptions:\n(A) 21\n(B) 27\n(C) 29\n(D) 33",
     "21 = 3 * 7, 27 = 3 * 9 and 33 = 3 * 11 are not prime.\n29 has no divisor but 1 and itself.\n"
     "So the answer is (C)."),
]
TEXT_EXAMPLES = [
    ("Is the following sentence plausible? \"The goalkeeper caught the ball with his hands.\"",
     "A goalkeeper may catch the ball with his hands.\nSo the answer is yes."),
]
INSTRUCTIONS = {
    "number": "Solve the problem step by step, one step per line. End with 'The answer is N.'",
    "math": "Solve the problem step by step, one step per line. End with 'The answer is $\\boxed{ANSWER}$.'",
    "choice": "Answer the question step by step, one step per line. End with 'So the answer is (X).', "
              "where X is the letter of the right option.",
    "text": "Answer the question step by step, one step per line. End with 'So the answer is ANSWER.'",
}
BUILT_IN_EXAMPLES = {"number": NUMBER_EXAMPLES, "math": MATH_EXAMPLES, "choice": CHOICE_EXAMPLES,
                     "text": TEXT_EXAMPLES}


@dataclasses.dataclass
class Agent:
    """An agent: a model (possibly shared with other agents), its sampling temperature and prompt style."""
    name: str
    llm: object                 # llm.LLM, or anything with .chat, .generate and .counters (tests use fakes)
    temperature: float = 0.7
    few_shot: bool = True

    def prompt(self, question: str, kind: str = "number", examples: list | None = None) -> str:
        """The agent's prompt: the instruction for the kind, few-shot exemplars, then the question.

        `examples` are the problem's own (question, answer) exemplars (BBH, MMLU); None: the built-in ones.
        """
        examples = (BUILT_IN_EXAMPLES[kind] if examples is None else examples) if self.few_shot else []
        return self.llm.chat(f"{INSTRUCTIONS[kind]}\n\n{question}",
                             examples=[(f"{INSTRUCTIONS[kind]}\n\n{q}", a) for q, a in examples])


def make_agents(preset: str = "tiny", model: str | None = None, device: str | None = None,
                dtype: str | None = None) -> list:
    """The preset's agents (llm.PRESETS), each backbone loaded once; `model` puts one backbone in every agent."""
    return [Agent(f"agent-{i}:{model or name}@T={temperature}", load_llm(model or name, device, dtype), temperature)
            for i, (name, temperature) in enumerate(PRESETS[preset]["agents"])]


# ---------------------------------------------------------------- the search

@dataclasses.dataclass
class SearchConfig:
    """Monte Carlo tree search over reasoning steps (one search per agent and question)."""
    rollouts: int = option(16, "[paper] rollouts per agent and question")
    max_depth: int = option(5, "[paper] a branch ends at this many steps")
    children: int = option(3, "[ours] next steps sampled when a node below the root is expanded")
    # [ours] Measured on a toy model whose first step fixes the answer (shares 0.5, 0.3, 0.2; 400 searches per
    #        width; test_align.py repeats it with 100): a rollout beyond the root's width re-samples a first step
    #        that UCT picks, the leading answer's more often, so the top class's mean U was 0.73 at width 3, 0.66
    #        at 4, 0.61 at 8, 0.54 at 15 and 0.53 at 16, where 16 independent chains give 0.525 (the modal class's:
    #        0.54 at 3, 0.51 at 16, chains 0.50; before each generate call of the reference path drew from its own
    #        seed, the top class read 0.75, 0.68, 0.62, 0.54, 0.53; with the earlier waves of `parallel` rollouts
    #        0.79, 0.65, 0.61, 0.55, 0.53); only a width of --rollouts (16) came within two standard errors of the
    #        chains on every figure. That width makes the tree one step deep (every rollout completes its own first
    #        step: self-consistency over 16 chains, `max_depth` and UCT unused), which is no longer the paper's
    #        MCTS; so the default keeps the paper's tree, with its skew, and --root-children 16 is the measured
    #        choice for U^i as self-consistency over independent samples.
    root_children: int = option(3, "[ours] next steps sampled at the root, the first steps every rollout descends "
                                   "from; --rollouts or more gives every rollout its own (U^i then equals "
                                   "self-consistency over independent chains, and the tree is one step deep)")
    parallel: int = option(4, "[ours] rollouts in flight at once (virtual loss); as one ends, the next starts")
    exploration: float = option(1.0, "[ours] UCT exploration constant c")
    step_tokens: int = option(64, "[ours] max new tokens of one step")
    completion_tokens: int = option(256, "[ours] max new tokens of a simulation (completing a solution)")


def validate_search_config(config: SearchConfig) -> None:
    """A one-line ConfigError for a search setting that would search nothing."""
    require_at_least(config, 1, "rollouts", "max_depth", "children", "root_children", "parallel", "step_tokens",
                     "completion_tokens")
    require(config, "exploration", lambda c: c >= 0, "at least 0")


def validate_question(question: str, kind: str) -> None:
    """A one-line ConfigError for an empty --question or an unknown --kind (before any model is loaded)."""
    if not question.strip():
        raise ConfigError("--question is empty; pass the question to answer, e.g. --question \"What is 2 + 3?\"")
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)} (got {kind!r})")


@dataclasses.dataclass
class Node:
    steps: list                      # the reasoning steps from the root to here
    parent: "Node | None" = None
    children: list = dataclasses.field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    virtual_loss: int = 0            # rollouts now in flight through this node
    expanded: bool = False
    terminal: bool = False           # no children will ever be added
    answer: str | None = None        # the answer this node's last step states, if it states one
    solution: Sample | None = None   # the complete solution the first rollout through here reached
    state: object = None             # where the engine continues this partial solution (engine.State)
    ended: bool = False              # the model ended the text with this step (EOS)

    @property
    def depth(self) -> int:
        return len(self.steps)

    @property
    def trace(self) -> str:
        return "\n".join(self.steps)


def uct_score(child: Node, parent: Node, exploration: float) -> float:
    """UCT: mean reward plus an exploration bonus; unvisited children first.

    Virtual loss counts in-flight rollouts as visits with reward 0, so parallel selections spread out.
    """
    visits = child.visits + child.virtual_loss
    if visits == 0:
        return math.inf
    parent_visits = parent.visits + parent.virtual_loss
    return child.value_sum / visits + exploration * math.sqrt(math.log(max(parent_visits, 1)) / visits)


def select(root: Node, exploration: float) -> Node:
    """Walk down by UCT to a node that is terminal, not yet expanded, or has an unvisited child."""
    node = root
    while node.expanded and node.children and not node.terminal:
        best = max(node.children, key=lambda c: uct_score(c, node, exploration))  # first wins ties
        if best.visits + best.virtual_loss == 0:
            return best
        node = best
    return node


def rollout_reward(answer: str | None, samples: list[Sample]) -> float:
    """[ours] Self-consistency reward: the share of the agent's solutions so far that reach this answer."""
    if answer is None or not samples:
        return 0.0
    return sum(same_answer(s.answer, answer) for s in samples) / len(samples)


@dataclasses.dataclass
class SearchResult:
    """What one agent's search returns: every complete solution, and their answer classes with U^i(a)."""
    agent: str
    samples: list                    # list[Sample], in the order found
    classes: list                    # list[AnswerClass], utility = self-consistency share
    root: Node
    cost: dict                       # calls, prompt_tokens, generated_tokens, seconds of this search
    model_calls: int = 0             # times the search waited on the model (each wait serves many sequences)

    def describe(self) -> dict:
        """The JSONL view of this search: its answer classes with utilities, and what it spent."""
        return {"agent": self.agent, "solutions": len(self.samples), "cost": self.cost,
                "classes": [{"answer": c.answer, "utility": round(c.utility, 4), "count": len(c.samples)}
                            for c in self.classes]}


def search_program(agent: Agent, question: str, kind: str = "number", config: SearchConfig | None = None,
                   seed: int = 0, examples: list | None = None):
    """One agent's MCTS on one question, as a program for engine.run_programs: it asks for the expansions and
    simulations its rollouts need and gets their texts back. Returns a SearchResult. `examples`: the problem's
    few-shot exemplars (see Agent.prompt).

    [ours] Asynchronous: `parallel` rollouts are in flight at once (virtual loss keeps them apart), and the
    moment one ends -- its value backed up -- the next is selected. A rollout whose completion runs long holds up
    only itself; the other rollouts, and the next ones, go on beside it (the program yields engine.Wait, so it is
    woken as soon as any of its requests is done). Two rollouts that reach the same node share its expansion or
    its simulation, as they would in one model call."""
    config = config or SearchConfig()
    prompt = agent.prompt(question, kind, examples)
    root, samples, wakeups, started, done = Node(steps=[]), [], 0, 0, 0
    asked = {}       # id(request) -> [node, "expand" | "simulate", how many rollouts wait on it]
    busy = {}        # (id(node), what) -> that request, while it is in flight
    new = []         # requests asked for since the program last woke

    def need(node, what, **kwargs):
        """A rollout at `node` waits for its expansion or its simulation: asked for once, however many wait."""
        key = (id(node), what)
        if key not in busy:      # continue the node: the engine from its kept state, the reference from text
            busy[key] = Request(agent.llm, prompt, suffix=_suffix(node), state=node.state,
                                temperature=agent.temperature, seed=seed * 1000 + wakeups, **kwargs)
            asked[id(busy[key])] = [node, what, 0]
            new.append(busy[key])
        asked[id(busy[key])][2] += 1

    def go_on(leaf):
        """Take a rollout at `leaf` as far as it goes without the model: expand, simulate, or back up."""
        nonlocal done
        if not leaf.expanded and not leaf.terminal and (leaf is root or leaf.visits > 0):
            # 2. EXPAND: `children` next steps (the root: `root_children`), every one a line ending at "\n"
            return need(leaf, "expand", n=config.root_children if leaf is root else config.children,
                        stop=("\n",), max_new_tokens=config.step_tokens, keep=True)
        if leaf.solution is None and (leaf.answer is not None or leaf.ended):     # the step states the answer
            leaf.solution = Sample(leaf.answer if leaf.answer is not None else extract_answer(leaf.trace, kind),
                                   leaf.trace)
            samples.append(leaf.solution)
        if leaf.solution is None:
            # 3. SIMULATE: complete the partial solution
            return need(leaf, "simulate", max_new_tokens=config.completion_tokens)
        # 4. BACKPROPAGATE the rollout's self-consistency reward along its path; its virtual loss is lifted
        reward = rollout_reward(leaf.solution.answer, samples)
        for node in _path(leaf):
            node.visits += 1
            node.value_sum += reward
            node.virtual_loss -= 1
        for sample in samples:       # a solution's reward moves as the agent finds more solutions
            sample.reward = rollout_reward(sample.answer, samples)
        done += 1

    while done < config.rollouts:
        # 1. SELECT a leaf for each rollout that may start; virtual loss steers later selections elsewhere
        while started - done < config.parallel and started < config.rollouts:
            leaf = select(root, config.exploration)
            _add_virtual_loss(leaf)
            started += 1
            go_on(leaf)
        if done == config.rollouts:
            break
        finished = yield Wait(new)
        new, wakeups = [], wakeups + 1
        for request, result in finished:
            node, what, rollouts = asked.pop(id(request))
            del busy[(id(node), what)]
            if what == "expand":
                _add_children(node, result, kind, config.max_depth)
                for _ in range(rollouts):   # a rollout through a just-expanded node continues to one of its children
                    leaf = node
                    if node.children:
                        leaf = select(node, config.exploration)
                        leaf.virtual_loss += 1
                    go_on(leaf)
            else:
                (completion,) = result
                full = (_suffix(node) + completion.text).strip()
                node.solution = Sample(extract_answer(full, kind), full)
                samples.append(node.solution)
                for _ in range(rollouts):  # each rollout waiting on it backs up the solution
                    go_on(node)
    for node in _subtree(root):     # the search is over (nothing is in flight): its nodes' keys and values go back
        discard(node.state)         # to the problem's arena, for the other agents' searches to reuse
        node.state = None
    return SearchResult(agent.name, samples, group_into_classes(samples), root, {}, wakeups)


def search_all(searches: list, config: SearchConfig | None = None, accounts: list | None = None,
               arenas: list | None = None, engine: bool = True, window: int | None = None) -> list:
    """Many searches in lockstep: searches[k] = (agent, question, kind, seed, examples). Every engine step
    serves all of them, one forward per backbone. accounts[k] pays for search k (default: the open account);
    arenas[k] says where its tokens live (searches of one question share one, and the prompt with it); window: the
    most questions searched at once (engine.run_programs)."""
    programs = [search_program(agent, question, kind, config, seed, examples)
                for agent, question, kind, seed, examples in searches]
    return run_programs(programs, accounts, arenas, engine=engine, window=window)


def search(agent: Agent, question: str, kind: str = "number", config: SearchConfig | None = None,
           seed: int = 0, examples: list | None = None, engine: bool = True) -> SearchResult:
    """One agent's MCTS on one question, run alone. Same seed, same tree. engine=False: the reference path
    (LLM.generate, one call per expansion or simulation round, the prompt cached within a call)."""
    before, start = agent.llm.counters.snapshot(), time.perf_counter()
    (result,) = run_programs([search_program(agent, question, kind, config, seed, examples)],
                             engine=engine and hasattr(agent.llm, "model"))
    result.cost = {**agent.llm.counters.since(before), "seconds": time.perf_counter() - start}  # wall time
    return result


def _path(node: Node) -> list:
    """The node and its ancestors up to the root."""
    path = []
    while node is not None:
        path.append(node)
        node = node.parent
    return path


def _subtree(node: Node) -> list:
    return [node] + [n for child in node.children for n in _subtree(child)]


def _add_virtual_loss(node: Node) -> None:
    for n in _path(node):
        n.virtual_loss += 1


def _suffix(node: Node) -> str:
    """The partial solution as the assistant's text so far: one step per line."""
    return node.trace + "\n" if node.steps else ""


def _add_children(node: Node, steps: list, kind: str, max_depth: int) -> None:
    """Turn sampled next steps (engine.Generated) into child nodes (empty steps dropped, and a partial step equal to
    a sibling's: see below)."""
    node.expanded = True
    for generated in steps:
        step = generated.text.strip()
        answer = explicit_answer(step, kind)
        # [ours] A partial step equal to a sibling's is that sibling (one node, its rollouts share it). A step that
        # completes a solution -- it states the answer, or the model ended there -- is kept even when a sibling
        # says the same: it is a solution found again, a sample of its own when a rollout reaches it ([paper] U^i
        # counts the agent's samples, so dropping repeats flattens it toward the answers the agent does not
        # repeat). Measured on the main job's first 15 arith problems (45 searches): 159 of 714 sampled steps were
        # repeats that state an answer, 17 repeats of a partial step.
        if not step or (answer is None and not generated.ended and any(step == c.steps[-1] for c in node.children)):
            discard(generated.state)                          # no node will continue it: free its memory
            continue
        child = Node(steps=node.steps + [step], parent=node, state=generated.state, ended=generated.ended)
        child.answer = answer
        child.terminal = child.answer is not None or child.depth >= max_depth or child.ended
        if child.answer is not None or child.ended:
            discard(child.state)                              # a complete solution already: never continued
            child.state = None
        node.children.append(child)
    if not node.children:     # the model had nothing more to say: this node's own completion ends it
        node.terminal = True


def render_tree(node: Node, indent: str = "", width: int = 90) -> str:
    """The tree as indented text: visits, mean reward, the step, and the answer a branch reached."""
    lines = []
    if node.parent is None:
        lines.append(f"(root) visits={node.visits}")
    else:
        mean = node.value_sum / node.visits if node.visits else 0.0
        step = node.steps[-1].replace("\n", " ")
        step = step if len(step) <= width else step[:width - 3] + "..."
        end = f"  => answer {node.solution.answer!r}" if node.solution is not None else ""
        lines.append(f"{indent}[n={node.visits} Q={mean:.2f}] {step}{end}")
    for child in node.children:
        lines.append(render_tree(child, indent + "  ", width))
    return "\n".join(lines)


# ---------------------------------------------------------------- command line

@dataclasses.dataclass
class DemoConfig:
    """python mcts.py: one agent's search on one question, printed (or, with --benchmark, the engine's speed)."""
    question: str = option("Lena has 7 marbles. She finds 5 more and then gives 3 to Omar. "
                           "How many marbles does Lena have now?", "the question to search on")
    kind: str = option("number", f"answer kind: {', '.join(KINDS)}")
    model: str = option(EMBEDDED_ALIAS, "hub id, local folder, .gguf file, or smollm2-135m")
    temperature: float = option(0.7, "the agent's sampling temperature")
    seed: int = option(0, "random seed")
    device: str | None = option(None, "cuda, cpu, ... (default: cuda when present)")
    benchmark: bool = option(False, "measure the engine on the tiny preset's three agents: generated tokens/s of "
                                    "the lockstep engine, the bare decode loop and the per-agent reference path")
    benchmark_problems: int = option(BATCH_SIZE["cpu"], "benchmark: arith problems searched, all three agents "
                                                         "each (evaluate.py's batch on a CPU)")
    benchmark_in_flight: int = option(IN_FLIGHT_CPU["arith"], "benchmark: the most problems the engine searches at "
                                                               "once, the next starting as one ends (evaluate.py's "
                                                               "--in-flight on arith on a CPU)")
    bare_batch: int = option(64, "benchmark: rows of the bare decode loop (the machine's limit for this model)")
    reference_problems: int = option(2, "benchmark: run the per-agent reference path on the first N of the problems "
                                        "(about 80 s each on 2 CPU cores; its rate does not depend on N)")
    paper_shaped: bool = option(False, "benchmark: randomly initialised models shaped like the paper preset's "
                                       "agents (no download; for a GPU), instead of the tiny preset")
    tokenizer: str = option(EMBEDDED_ALIAS, "benchmark with --paper-shaped: the tokenizer the random models borrow "
                                            "(the embedded model's, or a folder saved with save_pretrained)")


@torch.no_grad()
def bare_decode_rate(llm, prompt: str, rows: int = 64, tokens: int = 64, repeats: int = 3) -> float:
    """Generated tokens/s of the bare decode loop: the prompt prefilled once and copied to `rows` rows, then the
    model's forward with a KV cache and an argmax, nothing else -- the most this model does on this machine.
    The best of `repeats` runs: a limit is the machine at its best (one run on this shared CPU read anywhere from
    251 to 320 tokens/s), and the best run makes the engine's ratio to it the cautious one."""
    ids = torch.tensor([llm.encode(prompt)], device=llm.device)
    rates = []
    for _ in range(repeats):
        cache = DynamicCache()
        logits = llm.model(ids, past_key_values=cache, use_cache=True).logits[:, -1]
        cache.batch_repeat_interleave(rows)
        token = logits.argmax(-1, keepdim=True).repeat(rows, 1)                      # (rows, 1)
        start = time.perf_counter()
        for t in range(tokens):
            position = torch.full((rows, 1), ids.shape[1] + t, device=llm.device)
            token = llm.model(input_ids=token, past_key_values=cache, position_ids=position,
                              use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        rates.append(rows * tokens / (time.perf_counter() - start))
    return max(rates)


def benchmark(agents: list, problems: list, config: SearchConfig, seed: int, bare_rows: int = 64,
              reference_problems: int | None = None, in_flight: int | None = None) -> dict:
    """The same searches (every agent on every problem) through the lockstep engine and through the per-agent
    reference path, and the bare decode loop beside them; prints the rates and their ratios."""
    jobs = [(agent, p["question"], p["kind"], seed + 17 * k + i, None)
            for k, p in enumerate(problems) for i, agent in enumerate(agents)]
    models = list({id(a.llm): a.llm for a in agents}.values())
    llm = agents[0].llm
    # the limit: the bare loop from a short context (the question alone), so the weights, not a long cached
    # prompt copied to every row, decide it; the same loop from the agents' few-shot prompt is shown beside it.
    # It moves with a shared machine's load (251-320 tokens/s across the 2-core runs README's "Speed" quotes), so it
    # is measured both before the searches and right after the engine's, and the best of the two is the limit: a
    # machine that slowed down or sped up during the engine's run does not flatter the engine's ratio.
    short_prompt = llm.chat(problems[0]["question"])
    limit_before = bare_decode_rate(llm, short_prompt, bare_rows)
    long_context = bare_decode_rate(llm, agents[0].prompt(problems[0]["question"], problems[0]["kind"]), bare_rows,
                                    tokens=16)
    rates = {}
    for label, engine in [("engine (lockstep, all problems and agents)", True),
                          ("per-agent reference (one problem, one agent at a time)", False)]:
        todo = jobs if engine or reference_problems is None else jobs[:reference_problems * len(agents)]
        if engine and in_flight and in_flight < len(problems):
            label = f"engine (lockstep, {in_flight} problems at once, all agents)"
        if not engine and len(todo) < len(jobs):
            label = f"per-agent reference (the first {reference_problems} problem(s) only)"
        before, start = [m.counters.snapshot() for m in models], time.perf_counter()
        if engine:
            stats = dict(engine_stats)
            search_all(todo, config, arenas=[question for _, question, *_ in todo], window=in_flight)
            stats = {k: engine_stats[k] - v for k, v in stats.items()}
        else:
            for agent, question, kind, job_seed, examples in todo:
                search(agent, question, kind, config, job_seed, examples, engine=False)
        seconds = time.perf_counter() - start
        spent = add_costs(*[m.counters.since(b) for m, b in zip(models, before)])
        rates[engine] = spent["generated_tokens"] / seconds
        print(f"  {label:<56} {spent['generated_tokens']:7d} tokens in {seconds:7.1f}s = {rates[engine]:7.1f} "
              f"tokens/s  ({spent['calls']} sequences, {spent['prompt_tokens']} prompt tokens billed)", flush=True)
        if engine:
            limit_after = bare_decode_rate(llm, short_prompt, bare_rows)
    limit = max(limit_before, limit_after)
    print(f"  {f'bare decode loop, batch {bare_rows}, from a short context (the limit)':<56} {'':>25} = {limit:7.1f} "
          f"tokens/s  ({len(llm.encode(short_prompt))}-token context; the best of 3 runs before the searches, "
          f"{limit_before:.1f}, and 3 right after the engine's, {limit_after:.1f})")
    print(f"  {f'bare decode loop, batch {bare_rows}, from the agents few-shot prompt':<56} {'':>25} = "
          f"{long_context:7.1f} tokens/s  (the prompt copied to every row of the cache)")
    print(f"  the engine ran {stats['forwards']} forwards, {stats['tokens_fed']} tokens through the model, "
          f"{stats['tokens_copied']} tokens copied from another problem's arena")
    small = stats["small_forwards"]
    print(f"  {small} of the forwards ({small / max(stats['forwards'], 1):.0%}) fed at most {SMALL_FORWARD} tokens "
          f"(the searches' tail: a few long rollouts while the rest wait); they took "
          f"{stats['small_seconds'] / max(stats['seconds'], 1e-9):.0%} of the forwards' time")
    if stats["full_steps"]:     # the engine itself, where it had as many rows as the bare loop: the rest is the tail
        full_rate = stats["full_tokens"] / max(stats["full_seconds"], 1e-9)
        other = "" if bare_rows == FULL_FORWARD else f" (engine.FULL_FORWARD; the bare loop here had {bare_rows})"
        print(f"  in the {stats['full_steps']} steps where at least {FULL_FORWARD} rows generated{other}, the engine "
              f"made {stats['full_tokens']} tokens in {stats['full_seconds']:.1f}s = {full_rate:.1f} tokens/s "
              f"({full_rate / limit:.2f} of the limit)")
    if torch.cuda.is_available():
        print(f"  GPU memory: peak {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB allocated")
    print(f"engine/limit: {rates[True] / limit:.2f}  engine/per-agent: {rates[True] / rates[False]:.2f}")
    return {"engine": rates[True], "per_agent": rates[False], "limit": limit}


def validate_demo_config(demo: DemoConfig) -> None:
    validate_question(demo.question, demo.kind)
    require(demo, "temperature", lambda t: t >= 0, "at least 0")
    require_at_least(demo, 1, "benchmark_problems", "benchmark_in_flight", "bare_batch", "reference_problems")
    check_device_and_dtype(demo.device)
    check_model_name(demo.model)


def main(argv=None) -> None:
    demo, search_config = parse_configs(__doc__.split("\n\n")[0], DemoConfig, SearchConfig, argv=argv)
    try:
        validate_demo_config(demo)
        validate_search_config(search_config)
        print_config(demo, search_config)
        if demo.benchmark and demo.paper_shaped:
            problems = load_problems("arith", limit=demo.benchmark_problems, seed=demo.seed)
            agents = [Agent(f"agent-{i}:random-like:{name}", random_model_like(name, demo.tokenizer, demo.device),
                            temperature) for i, (name, temperature) in enumerate(PRESETS["paper"]["agents"])]
        elif demo.benchmark:
            problems = load_problems("arith", limit=demo.benchmark_problems, seed=demo.seed)
            agents = make_agents("tiny", None if demo.model == EMBEDDED_ALIAS else demo.model, demo.device)
        else:
            agent = Agent("agent-0", load_llm(demo.model, demo.device), demo.temperature)
    except (ConfigError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}") from None
    if demo.benchmark:
        print(f"{len(problems)} arith problems x {len(agents)} agents ({', '.join(a.llm.name for a in agents)}), "
              f"{search_config.rollouts} rollouts each, on {agents[0].llm.device} "
              f"({torch.cuda.get_device_name() if torch.cuda.is_available() else f'{torch.get_num_threads()} threads'})")
        benchmark(agents, problems, search_config, demo.seed, demo.bare_batch, demo.reference_problems,
                  demo.benchmark_in_flight)
    else:
        result = search(agent, demo.question, demo.kind, search_config, demo.seed)
        print(render_tree(result.root))
        print("\nanswer classes (U = self-consistency share):")
        for c in result.classes:
            print(f"  {c.answer!r:>10}  U={c.utility:.2f}  ({len(c.samples)} of {len(result.samples)} solutions)")
        print(f"cost: {result.cost}  model invocations: {result.model_calls}")

if __name__ == "__main__":
    main()
