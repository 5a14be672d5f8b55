"""What block decoding costs a mixture of experts: the routing statistics and the bandwidth floor of an MoE forward,
and the load of a large MoE checkpoint. Used by `python -m benchmarks.bench --arch sdar-30b-a3b`.

A forward of Q tokens routes each to k of E experts; the grouped expert matmul (sdar_core/moe.py) reads each expert
that got at least one token once. So the bytes a forward must read are the dense weights (attention, router, norms,
lm_head) plus the *distinct* experts of each sparse layer: with independent routing E * (1 - (1 - k/E)^Q) of them,
8 for one token and ~82 of 128 for the 32 rows of a block-16 chunk on the 30B-A3B shape.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from sdar_core.decoding import generate
from sdar_core.device import synchronize
from sdar_core.loading import load_pretrained, save_pretrained
from sdar_core.moe import GEMV, GemvConfig, KernelConfig, SparseMoE, route

from .common import ARCHS, machine_info, measure_bandwidth


def sparse_layers(model) -> list[SparseMoE]:
    return [layer.mlp for layer in model.model.layers if isinstance(layer.mlp, SparseMoE)]


def expert_bytes(model) -> int:
    """Bytes of one expert's three matrices."""
    experts = sparse_layers(model)[0].experts
    return (
        experts.gate_up_proj[0].numel() + experts.down_proj[0].numel()
    ) * experts.gate_up_proj.element_size()


def dense_bytes(model) -> int:
    """Bytes every forward reads whatever the routing: all weights but the experts and an untied embedding table
    (a forward gathers a few of its rows)."""
    skip = {id(m.experts.gate_up_proj) for m in sparse_layers(model)} | {
        id(m.experts.down_proj) for m in sparse_layers(model)
    }
    if not model.config.tie_word_embeddings:
        skip.add(id(model.model.embed_tokens.weight))
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in skip:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def uniform_distinct(experts: int, k: int, rows: float) -> float:
    """Expected distinct experts among `rows` tokens routed independently and uniformly to k of `experts` each."""
    return experts * (1 - (1 - k / experts) ** rows)


class IndependentRouting:
    """Bench-only: the router's logits plus a fixed random table per layer and chunk row (scale >> the logits), so
    that every row of a chunk picks its experts independently of the others.

    Random weights route degenerately: the masked positions of a block share one embedding and, with near-uniform
    attention, one hidden state, so they would all pick the same k experts and block decoding would look free. A
    trained model's tokens in a block share experts more often than independent ones do: this is the worst case
    for block decoding, and the measured distinct-expert counts say how far it is from the model's own routing.
    """

    def __init__(self, model, rows: int, scale: float = 10.0) -> None:
        self.handles = []
        g = torch.Generator(device=model.device)
        for i, moe in enumerate(sparse_layers(model)):
            g.manual_seed(1000 + i)
            table = torch.randn(rows, moe.gate.out_features, device=model.device, generator=g) * scale
            self.handles.append(
                moe.gate.register_forward_hook(
                    lambda module, args, out, table=table: out + table[: out.shape[0]].to(out.dtype)
                )
            )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def routing_stats(model, ids: list[list[int]], max_block: int, **decode) -> dict:
    """Decode `ids` once on the plain path with the routers observed: the mean (and largest) number of distinct
    experts per sparse layer in a decode forward (the prefill excluded), and the mean rows such a forward routes."""
    seen: list[tuple[int, int]] = []  # (rows, distinct experts) per sparse layer and forward

    def observe(module, args, out):
        _, chosen = route(out, module_k[module], False, out.dtype)
        seen.append((chosen.shape[0], int(chosen.unique().numel())))

    module_k, handles = {}, []
    for moe in sparse_layers(model):
        module_k[moe.gate] = moe.top_k
        handles.append(moe.gate.register_forward_hook(observe))
    try:
        generate(model, ids, runner_mode="plain", **decode)
    finally:
        for h in handles:
            h.remove()
    decode_rows = [
        (n, d) for n, d in seen if n <= len(ids) * 2 * max_block
    ]  # a prefill routes the whole prompt
    if not decode_rows:
        return {}
    return dict(
        distinct_experts=sum(d for _, d in decode_rows) / len(decode_rows),
        max_distinct_experts=max(d for _, d in decode_rows),
        routed_rows=sum(n for n, _ in decode_rows) / len(decode_rows),
    )


def moe_floor_ms(info: dict, distinct: float, kv_bytes: float) -> float:
    """Reading the dense weights, the distinct experts of every sparse layer and the filled K/V once."""
    nbytes = info["dense_bytes"] + distinct * info["sparse_layers"] * info["expert_bytes"] + kv_bytes
    return 1000 * nbytes / (info["bandwidth_GBps"] * 1e9)


def one_token_floor(info: dict) -> dict:
    """An MoE's floor and AR ceiling: a one-token forward reads the dense weights and k experts per sparse layer
    (the whole checkpoint's bytes, the dense formula, would put the ceiling below what AR decoding reaches)."""
    ms = moe_floor_ms(info, info["experts_per_token"], 0)
    return dict(floor_ms_per_forward=ms, ar_ceiling_tps=1000 / ms)


def moe_info(model) -> dict:
    c = model.config
    return dict(
        moe=True,
        experts=c.num_experts,
        experts_per_token=c.num_experts_per_tok,
        sparse_layers=len(sparse_layers(model)),
        expert_bytes=expert_bytes(model),
        dense_bytes=dense_bytes(model),
    )


class PeakSampler:
    """The peak resident memory of this process while a block runs, sampled every 20 ms (psutil)."""

    def __init__(self) -> None:
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakSampler:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def save(model, folder: Path, dtype: torch.dtype) -> float:
    """Write `model` with save_pretrained (sharded safetensors, the public per-expert names): seconds taken."""
    t = time.perf_counter()
    save_pretrained(model, None, folder, dtype=dtype)
    return time.perf_counter() - t


def load(folder: Path, device: torch.device, dtype: torch.dtype):
    """load_pretrained of `folder` timed, with the peak memory of the process and the GPU: (model, stats)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    files = sorted(folder.glob("*.safetensors"))
    with PeakSampler() as host:
        t = time.perf_counter()
        model, _ = load_pretrained(folder, device=device, dtype=dtype, with_tokenizer=False)
        synchronize(device)
        seconds = time.perf_counter() - t
    stats = dict(
        load_s=seconds,
        shards=len(files),
        checkpoint_GB=sum(f.stat().st_size for f in files) / 1e9,
        peak_host_rss_GB=host.peak / 1e9,
        weights_GB=sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9,
    )
    if device.type == "cuda":
        stats["peak_gpu_GB"] = torch.cuda.max_memory_allocated(device) / 1e9
    return model, stats


# --- one MoE layer on its own: `python -m benchmarks.moe --out DIR` ------------------------------------------


def time_layer(fn, graph: bool, iters: int = 50) -> float:
    """Milliseconds per call of fn(): replayed from a CUDA graph, or eager (the looped form cannot be captured)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        fn = g.replay
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


ROTATION = 8  # routings per timed graph in `rotated_time`


def rotated_floor(cases: list) -> float:
    """The mean floor ms of `cases` (each reads its distinct experts once)."""
    return sum(c[4] for c in cases) / len(cases)


def rotated_time(cases: list, form) -> float:
    """ms per call of `form` over `cases` (ROTATION routings of one row count) captured in one graph: the experts
    differ from call to call, so that no call finds the last one's weights in L2 (one token's 8 experts are 75 MB on
    the 30B-A3B shape, the L2 of an H100 50 MB)."""
    return time_layer(lambda: [form(x, c, w) for x, c, w, _, _ in cases], graph=True) / len(cases)


GEMV_ROWS = 4  # the layer sweep times the gemv form up to this many rows

CONFIGS = [
    dict(block_n=n, block_k=kk, stages=st, warps=w)
    for n in (16, 32, 64)
    for kk in (64, 128)
    for st in (3, 4)
    for w in (4,)
] + [dict(block_n=64, block_k=128, stages=4, warps=8)]

# The gemv form's tiles (GemvConfig): each field's values, searched one field at a time from the default
# (`gemv_descent`), at one token over rotated routings. The H200 search (benchmarks/results/h200-gemv-tiles) went
# from tiles of 16 / 8 columns (384 + 256 programs for one token's 8 experts of the 30B-A3B shape) to 2 / 2 columns
# and K steps of 1,024, the grid's largest then: 2,048 is in it since.
GEMV_GRID = dict(
    block_n=(2, 4, 8, 16, 32),
    down_block_n=(2, 4, 8, 16),
    block_k=(128, 256, 512, 1024, 2048),
    stages=(1, 2, 3, 4),
    warps=(1, 2, 4, 8),
)
GEMV_TILES = tuple(GEMV_GRID)  # bench --gemv-tiles takes them in this order


def gemv_descent(timed, start: dict, grid: dict = GEMV_GRID, rounds: int = 2) -> dict:
    """Coordinate descent over the gemv tiles: from `start`, each field in turn set to the value of its grid that
    `timed(config) -> ms` finds fastest (None: the config failed its check and is never chosen), the others kept;
    `rounds` passes over the fields, or fewer when a pass changes nothing. Returns the best config; `timed` is
    called once per distinct config."""
    seen: dict[tuple, float | None] = {}

    def cost(c: dict) -> float:
        key = tuple(c[f] for f in grid)
        if key not in seen:
            seen[key] = timed(dict(c))
        ms = seen[key]
        return float("inf") if ms is None else ms

    best = dict(start)
    for _ in range(rounds):
        before = dict(best)
        for field, values in grid.items():
            best = min(({**best, field: v} for v in values), key=cost)
        if best == before:
            break
    return best


def layer_sweep(
    arch: str, rows: list[int], config_rows: list[int], gemv_tiles: bool = False
) -> tuple[dict, list[dict], list[dict]]:
    """One sparse layer of `arch` (random bf16 weights, independent routing): the Triton kernels and the grouped
    matmul in CUDA graphs and the looped form eagerly, per number of routed rows, against reading the distinct
    experts once; up to GEMV_ROWS rows also the gemv form against the sorted kernels (with the sort as one kernel
    and as eager ops) over rotated routings; then the Triton kernels' tile sizes at `config_rows`; with `gemv_tiles`
    the gemv form's tiles searched at one token (`gemv_descent`), each checked against the default's output."""
    shape = ARCHS[arch]
    E, k, h, inter = (
        shape[f] for f in ("num_experts", "num_experts_per_tok", "hidden_size", "moe_intermediate_size")
    )
    device = torch.device("cuda")
    layer = SparseMoE(E, k, True, h, inter).to(device, torch.bfloat16)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.02)
    bw = measure_bandwidth(device)
    per_expert = 3 * h * inter * 2
    gen = torch.Generator(device=device)

    def case(n: int, seed: int = 0):
        gen.manual_seed(n + 1000 * seed)
        x = torch.randn(n, h, device=device, dtype=torch.bfloat16, generator=gen)
        chosen = torch.stack(
            [torch.randperm(E, device=device, generator=gen)[:k] for _ in range(n)]
        )  # independent
        weights = torch.full((n, k), 1 / k, device=device, dtype=torch.bfloat16)
        distinct = int(chosen.unique().numel())
        return x, chosen, weights, distinct, 1000 * distinct * per_expert / bw  # the floor: each read once

    def rotation(n: int) -> list:
        """ROTATION routings of n rows (rotated_time's cases)."""
        return [case(n, seed) for seed in range(ROTATION)]

    out, configs = [], []
    e = layer.experts
    with torch.no_grad():
        for n in rows:
            x, chosen, weights, distinct, floor = case(n)
            triton_ms = time_layer(lambda: e.triton_forward(x, chosen, weights), graph=True)
            grouped = time_layer(lambda: e.grouped_forward(x, chosen, weights), graph=True)
            looped = time_layer(lambda: e.looped_forward(x, chosen, weights), graph=False)
            row = dict(
                rows=n,
                distinct_experts=distinct,
                floor_ms=floor,
                triton_graph_ms=triton_ms,
                grouped_graph_ms=grouped,
                looped_eager_ms=looped,
                triton_of_floor=floor / triton_ms,
                grouped_of_floor=floor / grouped,
            )
            line = ""
            if n <= GEMV_ROWS:  # the gemv form against the sorted one, each over rotated routings
                cases = rotation(n)
                row["rotated_floor_ms"] = rotated_floor(cases)
                row["triton_rotated_ms"] = rotated_time(cases, e.triton_forward)
                row["triton_sorted_eagerly_rotated_ms"] = rotated_time(
                    cases, lambda x, c, w: e.triton_forward(x, c, w, fuse_sort=False)
                )
                row["gemv_rotated_ms"] = rotated_time(cases, e.gemv_forward)
                row["gemv_of_floor"] = row["rotated_floor_ms"] / row["gemv_rotated_ms"]
                row["triton_rotated_of_floor"] = row["rotated_floor_ms"] / row["triton_rotated_ms"]
                line = (
                    f"  | rotated: floor {row['rotated_floor_ms']:.3f} ms, gemv {row['gemv_rotated_ms']:.3f} ms "
                    f"({row['gemv_of_floor']:.0%}), sorted {row['triton_rotated_ms']:.3f} ms "
                    f"({row['triton_rotated_of_floor']:.0%}), sorted eagerly "
                    f"{row['triton_sorted_eagerly_rotated_ms']:.3f} ms"
                )
            out.append(row)
            print(
                f"  rows {n:4d}  distinct {distinct:3d}  floor {floor:.3f} ms  triton {triton_ms:.3f} ms "
                f"({floor / triton_ms:.0%})  grouped {grouped:.3f} ms ({floor / grouped:.0%})  "
                f"looped {looped:.3f} ms{line}",
                flush=True,
            )
        for n in config_rows:
            x, chosen, weights, _, floor = case(n)
            for c in CONFIGS:
                ms = time_layer(
                    lambda: layer.experts.triton_forward(x, chosen, weights, KernelConfig(**c)), graph=True
                )
                configs.append(dict(rows=n, **c, ms=ms, of_floor=floor / ms))
                print(f"  rows {n:4d}  {c}  {ms:.3f} ms ({floor / ms:.0%})", flush=True)
        info = dict(arch=arch, bandwidth_GBps=bw / 1e9, expert_bytes=per_expert)
        if gemv_tiles:
            rotations = {n: rotation(n) for n in (1, 2)}
            info["gemv_configs"], info["best_gemv"] = gemv_sweep(e, rotations[1])
            for n, cases in rotations.items():  # the best against the default at one and two tokens
                floor = rotated_floor(cases)
                for name, tiles in (("default", asdict(GEMV)), ("best", info["best_gemv"])):
                    ms = rotated_time(cases, lambda x, c, w: e.gemv_forward(x, c, w, GemvConfig(**tiles)))
                    info[f"gemv_{name}_rows{n}_ms"] = ms
                    print(
                        f"  gemv {name} tiles at {n} rows: {ms:.3f} ms ({floor / ms:.0%}) {tiles}", flush=True
                    )
    return info, out, configs


def gemv_sweep(experts, cases: list) -> tuple[list[dict], dict]:
    """Every gemv tiling `gemv_descent` tries at one token over `cases` (rotated routings): its time, and whether
    its output matches the default tiles' within bf16 rounding (the sums' order differs with the tiles); the best."""
    reference = [experts.gemv_forward(x, c, w, GEMV) for x, c, w, _, _ in cases]
    floor = rotated_floor(cases)
    tried: list[dict] = []

    def timed(tiles: dict) -> float | None:
        row = dict(rows=1, **tiles, ms=None, matches_default=False)
        tried.append(row)
        try:
            config = GemvConfig(**tiles)
            outs = [experts.gemv_forward(x, c, w, config) for x, c, w, _, _ in cases]
            row["max_rel_diff"] = max(
                float((o.float() - r.float()).norm() / r.float().norm()) for o, r in zip(outs, reference)
            )
            row["matches_default"] = row["max_rel_diff"] < 1e-2
            row["ms"] = ms = rotated_time(cases, lambda x, c, w: experts.gemv_forward(x, c, w, config))
        except Exception as err:  # a tiling the compiler or the GPU refuses (registers, shared memory)
            row["error"] = f"{type(err).__name__}: {err}"[:300]
            print(f"  gemv {tiles}: failed ({row['error']})", flush=True)
            return None
        row["of_floor"] = floor / ms
        print(
            f"  gemv {tiles}: {ms:.4f} ms ({floor / ms:.0%}), rel diff {row['max_rel_diff']:.1e}", flush=True
        )
        return ms if row["matches_default"] else None

    best = gemv_descent(timed, asdict(GEMV))
    return tried, {k: best[k] for k in GEMV_TILES}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.moe", description="one MoE layer: gemv vs triton vs grouped vs looped"
    )
    p.add_argument("--arch", default="sdar-30b-a3b")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    p.add_argument("--config-rows", type=int, nargs="*", default=[1, 16, 64])
    p.add_argument(
        "--gemv-tiles",
        action="store_true",
        help="also search the gemv form's tiles at one token; layer.json's best_gemv holds the fastest "
        "(python -m benchmarks.bench --gemv-tiles takes them)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("the layer sweep times CUDA graphs: it needs a GPU")
    info, rows, configs = layer_sweep(args.arch, args.rows, args.config_rows, args.gemv_tiles)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        gemv = {k: info.pop(k) for k in ("gemv_configs", "best_gemv") if k in info}
        (Path(args.out) / "layer.json").write_text(
            json.dumps(
                {
                    "machine": machine_info(torch.device("cuda")) | info,
                    "rows": rows,
                    "configs": configs,
                    **gemv,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
