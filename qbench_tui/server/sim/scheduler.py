"""A vLLM V1-shaped engine that steps in real time on the event loop.

Per step (like vllm/v1/core/sched/scheduler.py): running requests first, then waiting ones (FCFS), under a shared
token budget (max_num_batched_tokens, chunked prefill) and max_num_seqs. KV memory is num_gpu_blocks blocks of
block_size tokens; full blocks are hashed (chained) and reused across requests while they stay in the pool (prefix
caching: only whole blocks hit and the last prompt token never does). Blocks of generated tokens are cached too, as
vLLM caches them: hashed over the prompt's text followed by the answer's (`continuation`), so a next turn that
resends the history and the answer hits them (engine/conversations.py's load). When a running request needs a block
and none is free, the newest running request is preempted (recompute): its blocks are freed (they stay cached until
evicted) and it goes back to the front of the waiting queue.

The step's duration comes from the profile's cost model and is slept (divided by `speed`) before its tokens are
handed out, so clients observe batching, queueing and saturation in wall-clock time.
"""
from __future__ import annotations

import asyncio
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .metrics import SimMetrics
    from .profile import Profile

WAITING, RUNNING, FINISHED = 0, 1, 2


class SimRequest:
    __slots__ = (
        "rid", "prompt_len", "hashes", "salt", "max_tokens", "target", "finish_on_target", "arrival",
        "num_output", "num_computed", "blocks", "reg_upto", "status", "finished", "finish_reason", "aborted",
        "waiter", "wake_each_token", "first_scheduled", "first_token_t", "last_token_t", "finish_t",
        "num_preemptions", "cached_tokens", "max_tokens_param", "continuation", "gen_hashes",
    )

    def __init__(self, rid: str, prompt_len: int, hashes: list[int], max_tokens: int, target: int,
                 arrival: float, max_tokens_param: int | None = None):
        self.rid = rid
        self.prompt_len = prompt_len
        self.hashes = hashes  # chained hashes of the prompt's full blocks
        self.salt = hash(("req", rid))
        self.max_tokens = max_tokens
        # target = tokens this request will produce; "length" when it is max_tokens and EOS did not come first
        self.target = target
        self.finish_on_target = "length" if target >= max_tokens else "stop"
        self.arrival = arrival
        self.max_tokens_param = max_tokens_param
        self.num_output = 0
        self.num_computed = 0
        self.blocks: list[int | None] = []  # int: holds a ref on that cached hash; None: private block
        self.reg_upto = 0  # leading full blocks already hashed/registered
        self.status = WAITING
        self.finished = False
        self.finish_reason: str | None = None
        self.aborted = False
        self.waiter: asyncio.Future | None = None
        self.wake_each_token = True
        self.first_scheduled: float | None = None
        self.first_token_t: float | None = None
        self.last_token_t: float | None = None
        self.finish_t: float | None = None
        self.num_preemptions = 0
        self.cached_tokens = 0
        # () -> chained hashes of the full blocks after the prompt's, over prompt text + answer text (None: the
        # generated blocks are this request's own); asked once, when the first generated block is hashed
        self.continuation: Callable[[], list[int]] | None = None
        self.gen_hashes: list[int] | None = None

    def block_hash(self, i: int) -> int:
        h = self.hashes
        if i < len(h):
            return h[i]
        if self.continuation is not None:
            self.gen_hashes, self.continuation = self.continuation(), None
        g = self.gen_hashes
        if g is not None and i - len(h) < len(g):
            return g[i - len(h)]
        # past the answer's text (or no text known): unique to this request, stable across its recomputes
        return hash((self.salt, i))

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class KVCache:
    """Block accounting with a prefix-cache map; evictable cached blocks count as free (as BlockPool does)."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.used = 0  # blocks with ref_cnt > 0
        self.ref: dict[int, int] = {}  # cached hash in use -> ref count
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached hash with ref 0, LRU first

    def free(self) -> int:
        return self.num_blocks - self.used

    def usage(self) -> float:
        return self.used / self.num_blocks

    def lookup(self, req: SimRequest, max_blocks: int) -> tuple[int, int]:
        """(leading full blocks cached, how many of them sit in the evictable pool)."""
        ref, ev = self.ref, self.evictable
        hits = revive = 0
        for i in range(max_blocks):
            h = req.block_hash(i)
            if h in ref:
                hits += 1
            elif h in ev:
                hits += 1
                revive += 1
            else:
                break
        return hits, revive

    def acquire(self, req: SimRequest, n_hits: int) -> None:
        ref, ev = self.ref, self.evictable
        blocks = req.blocks
        for i in range(n_hits):
            h = req.block_hash(i)
            if h in ref:
                ref[h] += 1
            else:
                del ev[h]
                ref[h] = 1
                self.used += 1
            blocks.append(h)

    def allocate(self, n: int, req: SimRequest) -> None:
        spare = self.num_blocks - self.used - len(self.evictable)
        ev = self.evictable
        while spare < n and ev:
            ev.popitem(last=False)
            spare += 1
        self.used += n
        req.blocks.extend([None] * n)

    def release(self, req: SimRequest) -> None:
        ref, ev = self.ref, self.evictable
        # vLLM frees in reverse so a request's tail blocks are evicted before its (more shareable) head.
        freed = 0
        for h in reversed(req.blocks):
            if h is None:
                freed += 1
            else:
                c = ref[h] - 1
                if c:
                    ref[h] = c  # still used by another request: the physical block stays allocated
                else:
                    del ref[h]
                    ev[h] = None
                    freed += 1
        self.used -= freed
        req.blocks = []

    def register(self, req: SimRequest, upto: int) -> None:
        ref, ev = self.ref, self.evictable
        blocks = req.blocks
        for i in range(req.reg_upto, upto):
            if blocks[i] is None:
                h = req.block_hash(i)
                if h not in ref and h not in ev:
                    ref[h] = 1
                    blocks[i] = h
        req.reg_upto = upto


class SimEngine:
    def __init__(self, profile: Profile, metrics: SimMetrics, speed: float = 1.0, seed: int = 0):
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.profile = profile
        self.metrics = metrics
        self.speed = speed
        self.rng = random.Random(seed)
        self.kv = KVCache(profile.num_gpu_blocks, profile.block_size)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.steps = 0
        self.stopped = False
        self.dead = False  # the step loop raised: /health answers 503, like vLLM after EngineCore death
        self._idle: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ requests
    def draw_answer_len(self) -> int:
        p = self.profile
        if p.answer_dist == "fixed":
            v = p.answer_mean
        elif p.answer_dist == "lognormal":
            sigma = math.sqrt(math.log(1.0 + (p.answer_stddev / p.answer_mean) ** 2))
            v = self.rng.lognormvariate(math.log(p.answer_mean) - sigma * sigma / 2.0, sigma)
        else:
            v = self.rng.gauss(p.answer_mean, p.answer_stddev)
        n = max(p.answer_min, 1, int(round(v)))
        if p.answer_max > 0:
            n = min(n, p.answer_max)
        return n

    def add(self, req: SimRequest) -> None:
        req.status = WAITING
        self.waiting.append(req)
        self.metrics.num_waiting = len(self.waiting)
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)

    def abort(self, req: SimRequest) -> None:
        """Client went away: drop it without finished-request stats (as vLLM 0.13's abort path does)."""
        if req.status == FINISHED:
            return
        if req.status == RUNNING:
            try:
                self.running.remove(req)
            except ValueError:
                pass
            self.kv.release(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        req.status = FINISHED
        req.aborted = True
        req.finished = True
        req.finish_reason = "abort"
        # vLLM processes aborts in its engine loop and refreshes the scheduler gauges; do the same here so an idle
        # engine does not keep reporting the aborted requests' blocks.
        m = self.metrics
        m.num_running = len(self.running)
        m.num_waiting = len(self.waiting)
        m.kv_usage = self.kv.used / self.kv.num_blocks
        req._wake()

    # ------------------------------------------------------------------ loop
    def start(self) -> asyncio.Task:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self.run(), name="qbench-sim-engine")
        return self._task

    async def stop(self) -> None:
        self.stopped = True
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in the model must not leave clients hanging forever
            import traceback

            traceback.print_exc()
            self.dead = True
            for req in list(self.running) + list(self.waiting):
                self.abort(req)
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        sleep = asyncio.sleep
        while not self.stopped:
            if not self.running and not self.waiting:
                self._idle = loop.create_future()
                await self._idle
                self._idle = None
                deadline = loop.time()
                continue
            now = loop.time()
            sched, cost = self._schedule(now)
            if not sched:
                # nothing fits (should not happen with a valid profile); do not spin
                await sleep(0.001)
                continue
            dur = cost / self.speed
            # Allow up to 2 ms of catch-up so timer rounding does not drift the step rate; beyond that the
            # simulated server simply runs late, as a CPU-starved real one would.
            start = deadline if deadline > now - 0.002 else now - 0.002
            deadline = start + dur
            delay = deadline - loop.time()
            await sleep(delay if delay > 0 else 0)
            self._complete(sched, loop.time())

    # ------------------------------------------------------------------ scheduling
    def _schedule(self, now: float) -> tuple[list[tuple[SimRequest, int]], float]:
        p = self.profile
        kv = self.kv
        bs = p.block_size
        thr = p.long_prefill_token_threshold
        budget = p.max_num_batched_tokens
        running = self.running
        sched: list[tuple[SimRequest, int]] = []
        preempted = False
        prefill_tokens = 0
        decode_seqs = 0
        ctx_tokens = 0

        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            n = req.prompt_len + req.num_output - req.num_computed
            if thr and n > thr:
                n = thr
            if n > budget:
                n = budget
            if n <= 0:
                i += 1
                continue
            need = -(-(req.num_computed + n) // bs) - len(req.blocks)
            ok = True
            while need > kv.num_blocks - kv.used:
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    ok = False
                    break
            if not ok:
                break
            if need > 0:
                kv.allocate(need, req)
            sched.append((req, n))
            budget -= n
            if n == 1 and req.num_output > 0:
                decode_seqs += 1
                ctx_tokens += req.num_computed + 1
            else:
                prefill_tokens += n
            i += 1

        if not preempted:
            waiting = self.waiting
            max_seqs = p.max_num_seqs
            prefix = p.enable_prefix_caching
            m = self.metrics
            while waiting and budget > 0 and len(running) < max_seqs:
                req = waiting[0]
                num_tokens = req.prompt_len + req.num_output
                hit_blocks = revive = 0
                if prefix:
                    hit_blocks, revive = kv.lookup(req, (num_tokens - 1) // bs)
                computed = hit_blocks * bs
                n = num_tokens - computed
                if thr and n > thr:
                    n = thr
                if n > budget:
                    n = budget
                need = -(-(computed + n) // bs) - hit_blocks
                if need + revive > kv.num_blocks - kv.used:
                    break
                waiting.popleft()
                kv.acquire(req, hit_blocks)
                kv.allocate(need, req)
                req.num_computed = computed
                req.reg_upto = hit_blocks
                req.status = RUNNING
                if req.num_preemptions == 0:
                    req.first_scheduled = now
                    req.cached_tokens = computed
                    if prefix:
                        m.prefix_queries += num_tokens
                        m.prefix_hits += computed
                running.append(req)
                sched.append((req, n))
                budget -= n
                prefill_tokens += n

        cost = p.step_overhead_s + max(p.min_forward_s, prefill_tokens * p.prefill_per_token_s
                                       + decode_seqs * p.decode_per_seq_s) + ctx_tokens * p.decode_per_ctx_token_s
        return sched, cost

    def _preempt(self, req: SimRequest) -> None:
        self.kv.release(req)
        req.num_computed = 0
        req.reg_upto = 0
        req.status = WAITING
        req.num_preemptions += 1
        self.waiting.appendleft(req)
        self.metrics.preemptions += 1

    def _complete(self, sched: list[tuple[SimRequest, int]], now: float) -> None:
        m = self.metrics
        kv = self.kv
        bs = self.profile.block_size
        prefix = self.profile.enable_prefix_caching
        gen = 0
        iter_prompt = 0
        any_finished = False
        itl_obs = m.itl.observe
        for req, n in sched:
            if req.status != RUNNING:
                continue  # aborted while the step ran
            req.num_computed += n
            if prefix:
                full = req.num_computed // bs
                if full > req.reg_upto:
                    kv.register(req, full)
            if req.num_computed < req.prompt_len + req.num_output:
                continue  # a prefill chunk that did not finish the prompt
            req.num_output += 1
            gen += 1
            if req.first_token_t is None:
                req.first_token_t = now
                m.ttft.observe(now - req.arrival)
                m.prompt_tokens += req.prompt_len
                iter_prompt += req.prompt_len
                m.req_prefill_kv_computed.observe(req.prompt_len - req.cached_tokens)
            else:
                itl_obs(now - req.last_token_t)
            req.last_token_t = now
            if req.num_output >= req.target:
                self._finish(req, req.finish_on_target, now)
                any_finished = True
            elif req.wake_each_token:
                w = req.waiter
                if w is not None and not w.done():
                    w.set_result(None)
        if any_finished:
            self.running = [r for r in self.running if r.status == RUNNING]
        self.steps += 1
        m.generation_tokens += gen
        m.iteration_tokens.observe(gen + iter_prompt)
        m.num_running = len(self.running)
        m.num_waiting = len(self.waiting)
        m.kv_usage = kv.used / kv.num_blocks

    def _finish(self, req: SimRequest, reason: str, now: float) -> None:
        self.kv.release(req)
        req.status = FINISHED
        req.finished = True
        req.finish_reason = reason
        req.finish_t = now
        m = self.metrics
        m.success[reason] += 1
        e2e = now - req.arrival
        m.e2e.observe(e2e)
        first_sched = req.first_scheduled if req.first_scheduled is not None else req.arrival
        first_tok = req.first_token_t if req.first_token_t is not None else now
        m.queue_time.observe(first_sched - req.arrival)
        m.inference_time.observe(now - first_sched)
        m.prefill_time.observe(first_tok - first_sched)
        m.decode_time.observe(now - first_tok)
        m.req_prompt_tokens.observe(req.prompt_len)
        m.req_generation_tokens.observe(req.num_output)
        m.req_max_gen_tokens.observe(req.max_tokens)
        if req.max_tokens_param is not None:
            m.req_params_max_tokens.observe(req.max_tokens_param)
        m.req_params_n.observe(1)
        if req.num_output > 1:
            m.tpot_req.observe((now - first_tok) / (req.num_output - 1))
        req._wake()
