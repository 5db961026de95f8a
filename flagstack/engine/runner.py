"""Runs one scheduled step on the model: packs the batch, sets the attention metadata, runs the
forward (a captured CUDA graph for decode batches on CUDA), computes logits only for the rows that
need them, scores prompt logprobs and samples.

Also owns the KV cache tensors: sized from free GPU memory after a profile run on CUDA, from
`cpu_kv_cache_bytes` on CPU, or fixed by `num_kv_blocks`.
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from flagstack.engine.config import EngineConfig
from flagstack.engine.context import AttentionMetadata, step_context
from flagstack.engine.cpu_malloc import keep_freed_memory
from flagstack import ops
from flagstack.ops.attention.common import FP8_KV
from flagstack.engine.sampler import PendingSample, Sampler, logprob_dicts
from flagstack.engine.scheduler import ScheduledBatch
from flagstack.engine.sequence import Sequence

PROMPT_LOGITS_CHUNK = 256  # prompt rows per logits GEMM: bounds memory to 256 x vocab fp32


def padded_tables(tables: list[list[int]], width: int) -> torch.Tensor:
    """Block tables as one zero-padded int32 [len(tables), width] CPU tensor. Built in numpy: torch.tensor
    on 256 nested lists took ~3x longer (3.1 vs 1.1 ms per decode step on the 2-core CPU)."""
    lens = np.fromiter(map(len, tables), np.int64, len(tables))
    flat = np.fromiter(itertools.chain.from_iterable(tables), np.int32, int(lens.sum()))
    out = np.zeros((len(tables), width), np.int32)
    out[np.arange(width) < lens[:, None]] = flat  # row-major order: each row's entries, then padding
    return torch.from_numpy(out)


@dataclass
class LaunchedStep:
    """A step queued on the device: its sequences that sample a token, and the choices on their way."""

    seqs: list[Sequence]
    sample: PendingSample

    @property
    def allows_run_ahead(self) -> bool:
        """Whether the next step may be launched before this one's tokens reach the host."""
        return not any(seq.needs_host_tokens for seq in self.seqs)


class ModelRunner:
    def __init__(self, loaded, config: EngineConfig, device: torch.device, max_model_len: int) -> None:
        self.loaded, self.model, self.config = loaded, loaded.model, config
        self.device, self.max_model_len = device, max_model_len
        self.block_size = config.block_size
        self.max_blocks_per_seq = -(-max_model_len // self.block_size)
        self.sampler = Sampler(torch.Generator(device=device).manual_seed(config.seed), config.seed)
        if device.type == "cpu":
            keep_freed_memory()
        self.num_blocks = config.num_kv_blocks or self._pool_size()
        self.k_caches, self.v_caches = self._allocate_cache(self.num_blocks)
        # the last launched step's sampled ids on the device, and each sampling sequence's row in them: a
        # decode token still pending on the host is read from there
        self.last_ids: torch.Tensor | None = None
        self.last_rows: dict[int, int] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.graph_outputs: dict[int, torch.Tensor] = {}
        self.graph_sizes: list[int] = []
        if device.type == "cuda" and not config.enforce_eager:
            self._capture_graphs()

    # -- KV cache --------------------------------------------------------------------------------
    @property
    def cache_dtype(self) -> torch.dtype:
        """The KV cache's element type: the model's, or fp8 e4m3 (kv_cache_dtype="fp8")."""
        return self.loaded.dtype if self.config.kv_cache_dtype == "auto" else FP8_KV

    @property
    def block_bytes(self) -> int:
        lm = self.loaded
        return 2 * lm.num_layers * self.block_size * lm.num_kv_heads * lm.head_dim * self.cache_dtype.itemsize

    def _allocate_cache(self, num_blocks: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        lm = self.loaded
        shape = (num_blocks, self.block_size, lm.num_kv_heads, lm.head_dim)
        ks, vs = [], []
        for layer in self.model.attention_layers():
            layer.k_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
            layer.v_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
            ks.append(layer.k_cache)
            vs.append(layer.v_cache)
        return ks, vs

    def _pool_size(self) -> int:
        if self.device.type != "cuda":  # no more than max_num_seqs full-length sequences can use
            blocks = min(self.config.cpu_kv_cache_bytes // self.block_bytes,
                         self.config.max_num_seqs * self.max_blocks_per_seq)
        else:
            blocks = self._profile_gpu_blocks()
        if blocks < self.max_blocks_per_seq:
            raise ValueError(f"KV cache too small: {blocks} blocks of {self.block_size} tokens cannot hold one "
                             f"sequence of max_model_len {self.max_model_len}; raise the memory budget or "
                             f"lower max_model_len")
        return int(blocks)

    def _profile_gpu_blocks(self) -> int:
        """Run the largest step once with a scratch cache, then give the KV cache what is left."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        tokens = self.config.max_num_batched_tokens
        seq_len = min(tokens, self.max_model_len)
        num_seqs = max(1, min(tokens // seq_len, self.config.max_num_seqs))
        scratch_blocks = num_seqs * -(-seq_len // self.block_size)
        self._allocate_cache(scratch_blocks)
        scratch_bytes = scratch_blocks * self.block_bytes
        table = torch.arange(scratch_blocks, dtype=torch.int32, device=self.device).view(num_seqs, -1)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(num_seqs * table.shape[1] * self.block_size, device=self.device)
            .view(num_seqs, -1)[:, :seq_len].reshape(-1),
            cu_seqlens_q=torch.arange(0, num_seqs + 1, dtype=torch.int32, device=self.device) * seq_len,
            seq_lens=torch.full((num_seqs,), seq_len, dtype=torch.int32, device=self.device),
            block_tables=table, max_query_len=seq_len, max_seq_len=seq_len)
        ids = torch.zeros(num_seqs * seq_len, dtype=torch.long, device=self.device)
        positions = torch.arange(seq_len, device=self.device).repeat(num_seqs)
        with torch.inference_mode(), step_context(meta):
            hidden = self.model(ids, positions)
            rows = min(self.config.max_num_seqs, hidden.shape[0])
            logits = self.model.compute_logits(hidden[:rows])
            ops.sample(logits, [1.0] * rows, [0] * rows, [0.9] * rows, [0.0] * rows)  # its sort buffers
        torch.cuda.synchronize()
        for layer in self.model.attention_layers():
            layer.k_cache = layer.v_cache = None
        del hidden, logits
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        activations = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated() - scratch_bytes
        budget = total * self.config.gpu_memory_utilization - (total - free) - max(activations, 0)
        return int(budget // self.block_bytes)

    # -- one step --------------------------------------------------------------------------------
    def launch(self, batch: ScheduledBatch, eos_token_ids: list[int]) -> LaunchedStep:
        """Queue the batch's new tokens and the sampling on the device (prompt logprobs go to the requests)."""
        bs = self.block_size
        ids: list[int] = []
        pending_rows, source_rows = [], []  # decode inputs still on the device: row here <- row of last step
        positions: list[int] = []
        slots: list[int] = []
        cu, seq_lens, tables = [0], [], []
        sample_rows, sample_seqs, sample_index = [], [], []  # row, sequence, its index in the batch
        prompt_rows: list[int] = []
        prompt_targets: list[tuple] = []  # (request, scored position)
        for index, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            c, offset = seq.num_computed_tokens, cu[-1]
            table = seq.block_table
            if n == 1:  # a decode token (the common case, spelled out: no slices or generators)
                if c < len(seq.token_ids):
                    ids.append(seq.token_ids[c])
                else:  # sampled by the step still running
                    pending_rows.append(offset)
                    source_rows.append(self.last_rows[seq.seq_id])
                    ids.append(0)
                positions.append(c)
                slots.append(table[c // bs] * bs + c % bs)
            else:
                ids.extend(seq.token_ids[c:c + n])
                positions.extend(range(c, c + n))
                slots.extend(table[p // bs] * bs + p % bs for p in range(c, c + n))
            cu.append(offset + n)
            seq_lens.append(c + n)
            tables.append(table)
            if c + n == len(seq):
                sample_rows.append(offset + n - 1)
                sample_seqs.append(seq)
                sample_index.append(index)
            request = seq.request
            if request.params.prompt_logprobs is not None and not request.prompt_logprobs_done and seq.parent is None:
                first = request.params.first_scored_prompt_position(seq.num_prompt_tokens)
                for q in range(max(c, first - 1), min(c + n, seq.num_prompt_tokens - 1)):
                    prompt_rows.append(offset + q - c)  # the logits at q score the token at q + 1
                    prompt_targets.append((request, q + 1))
        pending = None
        if pending_rows:
            rows = torch.tensor([pending_rows, source_rows]).to(self.device, non_blocking=True)
            pending = (rows[0], self.last_ids[rows[1]])
        # CPU: when the step reads only its sampled rows, the last layer runs on those alone (a prompt of
        # 512 tokens spends ~1/30 of its time there for one row's logits); CUDA keeps every row
        only_sampled = self.device.type == "cpu" and not prompt_rows and 0 < len(sample_rows) < len(ids)
        hidden = self._forward(ids, positions, slots, cu, seq_lens, tables, batch.is_decode, pending,
                               (sample_rows, sample_index) if only_sampled else None)
        if prompt_rows:
            self._score_prompt(hidden, prompt_rows, prompt_targets)
        if only_sampled or len(sample_rows) == hidden.shape[0]:  # hidden holds just the sampled rows: no gather
            sampled = hidden
        else:  # a copy with device= would wait here for the forward; non_blocking queues it behind it
            sampled = hidden[torch.tensor(sample_rows, dtype=torch.long).to(self.device, non_blocking=True)]
        logits = self.model.compute_logits(sampled)
        sample = self.sampler.launch(logits, sample_seqs, eos_token_ids)
        self.last_ids, self.last_rows = sample.token_ids, {seq.seq_id: r for r, seq in enumerate(sample_seqs)}
        return LaunchedStep(sample_seqs, sample)

    def _forward(self, ids, positions, slots, cu, seq_lens, tables, is_decode: bool,
                 pending: tuple[torch.Tensor, torch.Tensor] | None,
                 only: tuple[list[int], list[int]] | None = None) -> torch.Tensor:
        """The model on the step's tokens; `pending` = (rows, ids) to write into the input ids on the device;
        `only` = (rows, their sequences' batch indices): the hidden states of just those rows, each the
        last new token of its sequence."""
        graph_bs = next((b for b in self.graph_sizes if b >= len(ids)), None) if is_decode and self.graphs else None
        if graph_bs is not None:
            return self._replay(graph_bs, ids, positions, slots, seq_lens, tables, pending)
        width = max(len(t) for t in tables)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long).to(dev, non_blocking=True),
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32).to(dev, non_blocking=True),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32).to(dev, non_blocking=True),
            block_tables=padded_tables(tables, width).to(dev, non_blocking=True),
            max_query_len=max(b - a for a, b in zip(cu, cu[1:])), max_seq_len=max(seq_lens))
        rows = None
        if only is not None:  # each row attends its whole sequence, as a decode row does
            rows = torch.tensor(only[0], dtype=torch.long).to(dev, non_blocking=True)
            seqs = torch.tensor(only[1], dtype=torch.long).to(dev, non_blocking=True)
            lens = [seq_lens[i] for i in only[1]]
            meta.rows_meta = AttentionMetadata(
                slot_mapping=meta.slot_mapping[rows],
                cu_seqlens_q=torch.arange(len(lens) + 1, dtype=torch.int32, device=dev),
                seq_lens=torch.tensor(lens, dtype=torch.int32).to(dev, non_blocking=True),
                block_tables=meta.block_tables[seqs], max_query_len=1, max_seq_len=max(lens))
        input_ids = torch.tensor(ids, dtype=torch.long).to(dev, non_blocking=True)
        if pending is not None:
            input_ids[pending[0]] = pending[1]
        with torch.inference_mode(), step_context(meta):
            return self.model(input_ids, torch.tensor(positions, dtype=torch.long).to(dev, non_blocking=True), rows)

    def _score_prompt(self, hidden: torch.Tensor, rows: list[int], targets: list[tuple]) -> None:
        for start in range(0, len(rows), PROMPT_LOGITS_CHUNK):
            chunk_rows, chunk_targets = rows[start:start + PROMPT_LOGITS_CHUNK], targets[start:start + PROMPT_LOGITS_CHUNK]
            logits = self.model.compute_logits(hidden[torch.tensor(chunk_rows, device=self.device)])
            actual = torch.tensor([req.prompt_token_ids[p] for req, p in chunk_targets], device=self.device)
            top_n = [req.params.prompt_logprobs for req, _ in chunk_targets]
            for (req, p), d in zip(chunk_targets, logprob_dicts(torch.log_softmax(logits, -1), actual, top_n)):
                req.prompt_logprobs[p] = d

    # -- CUDA graphs -----------------------------------------------------------------------------
    def _capture_graphs(self) -> None:
        """One graph per decode batch size (1, 2, 4, 8, then steps of 16 up to max_num_seqs), sharing a
        memory pool and static input buffers; smaller batches run padded (slot -1, length 1)."""
        max_bs = self.config.max_num_seqs
        sizes = sorted({b for b in (1, 2, 4, 8, *range(16, max_bs + 1, 16), max_bs) if b <= max_bs})
        dev = self.device
        self.static = {
            "ids": torch.zeros(max_bs, dtype=torch.long, device=dev),
            "positions": torch.zeros(max_bs, dtype=torch.long, device=dev),
            "slots": torch.full((max_bs,), -1, dtype=torch.long, device=dev),
            "seq_lens": torch.ones(max_bs, dtype=torch.int32, device=dev),
            "tables": torch.zeros(max_bs, self.max_blocks_per_seq, dtype=torch.int32, device=dev),
            "cu": torch.arange(max_bs + 1, dtype=torch.int32, device=dev),
        }
        s = self.static
        pool = None
        try:
            for b in reversed(sizes):
                meta = AttentionMetadata(s["slots"][:b], s["cu"][:b + 1], s["seq_lens"][:b], s["tables"][:b],
                                         1, self.max_model_len)
                graph = torch.cuda.CUDAGraph()
                with torch.inference_mode(), step_context(meta):
                    self.model(s["ids"][:b], s["positions"][:b])  # warm-up: autotuning, lazy init
                    torch.cuda.synchronize()
                    with torch.cuda.graph(graph, pool):
                        out = self.model(s["ids"][:b], s["positions"][:b])
                self.graph_outputs[b] = out
                pool = graph.pool()
                self.graphs[b] = graph
        except RuntimeError as err:  # a kernel that cannot be captured: run eagerly instead
            warnings.warn(f"CUDA graph capture failed, running decode eagerly: {err}")
            self.graphs = {}
        self.graph_sizes = sorted(self.graphs)
        torch.cuda.synchronize()

    def _replay(self, b: int, ids, positions, slots, seq_lens, tables, pending) -> torch.Tensor:
        s, n = self.static, len(ids)
        s["slots"][:b].fill_(-1)
        s["seq_lens"][:b].fill_(1)
        s["ids"][:n].copy_(torch.tensor(ids), non_blocking=True)
        if pending is not None:
            s["ids"][pending[0]] = pending[1]
        s["positions"][:n].copy_(torch.tensor(positions), non_blocking=True)
        s["slots"][:n].copy_(torch.tensor(slots), non_blocking=True)
        s["seq_lens"][:n].copy_(torch.tensor(seq_lens, dtype=torch.int32), non_blocking=True)
        width = max(len(t) for t in tables)
        s["tables"][:n, :width].copy_(padded_tables(tables, width), non_blocking=True)
        self.graphs[b].replay()
        return self.graph_outputs[b][:n]
