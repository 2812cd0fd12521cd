"""A SwarmBee node: joins the DHT, picks and loads its blocks, serves them, leaves cleanly.

Use as an async context manager::

    async with Node(config) as node:
        await node.wait_closed()      # until stop() (e.g. on SIGTERM)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import hivemind
import psutil
import torch

import swarmnode
from swarmnode.config import NodeConfig
from swarmnode.errors import ConfigError, ModelMismatch
from swarmnode.membership.announcer import Announcer
from swarmnode.membership.gossip import GossipConfig, SwimGossip
from swarmnode.models import DTYPES, ModelSpec, block_bytes, dtype_name, load_blocks, load_model_spec
from swarmnode.models.layout import resolve_layout
from swarmnode.models.quantize import batching_allowed, measured_block_bytes
from swarmnode.net.dht import fetch_models, fetch_snapshot
from swarmnode.net.protocol import INFERENCE_HANDLE, SwarmNodeService
from swarmnode.net.push import PUSH_HANDLE, Pusher
from swarmnode.net.reachability import DIAL_BACK_HANDLE
from swarmnode.net.shutdown import bounded
from swarmnode.records import ModelRecord, NodeRecord, NodeState, model_id_from_name, validate_model_id
from swarmnode.server.admission import Admission, StepCost, default_max_step_s, kv_budget
from swarmnode.server.backend import BlockBackend
from swarmnode.server.block_selection import (
    BlocksRequest,
    blocks_for_memory,
    check_blocks_fit,
    choose_span,
    parse_blocks,
    served_throughput,
)
from swarmnode.server.cache import CacheManager
from swarmnode.server.connection import NodeConnection, connect
from swarmnode.server.dtype_choice import DtypeChoice, choose_dtype, measure_bf16_speedup
from swarmnode.server.handler import NodeHandler, PeerLimits, node_info
from swarmnode.server.host_memory import MEMORY_RESERVE_BYTES, HostLedger, detect_memory
from swarmnode.server.metrics import MetricsServer, NodeMetrics, start_metrics_server
from swarmnode.server.profile_cache import ProfileCache, ServedSpeed, device_descriptor, profile_dir, profile_key
from swarmnode.server.progress import LoadProgress
from swarmnode.server.rebalancer import Rebalancer
from swarmnode.server.scheduler import StepScheduler
from swarmnode.server.threads import confine_to_one_thread, node_threads, run_in_passing_thread

logger = logging.getLogger(__name__)
DEFAULT_CACHE_TOKENS = 4096  # per block, when --cache-tokens is not given (raised to the session limit)


def resolve_dtype(config: NodeConfig, spec: ModelSpec) -> DtypeChoice:
    """The compute dtype: as given, or for ``auto`` what is fast and exact here (see dtype_choice)."""
    if config.dtype != "auto":
        if config.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {config.dtype!r}: choose auto or one of {sorted(DTYPES)}")
        return DtypeChoice(DTYPES[config.dtype], "--dtype")
    stored = getattr(spec.config, "dtype", None) or getattr(spec.config, "torch_dtype", None)
    stored = DTYPES.get(str(stored).removeprefix("torch."), torch.float32)
    speedup = None
    if config.device.startswith("cpu") and stored == torch.bfloat16:
        speedup = measure_bf16_speedup(spec.hidden_size)
    return choose_dtype(stored, config.device, speedup)


class Node:
    """One node of the swarm (see module docstring)."""

    def __init__(
        self,
        config: NodeConfig,
        step_delay_s: float = 0.0,
        load_progress: Callable[[int, int], None] | None = None,
        corrupt_output: str = "",
        misreport: bool = False,
        network_delay_s: float = 0.0,
        block_delay_s: float = 0.0,
    ):
        self.block_delay_s = block_delay_s  # TESTING AID: see server/backend.py: BlockBackend.block_delay_s
        self.network_delay_s = network_delay_s  # TESTING AID: see server/handler.py: NodeHandler.network_delay_s
        self.corrupt_output = corrupt_output  # TESTING AID: see server/backend.py: corrupt
        self.misreport = misreport  # TESTING AID: see server/handler.py: NodeHandler.misreport
        self.config = config
        self.load_progress = load_progress if load_progress is not None else LoadProgress()
        self.step_delay_s = step_delay_s
        self.state = NodeState.JOINING
        self.dht: hivemind.DHT | None = None
        self.p2p = None
        self.backend: BlockBackend | None = None
        self.scheduler: StepScheduler | None = None
        self.threads = 0  # intra-op threads of the compute thread, decided at join (server/threads.py)
        self.caches: CacheManager | None = None
        self.handler: NodeHandler | None = None
        self.announcer: Announcer | None = None
        self.start = self.end = 0
        self.inference_rps = self.prefill_rps = 0.0
        self._closed = asyncio.Event()
        self.gossip: SwimGossip | None = None
        self.metrics: NodeMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        self.metrics_addr = ""  # host:port of /metrics, announced in the record
        self._kv_bytes_per_block_token = 0
        self.ledger: HostLedger | None = None  # this node's memory claim on its host
        self.weights_bytes = 0  # of the loaded blocks, as stored (quantized or not)
        self.weight_layout = "dense"  # resolved at join (models/layout.py)
        # Off for formats whose rows interact, whatever the configuration (models/quantize.py).
        self.batching = config.batching and batching_allowed(config.quant)
        self.max_blocks = 0  # blocks the memory budget holds, announced for planners
        self.connection: NodeConnection | None = None  # the DHT peer, direct or behind a relay
        self.served: ServedSpeed | None = None  # single-session iterations' speed, in service
        self.profiles: ProfileCache | None = None
        self.profile_key = ""
        self.profile: dict = {}  # inference_rps, prefill_rps, batch_costs: as measured or stored
        # Raised by every (re)start, so a node back with the same identity outranks its old dead verdict.
        self.incarnation = int(time.time() * 1000)
        self.rebalancer: Rebalancer | None = None  # --blocks auto: reconsiders the span (server/rebalancer.py)
        self._rebalancer: asyncio.Task | None = None
        self.on_move: Callable[[tuple[int, int], tuple[int, int], float], None] | None = None
        self.move_drain_timeout = 10.0  # seconds sessions get to leave the old span's blocks

    async def _measure_speed(self) -> list[float]:
        """Set the advertised speeds and return the decoding step costs of 1-16 sessions: from
        the profile cache when this node measured them before with the same key (model, span,
        device, dtype, quantization: server/profile_cache.py), else measured now and kept."""
        cfg = self.config
        if cfg.throughput != "auto":
            try:
                self.inference_rps = self.prefill_rps = float(cfg.throughput)
            except ValueError as e:
                raise ConfigError(f"--throughput must be auto or a number, got {cfg.throughput!r}") from e
        profile = self.profiles.load(self.profile_key) if cfg.profile_cache else None
        if profile is not None:
            logger.info("profile: %.0f tokens/s per block, from %s", profile["inference_rps"], self.profiles.dir)
        else:
            threads_for = self.scheduler.use_threads
            rates = await self.scheduler.call(lambda: self.backend.profile(threads_for=threads_for))
            costs = await self.scheduler.call(lambda: self.backend.profile_batch_sizes(threads_for=threads_for))
            profile = {"inference_rps": rates[0], "prefill_rps": rates[1], "batch_costs": costs}
            logger.info("profile: %.0f tokens/s per block, measured", rates[0])
            self._keep_profile(profile)
        self.profile = profile
        if cfg.throughput == "auto":
            self.inference_rps, self.prefill_rps = profile["inference_rps"], profile["prefill_rps"]
        return profile["batch_costs"]

    def _keep_profile(self, profile: dict) -> None:
        if self.config.profile_cache:
            self.profiles.save(self.profile_key, profile)

    def _admission(self, costs: list[float]) -> Admission:
        """The step-time check (and the scheduler's padding plan), from the decoding step costs of 1-16 sessions."""
        batch = 8
        self.scheduler.calibrate(costs, gather=self.config.gather)
        if self.batching:
            logger.info("decoding batches of 1..%d sessions run with %s rows", len(costs), list(self.scheduler.padding))
        cost = StepCost.from_profile(costs[0], costs[batch - 1], batch, self.batching)
        blocks = self.end - self.start
        if self.config.max_step_ms:
            max_step_s = self.config.max_step_ms / 1000
        else:
            max_step_s = default_max_step_s(blocks, self.spec.num_blocks, cost)
        logger.info(
            "admission: decoding step %.2f ms per block alone, +%.2f ms per further session; target %.0f ms%s",
            1000 * cost.single_s,
            1000 * cost.extra_s,
            1000 * max_step_s,
            "" if self.batching else " (one step at a time: projected from the measured load)",
        )
        return Admission(cost, blocks, max_step_s, queued=not self.batching)

    # ---- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Node:
        try:
            await self._join()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.leave()

    def stop(self) -> None:
        """Ask the node to leave (safe to call from a signal handler)."""
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _join(self) -> None:
        cfg = self.config
        self.threads = node_threads(cfg.num_threads)
        confine_to_one_thread()  # torch work with threads runs on the compute thread only (server/threads.py)
        spec = load_model_spec(cfg.model)
        self.spec = spec
        choice = resolve_dtype(cfg, spec)
        self.dtype = choice.dtype
        logger.info("dtype %s: %s (%s)", cfg.dtype, dtype_name(self.dtype), choice.reason)
        self.weight_layout = resolve_layout(cfg.weight_layout, cfg.device, self.dtype, cfg.quant)
        logger.info("weight layout %s: %s", cfg.weight_layout, self.weight_layout)
        if cfg.batching and not self.batching:
            logger.info("batching off: in %s, batched sessions would change each other's results", cfg.quant)
        model_id = validate_model_id(cfg.model_id) if cfg.model_id else model_id_from_name(spec.name)
        self.model_record = ModelRecord(
            model_id=model_id,
            num_blocks=spec.num_blocks,
            family=spec.family.name,
            repository=spec.name if spec.name.count("/") == 1 and not spec.name.startswith((".", "/", "~")) else "",
            config_hash=spec.checkpoint.config_hash(),
        )
        request = parse_blocks(cfg.blocks, spec.num_blocks)  # validate before starting anything
        self.metrics = NodeMetrics(self._metrics_state)
        self.metrics.build.labels(swarmnode.__version__, model_id, dtype_name(self.dtype)).set(1)

        self.connection = await connect(cfg)
        self.dht, self.identity, self.p2p = self.connection.dht, self.connection.identity, self.connection.p2p
        self.peer_id, self.maddrs = self.connection.peer_id, self.connection.maddrs
        await self._check_same_checkpoint()

        kv_heads, head_dim = spec.family.kv_heads_and_dim(spec.config)
        bytes_per_value = torch.finfo(self.dtype).bits // 8
        cache_tokens, session_limit = kv_budget(cfg.cache_tokens, cfg.max_session_length, DEFAULT_CACHE_TOKENS)
        if session_limit < cfg.max_session_length:
            logger.warning(
                "--cache-tokens %d is below --max-session-length %d: sessions here are limited to %d tokens",
                cache_tokens,
                cfg.max_session_length,
                session_limit,
            )
        self._kv_bytes_per_block_token = 2 * kv_heads * head_dim * bytes_per_value
        count = self._claim_memory(request, block_bytes(spec, self.dtype, cfg.quant), cache_tokens)
        if request.span is not None:
            self.start, self.end = request.span
        else:
            snapshot = await fetch_snapshot(self.dht, model_id, spec.num_blocks, self.identity.swarm_key)
            self.start, self.end = choose_span(served_throughput(snapshot, exclude=self.peer_id), count)
        logger.info(
            "serving blocks %d:%d of %s (%s, quantization %s)",
            self.start,
            self.end,
            model_id,
            dtype_name(self.dtype),
            cfg.quant,
        )

        if cfg.metrics_port:
            self.metrics_server = start_metrics_server(
                self.metrics, lambda: self.state == NodeState.ONLINE, cfg.metrics_host, cfg.metrics_port
            )
            self.metrics_addr = f"{self._metrics_host()}:{self.metrics_server.port}"
        self.announcer = Announcer(
            self.dht,
            self.identity,
            self.model_record,
            self.record,
            cfg.announce_period,
            on_failure=self.metrics.announce_failures.inc,
        )
        await self.announcer.announce(NodeState.JOINING)  # claim the span before the slow part

        loaded = await run_in_passing_thread(
            lambda: load_blocks(
                spec,
                self.start,
                self.end,
                cfg.device,
                self.dtype,
                on_block=self.load_progress,
                quant=cfg.quant,
                layout=self.weight_layout,
            ),
            self.threads,
        )
        self.loaded_parameters = loaded.loaded_parameters
        self.weights_bytes = sum(measured_block_bytes(block) for block in loaded.blocks)
        if cfg.device.startswith("cuda"):
            self.ledger.report_held(torch.cuda.memory_allocated(torch.device(cfg.device)))
        self.backend = BlockBackend(
            spec, loaded, cfg.device, self.dtype, self.step_delay_s, self.corrupt_output, self.block_delay_s
        )
        self.caches = CacheManager(
            cache_tokens * (self.end - self.start), session_limit, kv_heads, head_dim, self.dtype, cfg.device
        )
        self.scheduler = StepScheduler(
            self.backend,
            cfg.prefill_chunk,
            cfg.max_batch,
            self.batching,
            on_iteration=self._observe_iteration,
            threads=self.threads,
        )
        self.profiles = ProfileCache(profile_dir())
        self.profile_key = self._profile_key()
        costs = await self._measure_speed()
        self.served = ServedSpeed(self.end - self.start)
        self.admission = self._admission(costs)
        self.handler = NodeHandler(
            self.backend,
            self.scheduler,
            self.admission,
            self.caches,
            self.info,
            lambda: self.state,
            config_hash=self.model_record.config_hash,
            metrics=self.metrics,
            swarm_key=self.identity.swarm_key,
            session_idle_timeout=cfg.session_idle_timeout,
            limits=PeerLimits(cfg.max_sessions_per_peer, cfg.max_cache_share_per_peer, cfg.max_requests_per_peer_s),
            misreport=self.misreport,
            network_delay_s=self.network_delay_s,
            pusher=Pusher(self.p2p, delay_s=self.network_delay_s),
        )
        await SwarmNodeService().add_p2p_handlers(self.p2p, wrapper=self.handler)
        await self.p2p.add_binary_stream_handler(INFERENCE_HANDLE, self.handler.handle_inference_stream)
        await self.p2p.add_binary_stream_handler(PUSH_HANDLE, self.handler.handle_push_stream)
        self.state = NodeState.ONLINE
        await self.announcer.announce()
        self.announcer.start()
        gossip_config = GossipConfig(period=cfg.gossip_period, suspicion_timeout=cfg.suspicion_timeout)
        self.gossip = SwimGossip(
            self.p2p,
            self.dht,
            self.identity,
            model_id,
            spec.num_blocks,
            self.incarnation,
            gossip_config,
            on_refute=self._refuted,
            on_probe_failure=self.metrics.probe_failures.inc,
        )
        await self.gossip.start()
        if request.span is None and cfg.rebalance_period > 0:  # auto or a count: placed, so movable; START:END never
            self.rebalancer = Rebalancer(self, cfg.rebalance_period, cfg.rebalance_margin, self.move_drain_timeout)
            self._rebalancer = asyncio.create_task(self.rebalancer.run(), name="rebalance")
        logger.info("node %s is ONLINE", self.peer_id)

    def adopt_span(self, start: int, end: int) -> None:
        """The span this node announces from now on (rebalancing moved it; the backend serves it)."""
        self.start, self.end = start, end
        self.profile_key = self._profile_key()

    def _profile_key(self) -> str:
        cfg = self.config
        return profile_key(
            {
                "model": self.model_record.config_hash,
                "span": [self.start, self.end],
                "device": device_descriptor(cfg.device, self.threads),
                "dtype": dtype_name(self.dtype),
                "quant": cfg.quant,
                "layout": self.weight_layout,
                "torch": torch.__version__,
                "swarmnode": swarmnode.__version__,
                "step_delay_s": self.step_delay_s,  # the testing aids stand for a slower device
                "block_delay_s": self.block_delay_s,
            }
        )

    def _claim_memory(self, request: BlocksRequest, block_bytes: int, cache_tokens: int) -> int:
        """How many blocks to serve, checked against the memory budget and claimed in the host's
        ledger (server/host_memory.py) under its lock, so nodes starting together on one host
        share its memory instead of each counting all of it."""
        cfg, spec = self.config, self.spec
        cache_bytes = self._kv_bytes_per_block_token * cache_tokens
        self.ledger = HostLedger(device=cfg.device)
        with self.ledger.locked():
            if cfg.max_memory is not None:
                budget, why = cfg.max_memory, "--max-memory"
            else:
                free, others = detect_memory(cfg.device), self.ledger.others_not_yet_held()
                budget = max(0, free - others)
                why = (
                    f"free memory less a {MEMORY_RESERVE_BYTES >> 20} MiB reserve, {free >> 20} MiB, less "
                    f"{others >> 20} MiB that other nodes on this host claimed and do not hold yet"
                )
            self.max_blocks = min(spec.num_blocks, budget // (block_bytes + cache_bytes))
            if request.auto:
                count = blocks_for_memory(budget, block_bytes, cache_bytes, spec.num_blocks)
            else:
                count = request.count if request.span is None else request.span[1] - request.span[0]
                check_blocks_fit(count, budget, block_bytes, cache_bytes, why)
            self.ledger.claim(count * (block_bytes + cache_bytes))
        return count

    async def _check_same_checkpoint(self) -> None:
        """Refuse to join a swarm that serves another checkpoint under the same model id."""
        ours = self.model_record
        theirs = (await fetch_models(self.dht, self.identity.swarm_key)).get(ours.model_id)
        if theirs is not None and theirs.config_hash and theirs.config_hash != ours.config_hash:
            raise ModelMismatch(
                f"the swarm serves model {ours.model_id!r} with config hash {theirs.config_hash}, "
                f"but {self.config.model} has {ours.config_hash}: use the same checkpoint, or another --model-id"
            )

    async def leave(self, drain_timeout: float = 5.0) -> None:
        """Announce DRAINING, let open sessions finish (bounded), announce OFFLINE, shut down."""
        await self._stop_rebalancing()
        if self.announcer is not None and self.state == NodeState.ONLINE:
            self.state = NodeState.DRAINING
            await self.announcer.stop()
            await self.announcer.announce(NodeState.DRAINING)
            if self.handler is not None:
                try:
                    await asyncio.wait_for(self.handler.sessions_done.wait(), drain_timeout)
                except TimeoutError:
                    logger.warning(
                        "%d sessions still open after %.0f s; leaving anyway",
                        self.caches.active_sessions,
                        drain_timeout,
                    )
            self.state = NodeState.OFFLINE
            await self.announcer.announce(NodeState.OFFLINE)
        await self._shutdown()

    def _observe_iteration(self, decodes: int, prompt_tokens: int, seconds: float) -> None:
        """(Compute thread.) One scheduler iteration: metrics, and the served speed."""
        self.metrics.observe_iteration(decodes, prompt_tokens, seconds)
        if self.served is not None:
            self.served.observe(decodes, prompt_tokens, seconds)

    def advertised_rps(self) -> float:
        """The inference speed to announce: what service measured once there is enough of it
        (``--throughput auto``), else the profile's or the configured figure."""
        # A node slowed by the gray-failure testing aid keeps advertising its old speed: the aid
        # stands for a node that turned slow without knowing it.
        if self.served is None or self.config.throughput != "auto" or getattr(self, "_slowed", False):
            return self.inference_rps
        return self.served.rps(self.inference_rps)

    async def _stop_rebalancing(self) -> None:
        if self._rebalancer is not None:
            self._rebalancer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebalancer
            self._rebalancer = None

    async def _shutdown(self) -> None:
        await self._stop_rebalancing()
        self.state = NodeState.OFFLINE
        if self.served is not None and self.served.samples >= self.served.min_samples:
            # What service measured is what the next start begins from (the served figure itself,
            # whatever this node advertised: --throughput N or the gray-failure aid).
            self._keep_profile({**self.profile, "inference_rps": self.served.rps(self.profile["inference_rps"])})
        if self.ledger is not None:
            self.ledger.release()
        if self.gossip is not None:
            await self.gossip.stop()
        if self.announcer is not None:
            await self.announcer.stop()
        if self.handler is not None and self.p2p is not None:
            await bounded(self._remove_handlers(), "removing the node's handlers")
        if self.scheduler is not None:
            self.scheduler.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.connection is not None:
            await self.connection.close()
        self._closed.set()

    async def _remove_handlers(self) -> None:
        await SwarmNodeService().remove_p2p_handlers(self.p2p)
        for handle in (INFERENCE_HANDLE, PUSH_HANDLE, DIAL_BACK_HANDLE):
            await self.p2p.remove_binary_stream_handler(handle)
        if self.handler.pusher is not None:
            await self.handler.pusher.close()

    async def _refuted(self) -> None:
        """Gossip suspected us and we refuted with a higher incarnation: announce it now."""
        self.incarnation = self.gossip.membership.incarnation
        await self.announcer.announce()

    # ---- what the node tells others ---------------------------------------------------------------
    def record(self) -> NodeRecord:
        caches = self.caches
        span = max(1, self.end - self.start)
        return NodeRecord(
            peer_id=self.peer_id,
            state=self.state,
            start=self.start,
            end=self.end,
            inference_rps=self.advertised_rps(),
            prefill_rps=self.prefill_rps,
            cache_tokens_left=(caches.budget - caches.used) // span if caches else 0,
            active_sessions=caches.active_sessions if caches and not self.misreport else 0,
            **(self.handler.load_signals() if self.handler is not None else {}),
            dtype=dtype_name(self.dtype),
            quantization=self.config.quant,
            layout=self.weight_layout,
            version=swarmnode.__version__,
            public_name=self.config.public_name,
            metrics_addr=self.metrics_addr,
            incarnation=self.incarnation,
            max_blocks=self.max_blocks,
            relay=self.relay,
        )

    @property
    def relay(self) -> str:
        """The relay's peer id when this node cannot be dialled directly, else ""."""
        return self.connection.relay if self.connection is not None else ""

    def _metrics_host(self) -> str:
        """The address others reach the metrics endpoint at: its bind address, or else this node's
        first announced IPv4 address."""
        host = self.config.metrics_host
        if host not in ("0.0.0.0", "::", ""):
            return host
        for maddr in self.maddrs:
            parts = maddr.split("/")
            if len(parts) > 2 and parts[1] == "ip4":
                return parts[2]
        return "127.0.0.1"

    def _metrics_state(self) -> dict:
        """The live numbers a scrape reads (memory only; called from the metrics thread)."""
        caches, handler, gossip = self.caches, self.handler, self.gossip
        members = dict(gossip.membership.members) if gossip is not None else {}  # one atomic copy
        return {
            "sessions_active": caches.active_sessions if caches else 0,
            "cache_used_bytes": caches.used * self._kv_bytes_per_block_token if caches else 0,
            "cache_budget_bytes": caches.budget * self._kv_bytes_per_block_token if caches else 0,
            "start": self.start,
            "end": self.end,
            **(handler.load_signals() if handler is not None else {"busy": -1.0, "slowdown": -1.0}),
            "weights_bytes": self.weights_bytes,
            "resident_bytes": psutil.Process().memory_info().rss,
            "inference_rps": self.advertised_rps(),
            "state": self.state.name,
            "members": {peer: member.status.name for peer, member in members.items()},
        }

    def slow_down(self, factor: float = 5.0) -> None:
        """TESTING AID: make the step-delay aid ``factor`` times longer from now on (a node that
        turns slow without failing: a gray failure); called again, back to normal."""
        self._slowed = not getattr(self, "_slowed", False)
        self.step_delay_s = self.step_delay_s * factor if self._slowed else self.step_delay_s / factor
        if self.backend is not None:
            self.backend.step_delay_s = self.step_delay_s
        logger.warning("testing aid: step delay now %.1f ms", 1000 * self.step_delay_s)

    def info(self) -> dict:
        record = self.record()
        return node_info(
            peer_id=self.peer_id,
            model_id=self.model_record.model_id,
            state=record.state.name,
            start=self.start,
            end=self.end,
            dtype=record.dtype,
            hidden_size=self.spec.hidden_size,
            loaded_parameters=self.loaded_parameters,
            active_sessions=record.active_sessions,
            cache_budget=self.caches.budget,
            cache_used=self.caches.used,
            inference_rps=record.inference_rps,
            batching=self.batching,
            version=record.version,
            maddrs=self.maddrs,
            incarnation=self.incarnation,
            membership=self.gossip.view() if self.gossip is not None else {},
        )
