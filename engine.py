"""
engine.py -- many sequences, one forward: the lockstep generation engine behind every method.

ALIGN's cost is candidate generation: three agents x 16 MCTS rollouts per question, each rollout a few short
steps that continue a shared prompt. Run one agent and one problem at a time, a model call carries a dozen
sequences and re-encodes every partial solution. This engine runs the searches (and the baselines' samples,
the principal's scoring, the leader's rounds) of many problems and agents together:

  * Programs. A per-problem procedure (an agent's MCTS, a leader's rounds, ...) is a Python generator that
    `yield`s the model requests it needs and receives their results:
        [children] = yield [Request(llm, prompt, n=3, temperature=0.7, stop=("\\n",), keep=True)]
    `run_programs` runs many programs in lockstep: each engine step gathers every sequence in flight on the
    same backbone -- whatever its problem, agent or temperature -- into one forward. A program that yields
    `Wait(requests)` instead is woken as soon as any of its requests ends (an asynchronous MCTS).
  * An arena per problem. Every token's keys and values are computed once and stored in its problem's
    arena; a sequence is the set of arena slots it sees (its prompt, the steps above it in the tree, its own
    tokens). A child of an MCTS node continues from the node's slots, so nothing is re-encoded, and prompts
    that share a token prefix (the agents' common prompt) share its slots: prefilled once per problem.
  * Attention over the arena. One forward takes the new tokens of all sequences as one flat batch and our
    attention function (`arena_attention`) lets each attend to exactly the slots it sees: no padding, no copy
    of a shared prompt per row, and a sequence that has ended costs nothing more. A forward feeds at most
    TOKENS_PER_STEP tokens: the rows' next tokens first, then a queue of prompt and scored-continuation tokens,
    so a long prompt is prefilled in pieces beside the rows that generate.
  * A seed per sequence: each samples with its own generator (Gumbel-max), so its text does not depend on
    what else shares its forward.

`run_programs(..., engine=False)` is the reference path kept from before: one program at a time, each request
through `LLM.generate` / `LLM.score`. The tests check that under greedy decoding both paths write the same text.

A forker rarely edits this file; it is plumbing. `python mcts.py --benchmark` measures it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import time

import torch
from transformers import AttentionInterface

from llm import billing, derive_seed

ARENA_ATTENTION = "align_arena"        # the name our attention function is registered under
# What the engines did, for the benchmarks: forwards run, tokens that went through a model, tokens whose keys and
# values were copied from another problem's arena instead; the forwards that fed at most SMALL_FORWARD tokens
# (a batch's tail: a few long rollouts left while the rest wait) with their seconds, beside all forwards' seconds;
# and the steps in which at least FULL_FORWARD rows fed the token they had just sampled (as many as the bare loop's
# batch), with those generated tokens and the steps' whole seconds (sampling and any prefill beside them included):
# how fast the engine generates when it has as much to do as the bare loop.
STATS = {"forwards": 0, "tokens_fed": 0, "tokens_copied": 0, "small_forwards": 0, "small_seconds": 0.0,
         "seconds": 0.0, "full_steps": 0, "full_tokens": 0, "full_seconds": 0.0}
SMALL_FORWARD = 3
FULL_FORWARD = 64
# [ours] The most tokens one forward feeds (its rows first, then the queue of prompts' and scored continuations'
# tokens). On a CPU a forward's cost per token is flat beyond a few dozen tokens, and the budget bounds what a
# forward holds (attention scores; the logits of scored tokens, 256 x 49,152 x 4 bytes = 50 MB on the embedded
# model). Measured on 2 cores, `evaluate.py --methods principal --limit 6`: peak 1.81 GiB and 16.8 s/problem at
# 1024, 1.63 GiB and 17.3 s at 256, the same records. On a GPU a bigger forward is cheaper per token: 1024 (not
# measured on one).
TOKENS_PER_STEP = {"cpu": 256, "cuda": 1024}

# [ours] The problems run together (evaluate.py --batch-size: the unit of records and of resume) and, of those, the
# most whose programs run at once (--in-flight: the rolling window of run_programs), chosen by measurement (README,
# "Speed"); the benchmark in mcts.py uses the CPU ones (arith's window, below). On a 2-core CPU, batches of 15
# through a window of 12: the main job (arith) took 9.1 min at a peak of 1.60 GiB (a window of 6: 9.4-9.7 min,
# 1.37 GiB; batches of 6 all at once, before: 11.7 min, 1.90 GiB; the same records all three; since the sampling
# keeps its buffers, 8.0 min at 1.65 GiB). But a problem's arena grows with its prompts and solutions: on GSM8K a
# window of 12 peaked at 2.43 GiB, over the 2 GiB a `tiny` run may use, and a window of 6 at 1.86 GiB (each
# problem's searches hold ~0.13 GiB of keys and values at their peak; the same records). So 6.
# A GPU wants many sequences per forward: a batch of 32, all at once (not measured yet).
BATCH_SIZE = {"cpu": 15, "cuda": 32}
IN_FLIGHT = {"cpu": 6, "cuda": None}
# [ours] On a CPU, the datasets whose problems hold few enough keys and values for more of them at once (evaluate.py
# and the benchmark in mcts.py read arith's). What a problem holds is set by its solutions, not its prompt (GSM8K's
# and arith's prompts are both ~400-500 tokens), and is not known before its searches end: on GSM8K's first 15
# problems one problem's searches peaked at 1,357-3,274 arena slots, on arith's (one- and two-step questions) at
# 644-1,622. So a budget in bytes could only guess, and the first problems to end are the small ones: a rule that
# learned from them overshot a 0.7 GiB budget by a third (0.92 GiB) when replayed on these runs. A measured number
# per dataset does not guess: arith's 15 problems hold at most 0.42 GiB of keys and values at 12 in flight (GSM8K's,
# replayed: 1.18 GiB), and from 10 in flight on, the batch's slowest search alone sets how many forwards the
# searches take (580 measured at 12, against 810 at 6): in one process they generated 220 tokens/s at 12 against
# 192 at 6, the same answers. The main job, back to back: 5 min 17 s at 12 against 6 min 11 s at 6, peaks 1.65 and
# 1.41 GiB, 176 of 180 records identical (the other four: a principal score's fourth decimal). MMLU gains nothing:
# the embedded model answers in one line, so its searches end at the root's children and leave no drain to fill
# (15 problems: 1 min 39 s and 1.43 GiB at 12, 1 min 27 s and 1.22 GiB at 6, the same records).
IN_FLIGHT_CPU = {"arith": 12}


@dataclasses.dataclass
class Request:
    """What a program asks of a model: `n` continuations of a prompt (or of an earlier continuation), or the
    log-probabilities of some continuations of the prompt (`score`)."""
    llm: object                      # llm.LLM (the reference path also accepts fakes with generate/score)
    prompt: str                      # the prompt text
    suffix: str = ""                 # text after the prompt, for the reference path (the engine uses `state`)
    state: object = None             # an earlier continuation (kept with keep=True) to continue from
    n: int = 1
    temperature: float = 0.0         # 0: greedy
    max_new_tokens: int = 256
    stop: tuple = ()                 # a sequence ends at the first stop string (its text is cut before it)
    seed: int = 0
    keep: bool = False               # keep each continuation's place, so that later requests can continue it
    score: tuple = ()                # score these continuations (summed log-probabilities) instead


@dataclasses.dataclass
class Generated:
    """One continuation."""
    text: str                        # cut before the first stop string
    tokens: int = 0                  # tokens generated (counted as generated_tokens)
    ended: bool = False              # the model ended it (EOS): nothing can continue it
    state: object = None             # where a later request continues it (keep=True and not ended)
    ids: list = dataclasses.field(default_factory=list)   # the generated token ids (stop text included)


# ================================================================ programs

def _glibc(name: str):
    """A function of the C library when it is glibc's, else None (macOS, musl, Windows: the memory settings
    below are then skipped)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


# glibc keeps the heap memory that the forwards' many differently sized activations free, so the resident size of a
# CPU run grows by ~0.6 GiB over a batch (measured: 1.71 GiB after 8 problems' searches, 0.97 after trimming):
# malloc_trim hands it back.
release_freed_memory = _glibc("malloc_trim") or (lambda pad: None)


def keep_big_blocks_in_mmap() -> None:
    """glibc serves big blocks (a forward's activations and logits) with mmap, handed back whole when freed, but
    after freeing one it raises that threshold, so later big blocks come from the heap, where freed memory stays
    resident and a run's size creeps up batch after batch. Fixing the threshold (M_MMAP_THRESHOLD = -3) at 64 KiB
    keeps them in mmap. Measured on 2 cores, `evaluate.py --methods cot,sc,vote,principal --limit 12`: peak 1.68 ->
    1.55 GiB, the same records; the main job 2.04 -> 1.90 GiB. It costs time where big blocks are allocated every
    token (a DynamicCache grown by concatenation: the bare decode loop at batch 64 fell from ~312 to 178 tokens/s),
    so evaluate.py sets it for its long runs and the benchmarks leave glibc's default alone."""
    mallopt = _glibc("mallopt")
    if mallopt:
        mallopt(-3, 64 * 1024)


@dataclasses.dataclass
class Wait:
    """What a program yields to be woken as soon as *any* of its requests is done, rather than all of them (a
    plain list of requests waits for all). `requests` join those still in flight; the program receives
    [(request, result), ...] for every request finished since it last woke, in the order they were asked for.
    An asynchronous MCTS uses it: a rollout that ends starts the next one while the others keep going.
    The reference path runs every request in flight to its end at once, so there a program gets all of them."""
    requests: list


def run_programs(programs: list, accounts: list | None = None, arenas: list | None = None, engine: bool = True,
                 max_tokens_per_step: int | None = None, window: int | None = None) -> list:
    """Run generator programs to completion; returns what each one returned.

    A program yields a list of Requests and receives their results, in order, once all are done; or it yields
    a Wait and receives (request, result) pairs as soon as any is done (see Wait).
    accounts[i]: who pays for program i's requests (see llm.billing); arenas[i]: the arena its tokens live in
    (programs of one problem share one, and with it their common prompt); by default one each.
    engine=False: the reference path, one program at a time, each request through LLM.generate / LLM.score.
    max_tokens_per_step: the most tokens a forward feeds (default: TOKENS_PER_STEP for the model's device).
    window: the most arenas (problems) whose programs run at once (default: all). Programs start in order; the
    next problem's programs start the moment the last one of a running problem ends, so their requests fill the
    forwards a problem's slowest search leaves nearly empty (a rolling window); a finished problem's arena is freed.
    A program that returns while requests it asked for (with Wait) are still in flight leaves them to run to their
    end: their results are dropped, their tokens still billed to its account. None of ours does; a delegation rule
    that stops early wastes those tokens, so ask for no more than the rule may use.
    """
    accounts = accounts or [None] * len(programs)
    arenas = arenas or list(range(len(programs)))
    if not engine:
        return [_run_alone(program, account) for program, account in zip(programs, accounts)]
    outputs = [None] * len(programs)
    waiting, any_of = {}, {}        # program -> [request, result] of its requests in flight; woken by any?
    engines: dict = {}              # one per backbone

    def advance(i, sent):
        try:
            yielded = programs[i].send(sent)
        except StopIteration as stop:
            outputs[i] = stop.value
            waiting.pop(i, None)
            return
        any_of[i] = isinstance(yielded, Wait)
        requests = list(yielded.requests if any_of[i] else yielded)
        in_flight = waiting.get(i, []) if any_of[i] else []
        if any_of[i] and not requests and not in_flight:
            raise RuntimeError("a program waits for any of its requests, but it has none in flight")
        waiting[i] = in_flight + [[request, _MISSING] for request in requests]
        for j, request in enumerate(requests):
            backbone = engines.setdefault(id(request.llm), Engine(request.llm, max_tokens_per_step))
            backbone.submit(request, j, arenas[i], accounts[i],
                            lambda result, entry=waiting[i][len(in_flight) + j]: entry.__setitem__(1, result))

    def woken(i):
        """Program i's results, if it is to be woken now (else None)."""
        done = [entry for entry in waiting[i] if entry[1] is not _MISSING]
        if any_of[i]:
            if not done:
                return None
            waiting[i] = [entry for entry in waiting[i] if entry[1] is _MISSING]
            return [tuple(entry) for entry in done]
        return [result for _, result in waiting[i]] if len(done) == len(waiting[i]) else None

    # [ours] The rolling window: programs are admitted in order; a program of a problem already running joins it,
    # another waits until fewer than `window` problems run. The schedule is a function of the programs alone, so
    # the same call gives the same results.
    running: dict = {}              # arena key -> how many of its programs are still running
    admitted = 0                    # programs 0 .. admitted-1 have started

    def admit():
        nonlocal admitted
        while admitted < len(programs) and (window is None or arenas[admitted] in running or len(running) < window):
            i, admitted = admitted, admitted + 1
            running[arenas[i]] = running.get(arenas[i], 0) + 1
            advance(i, None)
            if i not in waiting:                           # it returned without asking for anything
                finished(i)

    def finished(i):
        running[arenas[i]] -= 1
        if not running[arenas[i]]:
            del running[arenas[i]]
            if window is not None:                         # nobody of that problem is left: free its keys and values
                for backbone in engines.values():
                    backbone.arenas.pop(arenas[i], None)

    admit()
    steps = 0
    while waiting:
        for backbone in engines.values():
            backbone.step()
        for i in list(waiting):
            results = woken(i)
            if results is not None:
                advance(i, results)
                if i not in waiting:
                    finished(i)
        admit()
        steps += 1
        if steps % 100 == 0:
            release_freed_memory(0)
    engines.clear()                                          # the arenas go with their engines
    release_freed_memory(0)
    return outputs


_MISSING = object()                 # a result not in yet


def _run_alone(program, account):
    """The reference path. Requests that differ only in their suffix share one generate call. A Wait runs every
    request in flight to its end, so the program is woken with all of them."""
    sent = None
    with billing(account):
        while True:
            try:
                yielded = program.send(sent)
            except StopIteration as stop:
                return stop.value
            requests = list(yielded.requests if isinstance(yielded, Wait) else yielded)
            results = [None] * len(requests)
            for group in _calls(requests):
                first = requests[group[0]]
                if first.score:
                    results[group[0]] = first.llm.score(first.prompt + first.suffix, list(first.score))
                    continue
                texts = first.llm.generate(first.prompt, [requests[r].suffix for r in group], first.n,
                                           temperature=first.temperature, max_new_tokens=first.max_new_tokens,
                                           stop=list(first.stop) or None,     # each call its own draws, as each
                                           seed=derive_seed(first.seed, group[0]))   # request has in the engine
                for r, row in zip(group, texts):
                    results[r] = [Generated(text) for text in row]
            sent = list(zip(requests, results)) if isinstance(yielded, Wait) else results


def _calls(requests: list) -> list:
    """Indices of the requests, grouped into the generate calls that serve them: a run of consecutive requests
    with the same prompt and settings shares one."""
    groups = []
    for r, request in enumerate(requests):
        key = (id(request.llm), request.prompt, request.n, request.temperature, request.max_new_tokens,
               tuple(request.stop), request.seed)
        if groups and not request.score and groups[-1][0] == key:
            groups[-1][1].append(r)
        else:
            groups.append((key if not request.score else None, [r]))
    return [group for _, group in groups]


# ================================================================ the arena and its attention

class Arena:
    """One problem's key/value store on one backbone: slots filled in order, each holding one token's keys and
    values in every layer, and its position id (sliding-window layers need it)."""

    def __init__(self, model, capacity: int = 256):
        config = model.config.get_text_config()
        heads = config.num_attention_heads
        self.heads, self.kv_heads = heads, getattr(config, "num_key_value_heads", None) or heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.layers, self.dtype, self.device = config.num_hidden_layers, model.dtype, model.device
        self.length = 0                                # slots used so far (the attention reads slots < length)
        self.free: list = []                           # slots of finished sequences nobody sees any more
        self.prompts: list = []                        # _Prompt: every prompt queued or prefilled here
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        # One block for every layer's keys and values (2, layers, 1, kv_heads, capacity, dim), so growing or freeing
        # an arena is one allocation; torch.empty, since a page costs memory only once written. Slots at or past
        # `length` are never read, and `take` zeroes each fresh slot as it hands it out.
        storage = torch.empty((2, self.layers, 1, self.kv_heads, capacity, self.head_dim), dtype=self.dtype,
                              device=self.device)
        positions = torch.zeros(capacity, dtype=torch.long, device=self.device)
        if self.length:                                # growing: keep what is there
            storage[..., :self.length, :] = self.storage[..., :self.length, :]
            positions[:self.length] = self.positions[:self.length]
        self.storage, self.positions = storage, positions
        self.keys, self.values = list(storage[0]), list(storage[1])      # per layer: (1, kv_heads, capacity, dim)

    def take(self, positions: list) -> torch.Tensor:
        """Slots for tokens at these position ids: freed ones first, then fresh ones."""
        reused, fresh = self.free[:len(positions)], len(positions) - min(len(positions), len(self.free))
        del self.free[:len(reused)]
        if self.length + fresh > self.positions.shape[0]:
            self._allocate(max(self.positions.shape[0] * 5 // 4, self.length + fresh + 256))
        slots = torch.tensor(reused + list(range(self.length, self.length + fresh)), dtype=torch.long,
                             device=self.device)
        # The attention reads every slot below `length` and masks the ones a query does not see; a masked slot
        # still enters the arithmetic (NaN + -inf is NaN, 0 x NaN is NaN), so it must hold finite numbers even
        # before its forward writes it -- a prompt takes all its slots when queued and is fed over several steps
        # (chunked prefill). torch.empty may hold NaN (it did on CI): zero the fresh slots.
        self.storage[..., self.length:self.length + fresh, :] = 0
        self.positions[slots] = torch.tensor(positions, dtype=torch.long, device=self.device)
        self.length += fresh
        return slots

    def release(self, slots: torch.Tensor) -> None:
        """Slots no sequence will ever see again (a finished sample nobody continues): reuse them. Their old keys
        stay until overwritten, but no mask points at them."""
        self.free += slots.tolist()

    def copy_from(self, source: "Arena", source_slots: torch.Tensor, positions: list) -> torch.Tensor:
        """Slots here holding a copy of another arena's keys and values (a prefix it has already computed)."""
        slots = self.take(positions)
        for layer in range(self.layers):
            self.keys[layer].index_copy_(2, slots, source.keys[layer].index_select(2, source_slots))
            self.values[layer].index_copy_(2, slots, source.values[layer].index_select(2, source_slots))
        return slots

    def shared_prefix(self, ids: list) -> tuple:
        """The longest token prefix of `ids` already here (queued or prefilled): (its length, its slots, and the
        earlier _Prompt when that prompt is the whole of `ids`)."""
        best, slots, same = 0, None, None
        for other in self.prompts:
            common = common_prefix(ids, other.ids)
            if common > best or (common == best == len(ids) == len(other.ids)):
                best, slots = common, other.slots[:common]
                same = other if common == len(ids) == len(other.ids) else None
        return best, slots, same


def common_prefix(a: list, b: list) -> int:
    """The length of the longest common prefix of two token lists (binary search over slice comparisons)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


@dataclasses.dataclass
class _Prompt:
    """A prompt in an arena: its tokens, their slots, and (once its last token is through) the next-token logits.
    Prompts that share a token prefix share its slots -- even when queued in the same forward, since a forward
    writes every new token's keys before any token attends.

    [ours] A prompt's own slots (past the prefix it shares) go back to the arena once nothing can see them again:
    every request started from it has ended, no later prompt shares them, and no request from it kept its
    continuations (a kept state, an MCTS node, sees the prompt for as long as the search lives: `pinned`). A
    leader's rounds ask with a new prompt each round (the team's answers, each agent's revision); kept, they grew a
    problem's arena to ~0.36 GiB (measured: `--methods leader` on arith peaked at 2.09 GiB with 3 problems at once,
    2.66 with 6, 3.74 with 12). Given back: 1.51 GiB with 6 (4 min 58 s against 7 min 53 s; 5 of 6 records the
    same, the sixth's last reply took another path: reused slots move a float's last bits), 1.84 GiB with 12."""
    ids: list
    slots: torch.Tensor
    logits: torch.Tensor | None = None
    waiting: list = dataclasses.field(default_factory=list)   # callbacks for requests with this very prompt
    own: torch.Tensor | None = None  # the slots it took itself
    users: int = 0                   # its requests not ended, and the later prompts that share its own slots
    pinned: bool = False             # a request from it kept its continuations: never freed
    shares: list = dataclasses.field(default_factory=list)    # the earlier prompts whose own slots it sees


_parts: list = []   # the current forward, per arena: (arena, (first, end): its queries' range in the forward's
                    # flat batch, slots written, visible (q, length), the same as an additive mask
                    # (1, 1, group x q, length): 0 where seen, -inf elsewhere)


class _ArenaCache:
    """Stands in for transformers' KV cache during an engine forward: `update` writes the new tokens' keys and
    values into their arenas; `arena_attention` then reads the arenas."""
    is_compileable = False

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        for arena, (first, end), slots, *_ in _parts:                    # key_states: (1, kv_heads, Q, dim)
            arena.keys[layer_idx].index_copy_(2, slots, key_states[:, :, first:end])
            arena.values[layer_idx].index_copy_(2, slots, value_states[:, :, first:end])
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def arena_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Each query token attends to the arena slots it sees. query: (1, heads, Q, dim) -> (1, Q, heads, dim).

    Grouped-query attention without copying keys: the query heads that share a key/value head are stacked as
    rows of that head. A sliding-window layer also hides slots too far behind.
    """
    heads, total, dim = query.shape[1], query.shape[2], query.shape[3]
    outputs = []
    for arena, (first, end), slots, visible, additive in _parts:
        keys = arena.keys[module.layer_idx][:, :, :arena.length]                # (1, kv_heads, length, dim)
        values = arena.values[module.layer_idx][:, :, :arena.length]
        group = heads // arena.kv_heads
        q = query[:, :, first:end]                                                # (1, heads, q, dim)
        rows = q.shape[2]
        q = q.reshape(1, arena.kv_heads, group * rows, dim)                       # heads sharing a kv head, stacked
        mask = additive                           # built once per forward (see _forward), the same in every layer
        if kwargs.get("sliding_window"):
            mask = visible & (arena.positions[slots][:, None] - arena.positions[None, :arena.length]
                              < kwargs["sliding_window"])
            mask = mask.repeat(group, 1)[None, None]
        out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scaling)
        outputs.append(out.reshape(1, heads, rows, dim))
    output = torch.cat(outputs, 2) if len(outputs) > 1 else outputs[0]
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(ARENA_ATTENTION, arena_attention)


# ================================================================ one backbone's engine

@dataclasses.dataclass
class State:
    """A place a sequence can be continued from: the slots it sees, its next position, its next-token logits."""
    arena: Arena
    visible: torch.Tensor            # slot indices
    position: int
    logits: torch.Tensor             # (vocab,)
    length: int                      # tokens of context: what an API would bill as prompt tokens
    own: torch.Tensor | None = None  # the slots of this continuation's own tokens (freed by `discard`)


def discard(state: State | None) -> None:
    """A program will never continue this state (an MCTS step that ends its branch, a duplicate step): free its
    own tokens' slots and its logits. Nothing else may see them: only its continuations would have."""
    if state is not None and state.own is not None:
        state.arena.release(state.own)
        state.own, state.logits = None, None


class _Job:
    """One request in flight."""

    def __init__(self, request: Request, index: int, arena: Arena, account, done):
        self.request, self.index, self.arena, self.account, self.done = request, index, arena, account, done
        self.results = [None] * (len(request.score) if request.score else request.n)
        self.context_tokens = 0          # prompt tokens billed
        self.generated = 0
        self.seconds = 0.0
        self.open = 0                    # rows or scores not finished
        self.prompt = None               # the _Prompt it started from (None: it continues a kept state)


class _Row:
    """One sequence being generated."""

    def __init__(self, job: _Job, k: int, state: State):
        self.job, self.k = job, k
        self.visible, self.position, self.logits = state.visible, state.position, state.logits
        self.inherited = len(state.visible)           # visible[inherited:] are this row's own slots
        self.tokens: list = []           # sampled so far
        self.tail = ""                   # the end of the text so far, for stop strings
        self.feed = None                 # a sampled token to feed in the next forward
        self.finishing = False           # its last token is fed only to keep its state
        self.done = False
        self.generator = torch.Generator().manual_seed(derive_seed(job.request.seed, job.index, k))


@dataclasses.dataclass
class _Query:
    """One token of the next forward: where it is written, what it sees, who wants its next-token logits."""
    arena: Arena
    token: int
    position: int
    visible: torch.Tensor | None     # slot indices it attends to (its own slot included)
    slot: torch.Tensor | None        # (1,) the slot it is written to
    on_logits: object = None         # called with (logits, seconds) after the forward; None: nobody needs them
    branch: "_Branch | None" = None  # a scored continuation's token: its slot (and visible) is set when it is fed


class _Branch:
    """A scored continuation: it sees its prompt and its own tokens. [ours] Each token takes its arena slot when it
    is fed, not when it is queued, and the branch gives its slots back after its last token, so an arena holds
    its prompt plus the continuations in flight rather than every continuation at once. Measured on GSM8K's first 15
    problems, 6 in flight (the likelihood principal scores each pooled class's solution): the principal's phase held
    0.86 GiB of arenas (~2,870 slots a problem) with all taken at once, 0.10 GiB this way, and its share of `sec/q`
    fell from 18 to 10.5 s; one score of 90 records moved in its fourth decimal (README, "The main job")."""

    def __init__(self, arena: Arena, seen: torch.Tensor):
        self.arena, self.seen, self.slots = arena, seen, seen.new_empty(0)

    def place(self, query: _Query) -> None:
        """Give the branch's next token (fed in this forward) its slot; it sees the prompt and the branch so far."""
        query.slot = self.arena.take([query.position])
        self.slots = torch.cat([self.slots, query.slot])
        query.visible = torch.cat([self.seen, self.slots])


class Engine:
    """Every sequence in flight on one backbone, advanced one token per `step`, all in one forward."""

    def __init__(self, llm, max_tokens_per_step: int | None = None):
        self.llm, self.model = llm, llm.model
        self.max_tokens_per_step = max_tokens_per_step or TOKENS_PER_STEP[
            "cuda" if torch.device(llm.device).type == "cuda" else "cpu"]
        self.arenas: dict = {}
        self.prompts: list = []          # (job, prompt ids, continuations' ids): prompts not queued yet
        self.pending: list = []          # _Query: prompts' and scored continuations' tokens waiting to be fed
        self.rows: list = []
        self.token_texts = llm.__dict__.setdefault("token_texts", {})     # token id -> its text, for stop strings
        self.buffers: dict = {}          # _scratch: the sampling's buffers, reused step after step

    def submit(self, request: Request, index: int, arena_key, account, done) -> None:
        if arena_key not in self.arenas:
            self.arenas[arena_key] = Arena(self.model)
        job = _Job(request, index, self.arenas[arena_key], account, done)
        if request.state is not None:
            if request.state.arena is not job.arena:       # its slots mean nothing in another arena
                raise ValueError("a kept state can only be continued by the problem that made it, in the same "
                                 "run_programs call: pass it back to the program (and arena) it came from")
            self._start_rows(job, request.state)
        else:
            self.prompts.append((job, self.llm.encode(request.prompt + request.suffix),
                                 [self.llm.encode(c) for c in request.score]))

    def _start_rows(self, job: _Job, state: State) -> None:
        job.context_tokens = state.length * job.request.n
        job.open = job.request.n
        self.rows += [_Row(job, k, state) for k in range(job.request.n)]

    # ---------------------------------------------------------------- one step
    @torch.no_grad()
    def step(self) -> None:
        """Sample a token for every row that can, then one forward over every token to feed."""
        start = time.perf_counter()
        self._sample()
        queries = []
        for row in self.rows:                               # each row feeds the token it just sampled
            slot = row.job.arena.take([row.position])
            row.visible = torch.cat([row.visible, slot])
            queries.append(_Query(row.job.arena, row.feed, row.position, row.visible, slot,
                                  lambda logits, seconds, row=row: self._fed(row, logits, seconds)))
        # every new prompt's tokens join the queue (one whose prefix another arena is computing waits for it)
        self.prompts = [prompt for prompt in self.prompts if not self._queue_prompt(*prompt)]
        # then the queue's tokens (prompts, scored continuations), in order, as many as the step has room for (at
        # least a quarter of the budget, so that many rows never starve the queue). A prompt longer than the room is
        # fed over several steps (chunked prefill): every token's keys are written in the forward that feeds it,
        # and a token is never fed before the ones it sees. The budget bounds what a forward holds in memory (its
        # attention scores, the logits of scored tokens).
        generated = len(queries)                           # so far only rows, each feeding the token just sampled
        room = max(self.max_tokens_per_step - len(queries), self.max_tokens_per_step // 4, 1)
        queries += self.pending[:room]
        self.pending = self.pending[room:]
        for query in queries[generated:]:
            if query.branch is not None:                   # a scored continuation's token takes its slot now
                query.branch.place(query)
        if queries:
            started = time.perf_counter()
            logits = self._forward(queries)
            forward_seconds = time.perf_counter() - started
            STATS["seconds"] += forward_seconds
            if len(queries) <= SMALL_FORWARD:
                STATS["small_forwards"] += 1
                STATS["small_seconds"] += forward_seconds
            if generated >= FULL_FORWARD:
                STATS["full_steps"] += 1
                STATS["full_tokens"] += generated
                STATS["full_seconds"] += time.perf_counter() - start
            seconds = (time.perf_counter() - start) / len(queries)
            for query, row_logits in zip([q for q in queries if q.on_logits], logits):
                query.on_logits(row_logits, seconds)
        self.rows = [row for row in self.rows if not row.done]

    def _sample(self) -> None:
        """Each row with fresh logits draws its next token: argmax at temperature 0, else Gumbel-max with the
        row's own generator (the same draws whatever else is in the batch)."""
        ready = [row for row in self.rows if row.logits is not None]
        if not ready:
            return
        vocab, device = ready[0].logits.shape[-1], ready[0].logits.device
        logits = self._scratch("scores", len(ready), vocab, device)                # (rows, vocab), float32
        torch.stack([row.logits for row in ready], out=logits)      # (as .float() would: bf16 rows are converted)
        sampled = [r for r, row in enumerate(ready) if row.job.request.temperature > 0]
        if sampled:                                          # Gumbel-max: argmax(logits / T + Gumbel noise)
            noise = self._scratch("noise", len(sampled), vocab, torch.device("cpu"))   # the generators are CPU ones
            for k, r in enumerate(sampled):                  # each row's draws from its own generator, in place
                torch.rand(logits.shape[1], generator=ready[r].generator, out=noise[k])
            temperature = torch.tensor([[ready[r].job.request.temperature] for r in sampled])
            noise.clamp_(1e-20, 1 - 1e-7).log_().neg_().log_().neg_()     # -log(-log(u)), without temporaries
            temperature, noise = temperature.to(logits.device), noise.to(logits.device)
            if len(sampled) == len(ready):                   # the usual case: every row samples, in place
                logits.div_(temperature).add_(noise)
            else:
                logits[sampled] = logits[sampled] / temperature + noise
        scores = logits
        for row, token in zip(ready, scores.argmax(-1).tolist()):
            row.logits = None
            request = row.job.request
            if token in self.llm.end_ids:                    # the model ended it: nothing to feed
                self._finish(row, ended=True)
                continue
            row.tokens.append(token)
            if token not in self.token_texts:
                self.token_texts[token] = self.llm.tokenizer.decode([token])
            row.tail = (row.tail + self.token_texts[token])[-64:]
            stopped = any(s in row.tail for s in request.stop) or len(row.tokens) >= request.max_new_tokens
            if stopped and not request.keep:
                self._finish(row)
            else:
                row.feed, row.finishing = token, stopped
        self.rows = [row for row in self.rows if not row.done]

    def _scratch(self, name: str, rows: int, vocab: int, device: torch.device) -> torch.Tensor:
        """A (rows, vocab) float32 buffer, kept across steps. [ours] At 100 rows the step's scores
        and noise are 20 MB each on the embedded model; allocated afresh, each step would map and fault them in
        again whenever big blocks go to mmap (evaluate.py: keep_big_blocks_in_mmap), which cost ~2.5 s of a 15-problem
        search batch's ~130 s (measured). Only _sample uses them, and nothing keeps a view past it."""
        buffer = self.buffers.get(name)
        if buffer is None or buffer.shape[0] < rows or buffer.shape[1] != vocab or buffer.device != device:
            buffer = self.buffers[name] = torch.empty(max(rows, 16), vocab, dtype=torch.float32, device=device)
        return buffer[:rows]

    def _fed(self, row: _Row, logits: torch.Tensor, seconds: float) -> None:
        """A row's token went through the model: its next-token logits are ready (finishing: so is its state)."""
        row.job.seconds += seconds
        row.position += 1
        row.feed, row.logits = None, logits
        if row.finishing:
            row.logits = None
            # a kept state outlives this step: its own copy of the row (a view would keep the forward's whole
            # (rows, vocab) logits alive as long as the tree keeps the node)
            self._finish(row, state=State(row.job.arena, row.visible, row.position, logits.clone(), row.position,
                                          row.visible[row.inherited:]))

    def _finish(self, row: _Row, ended: bool = False, state: State | None = None) -> None:
        if state is None:                                    # nobody will continue it: its slots are free again
            row.job.arena.release(row.visible[row.inherited:])
        text = self.llm.tokenizer.decode(row.tokens, skip_special_tokens=True)
        for stop in row.job.request.stop:
            text = text.split(stop)[0]
        row.job.generated += len(row.tokens)
        row.job.results[row.k] = Generated(text, len(row.tokens), ended, state, list(row.tokens))
        row.done = True
        self._close(row.job)

    def _close(self, job: _Job) -> None:
        """One more row or score of the job is done; when all are, bill the job and hand over its results."""
        job.open -= 1
        if job.open == 0:
            if job.prompt is not None:
                self._let_go(job.prompt, job.arena)
            self.llm.charge(calls=len(job.results), prompt_tokens=job.context_tokens,
                            generated_tokens=job.generated, seconds=job.seconds, account=job.account)
            job.done(job.results)

    # ---------------------------------------------------------------- prompts and scores
    def _queue_prompt(self, job: _Job, ids: list, continuations: list) -> bool:
        """Queue the tokens of a prompt that its arena does not hold yet: each sees the shared prefix and the
        tokens before it. When its last token is through, the request's rows (or scores) start. Returns False
        when the prompt must wait for a later step."""
        arena, request = job.arena, job.request
        job.context_tokens = (sum(len(ids) + len(c) for c in continuations) if request.score
                              else len(ids) * request.n)

        def start(state):
            self._queue_scores(job, state, continuations) if request.score else self._start_rows(job, state)
        common, prefix_slots, same = arena.shared_prefix(ids)
        if same is not None:                                # this very prompt is here: share its end
            self._use(job, same)

            def ready(prompt=same):
                start(State(arena, prompt.slots, len(ids), prompt.logits, len(ids)))
            ready() if same.logits is not None else same.waiting.append(ready)
            return True
        if common == len(ids):                 # a prefix of a longer prompt here: its last token is fed, for its logits
            common, prefix_slots = common - 1, prefix_slots[:common - 1]
        # Another problem's arena may hold a longer prefix (the few-shot exemplars every problem's prompt starts
        # with): copy its keys and values rather than compute them again. If that prefix is still being computed
        # in this step, wait a step for it.
        source, source_prompt, longest = None, None, common
        for other in self.arenas.values():
            if other is arena:
                continue
            for prompt in other.prompts:
                shared = min(common_prefix(ids, prompt.ids), len(ids) - 1)    # the last token is always fed
                if shared > longest and (prompt.logits is not None or shared > common + 16):
                    source, source_prompt, longest = other, prompt, shared
        if source_prompt is not None and source_prompt.logits is None:
            return False                                    # still being computed: copy it once it is done
        if not common:
            prefix_slots = torch.empty(0, dtype=torch.long, device=arena.device)
        seen = prefix_slots[:common]                       # the slots it shares with earlier prompts here
        copied = seen.new_empty(0)
        if source is not None and longest > common:
            copied = arena.copy_from(source, source_prompt.slots[common:longest], list(range(common, longest)))
            STATS["tokens_copied"] += len(copied)
            prefix_slots, common = torch.cat([seen, copied]), longest
        slots = arena.take(list(range(common, len(ids))))
        prompt = _Prompt(ids, torch.cat([prefix_slots, slots]), own=torch.cat([copied, slots]))
        shared = set(seen.tolist())
        for other in arena.prompts:                        # it holds the earlier prompts whose own slots it sees
            if other.own is not None and not shared.isdisjoint(other.own.tolist()):
                prompt.shares.append(other)
                other.users += 1
        arena.prompts.append(prompt)
        self._use(job, prompt)

        def prompt_done(last_logits, seconds, fed=len(ids) - common):
            job.seconds += seconds * fed                    # the forward's time, by the tokens this prompt fed
            prompt.logits = last_logits.clone()            # a copy, not a view: see _fed
            start(State(arena, prompt.slots, len(ids), prompt.logits, len(ids)))
            for ready in prompt.waiting:
                ready()
            prompt.waiting.clear()                          # (each held its job: let the job go when it ends)
        for k in range(len(ids) - common):
            self.pending.append(_Query(arena, ids[common + k], common + k, prompt.slots[:common + k + 1],
                                       slots[k:k + 1], prompt_done if k == len(ids) - common - 1 else None))
        return True

    @staticmethod
    def _use(job: _Job, prompt: _Prompt) -> None:
        """A request starts from this prompt: the prompt stays until it ends (for good, if it keeps continuations)."""
        job.prompt = prompt
        prompt.users += 1
        prompt.pinned = prompt.pinned or job.request.keep

    def _let_go(self, prompt: _Prompt, arena: Arena) -> None:
        """One user of the prompt is done; when none is left, its own slots go back to the arena, and it lets go of
        the earlier prompts it shared."""
        prompt.users -= 1
        if prompt.users or prompt.pinned:
            return
        arena.release(prompt.own)
        arena.prompts.remove(prompt)
        for other in prompt.shares:
            self._let_go(other, arena)
        prompt.shares.clear()

    def _queue_scores(self, job: _Job, state: State, continuations: list) -> None:
        """log p(continuation | prompt) for each continuation: the first token's probability is read off the
        prompt's logits; a longer continuation feeds its tokens (a branch that sees the prompt and itself)."""
        job.open = len(continuations)
        for c, ids in enumerate(continuations):
            terms = [float(torch.log_softmax(state.logits.float(), -1)[ids[0]])]
            if len(ids) == 1:
                job.results[c] = terms[0]
                self._close(job)
                continue
            branch = _Branch(job.arena, state.visible)      # its slots are taken as its tokens are fed

            def scored(logits, seconds, k, c=c, ids=ids, terms=terms, branch=branch):
                job.seconds += seconds
                terms.append(float(torch.log_softmax(logits.float(), -1)[ids[k + 1]]))
                if len(terms) == len(ids):
                    if math.isnan(sum(terms)):               # never a model's answer: a slot read before it was written
                        raise RuntimeError("engine: a scored continuation's log-probability is NaN; this is a bug "
                                           "in engine.py, please report it with the command you ran")
                    job.results[c] = sum(terms)
                    job.arena.release(branch.slots)
                    self._close(job)
            for k in range(len(ids) - 1):
                self.pending.append(_Query(job.arena, ids[k], state.position + k, None, None,
                                           lambda logits, seconds, k=k, scored=scored: scored(logits, seconds, k),
                                           branch))

    # ---------------------------------------------------------------- the forward
    def _forward(self, queries: list) -> torch.Tensor:
        """One forward of the model over every queued token (one flat batch, whatever arena each belongs to);
        returns the next-token logits of the tokens that want them, in order: (wanted, vocab)."""
        device = self.llm.device
        by_arena = {}
        for q, query in enumerate(queries):
            by_arena.setdefault(id(query.arena), (query.arena, []))[1].append(q)
        # The forward feeds the queries arena by arena (each arena's in their queued order), so that an arena's
        # tokens are one slice of the batch: the cache update and the attention take views, not gathers. The
        # logits still come back in the queued order. Measured on the benchmark's searches (15 arith problems, 12
        # in flight; the code before and after, four alternating pairs, the machine drifting): before 95.0, 100.9,
        # 118.5, 104.9 s, after 91.8, 98.6, 108.7, 106.3 s, about 3% less; every search's samples the same bit for
        # bit (the rows' order in a forward moved no number; their count can: README, "Speed"), and the main job's
        # 180 records too.
        order = [q for _, index in by_arena.values() for q in index]
        where = {q: k for k, q in enumerate(order)}
        wanted = [where[q] for q, query in enumerate(queries) if query.on_logits]   # their rows in the fed order
        _parts.clear()
        first = 0
        for arena, index in by_arena.values():
            visible = [queries[q].visible for q in index]
            mask = torch.zeros(len(index), arena.length, dtype=torch.bool, device=device)   # (q, arena length)
            rows = torch.repeat_interleave(torch.arange(len(index), device=device),
                                           torch.tensor([len(v) for v in visible], device=device))
            mask[rows, torch.cat(visible)] = True
            # The mask as the attention takes it, one row per (query head, token), built here once rather than in
            # each of the 30 layers. The same numbers come out as from the boolean mask repeated per layer (records
            # compared), and an attention call takes ~20% less time (0.159 -> 0.124 ms for 5 tokens over 800 slots).
            group = arena.heads // arena.kv_heads
            additive = torch.zeros(group * len(index), arena.length, dtype=self.model.dtype, device=device)
            additive.masked_fill_(~mask.repeat(group, 1), float("-inf"))
            _parts.append((arena, (first, first + len(index)), torch.cat([queries[q].slot for q in index]),
                           mask, additive[None, None]))
            first += len(index)
        queries = [queries[q] for q in order]                       # the fed order
        STATS["forwards"] += 1
        STATS["tokens_fed"] += len(queries)
        ids = torch.tensor([[query.token for query in queries]], device=device)            # (1, Q)
        positions = torch.tensor([[query.position for query in queries]], device=device)    # (1, Q)
        wanted = torch.tensor(wanted, dtype=torch.long, device=device)    # empty in a prompt's middle chunk
        config = self.model.config
        usual, config._attn_implementation = config._attn_implementation, ARENA_ATTENTION
        try:
            return self.model(input_ids=ids, position_ids=positions, past_key_values=_ArenaCache(),
                              use_cache=True, logits_to_keep=wanted).logits[0]
        finally:
            config._attn_implementation = usual
            _parts.clear()
