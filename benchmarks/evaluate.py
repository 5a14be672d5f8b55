"""Evaluate the embedded models (sdar-tiny and its AR twin ar-tiny): held-out loss, arithmetic, definitions, samples.

    python -m benchmarks.evaluate                                   # everything in data/embedded, on the default device
    python -m benchmarks.evaluate --limit 200 --text-limit 20       # a subset (5-10 minutes on 2 CPU cores)
    python -m benchmarks.evaluate --data assets/models/eval/data --limit 8 --batch-size 8 --text-limit 1 \\
        --grid-limit 4 --define-limit 4 --no-samples --out assets/models/eval/eval-subset.json   # tests/ repeat it
    python -m benchmarks.evaluate --device cuda --out assets/models/eval/eval-full.json      # the full set
    python -m benchmarks.evaluate --write-expected                  # rewrite assets/models/eval/expected.json

Three measurements (assets/models/README.md, "Evaluation", defines every column):

1. Held-out loss on `heldout_text.jsonl`, each document cut into chunks of at most 512 tokens. The two models get
   different quantities: ar-tiny the exact next-token NLL (Eq. 3); sdar-tiny the block diffusion NELBO (Eq. 7),
   an upper bound on its NLL, integrated over t by the midpoint rule on `--t-levels` noise levels with masks drawn
   from a fixed seed per (chunk, level), so the number does not depend on the batch size or the device.
2. Exact match on `eval_arith.jsonl` (chat template, greedy, graded by the last `Answer:` line) for ar-tiny and for
   sdar-tiny under several decoders, with tokens per forward (TPF), mean new tokens and tokens/s.
3. The accuracy / TPF grid of sdar-tiny over block size x decoder (static, dynamic thresholds) on the first
   `--grid-limit` problems: the trade-off the studio's two sliders show.
4. Held-out definitions (`eval_define.jsonl`: WordNet words whose glosses are in the pretraining text but never
   asked in SFT): "Define the word X." answered greedily; the score of a reply is the fraction of the gloss's
   content words (letters only, 3+ characters, not a stop word) that it contains, averaged over the words.
5. A few greedy chat samples of both models.

Writes one JSON file (settings, machine, versions, results) and prints the Markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sdar_core import DecodeParams, generate, load_pretrained
from sdar_core.attention import AttentionInputs
from sdar_core.kv_cache import KVCache
from sdar_core.loading import WEIGHT_CHOICES, weights_from_choice
from sdar_core.paths import MODELS_DIR, in_checkout
from sdar_core.prompting import encode_prompt, stop_ids_for
from training.corpus import sha256_file
from training.data import encode_texts
from training.objective import Noise, PackedBatch, ar_loss, block_ids, sample_noise, sdar_mask
from training.synthetic import final_answer

from .common import hardware_name

ARITH_FILE = "eval_arith.jsonl"
DEFINE_FILE = "eval_define.jsonl"
TEXT_FILE = "heldout_text.jsonl"
EVAL_DIR = MODELS_DIR / "eval"
# the first 64 problems, 20 held-out documents, 16 definitions, committed for the tests
SUBSET_DATA = EVAL_DIR / "data"
EXPECTED = EVAL_DIR / "expected.json"

SAMPLE_PROMPTS = (
    "What is 47 + 38?",  # arithmetic, in the SFT format
    "Define the word harbor.",  # a definition asked in SFT (training.qa.STUDIO_WORDS)
    "What does the word volcano mean?",  # the same, another template
    "Define the word certifiable.",  # a held-out definition (gloss in pretraining only)
    "How do I reverse the order of the items in the array in Python?",  # a generated "How do I" chat
    "How do I reverse a list in Python?",  # not in SFT as worded
    "How many minutes are in 7 hours?",  # a unit conversion
    "What comes next: 3, 7, 11, 15, 19, ?",  # a sequence
    "Write a short poem about the sea.",  # nothing like it in SFT
    "Who are you?",  # identity Q&A (in the SFT data)
)


@dataclass(frozen=True)
class Decoder:
    """One row of the arithmetic table: a model and how it is decoded."""

    model: str  # folder name under --models
    strategy: str  # "ar" | "static" | "dynamic" (sdar_core.generate)
    threshold: float | None = None
    block_length: int = 4  # static decoding takes block_length steps per block (one token per forward)

    def params(self, max_new_tokens: int, stop_token_ids: list[int]) -> DecodeParams:
        """How generate decodes this row (block_length steps per block; the threshold where one is given)."""
        threshold = {} if self.threshold is None else {"threshold": self.threshold}
        return DecodeParams(
            max_new_tokens=max_new_tokens,
            strategy=self.strategy,
            block_length=self.block_length,
            steps=self.block_length,
            stop_token_ids=stop_token_ids,
            **threshold,
        )

    @property
    def label(self) -> str:
        return (
            self.strategy
            + (f" {self.threshold:g}" if self.threshold is not None else "")
            + (f", block {self.block_length}" if self.strategy != "ar" else "")
        )


DECODERS = (
    Decoder("ar-tiny", "ar"),
    Decoder("sdar-tiny", "static"),
    *(Decoder("sdar-tiny", "dynamic", 0.9, b) for b in (4, 8, 16)),
)
GRID_BLOCKS = (1, 2, 4, 8, 16)
GRID_THRESHOLDS = (None, 0.95, 0.9, 0.8, 0.7)  # None: static
GRID = tuple(
    Decoder("sdar-tiny", "static" if t is None else "dynamic", t, b)
    for b in GRID_BLOCKS
    for t in GRID_THRESHOLDS
)
DEFINE_DECODERS = (Decoder("ar-tiny", "ar"), Decoder("sdar-tiny", "dynamic", 0.9))
STOP_WORDS = frozenset(
    "the and for that with from which this are was were has have had its any not but one "
    "into such than other being been more most who whom whose what when where how very".split()
)


@dataclass
class EvalSettings:
    models: str = "assets/models"
    data: str = "data/embedded"
    limit: int | None = None  # arithmetic problems (the first N); None: all
    # problems of the block size x threshold grid (the first N, at most limit); 0: no grid
    grid_limit: int = 200
    define_limit: int | None = None  # held-out definitions (the first N); None: all; 0: none
    text_limit: int | None = None  # held-out documents (N spread evenly over the file); None: all
    batch_size: int = 32  # arithmetic problems per generate call
    loss_batch_size: int = 8  # chunks per loss forward
    max_new_tokens: int = 256  # the longest worked solution (4-digit x 4-digit) is about 190 tokens
    sample_tokens: int = 128
    seq_len: int = 512
    t_levels: int = 8
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"  # on every device, so that CPU and GPU numbers differ by rounding only
    # "fp8": the projections as float8 weights (load_pretrained(weights="fp8")); the run then also compares
    # sdar-tiny's logits with the dtype's own on the held-out chunks (fp8_logits)
    weights: str = "dtype"
    samples: bool = True


@dataclass
class ArithTally:
    """Sums over the rows of one decoder's run; the table's columns are ratios of these."""

    problems: int = 0
    correct: int = 0
    new_tokens: int = 0
    row_forwards: int = 0  # sum over rows of the forwards that row used (= what it costs decoded alone)
    batch_row_forwards: int = 0  # sum over batches of forwards x rows (every row waits for the slowest)
    seconds: float = 0.0
    unfinished: int = 0  # rows that hit max_new_tokens without a stop token
    mask_tokens: int = 0  # mask tokens in the output (must be 0)
    by_op: dict = field(default_factory=dict)  # op -> [correct, problems]
    wrong: list = field(default_factory=list)  # the first few wrong answers, for reading

    def summary(self) -> dict:
        n = max(self.problems, 1)
        return {
            "problems": self.problems,
            "correct": self.correct,
            "accuracy": self.correct / n,
            "tpf": self.new_tokens / max(self.row_forwards, 1),
            "batch_tpf": self.new_tokens / max(self.batch_row_forwards, 1),
            "mean_new_tokens": self.new_tokens / n,
            "new_tokens": self.new_tokens,
            "row_forwards": self.row_forwards,
            "batch_row_forwards": self.batch_row_forwards,
            "tokens_per_s": self.new_tokens / self.seconds if self.seconds > 0 else 0.0,
            "seconds": self.seconds,
            "unfinished": self.unfinished,
            "mask_tokens": self.mask_tokens,
            "accuracy_by_op": {op: c / p for op, (c, p) in sorted(self.by_op.items())},
            "wrong_examples": self.wrong,
        }


# ---------------------------------------------------------------------------------------------------------------
# Data


def read_jsonl(path: Path, limit: int | None) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: build data/embedded with `python -m training.corpus --out "
            f"data/embedded`, or pass --data {SUBSET_DATA} (the committed subset)"
        )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit is not None else rows


def spread(rows: list, limit: int | None) -> list:
    """`limit` rows evenly spaced over the list (the held-out file is grouped by source), in file order."""
    if limit is None or limit >= len(rows):
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


def chunk_documents(docs: list[list[int]], seq_len: int, pad_id: int) -> PackedBatch:
    """Every document cut into chunks of at most seq_len tokens, one chunk per row (right-padded): [N, seq_len].

    Unlike training's packed rows, a chunk never shares its row with another document, so both models see the
    same tokens with the same context, whatever the batch."""
    chunks = [d[i : i + seq_len] for d in docs for i in range(0, len(d), seq_len)]
    n = len(chunks)
    ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
    segment_ids = torch.ones(n, seq_len, dtype=torch.long)  # padding: a segment of its own (1)
    loss_mask = torch.zeros(n, seq_len, dtype=torch.bool)
    for r, c in enumerate(chunks):
        ids[r, : len(c)] = torch.tensor(c)
        segment_ids[r, : len(c)] = 0
        loss_mask[r, : len(c)] = True
    positions = torch.arange(seq_len).expand(n, seq_len).clone()
    positions[segment_ids == 1] = 0
    return PackedBatch(ids, segment_ids, positions, loss_mask)


def _rows(batch: PackedBatch, start: int, stop: int) -> PackedBatch:
    return batch.map(lambda t: t[start:stop])


# ---------------------------------------------------------------------------------------------------------------
# Held-out loss


@torch.no_grad()
def ar_nll(model, chunks: PackedBatch, batch_size: int) -> tuple[float, int]:
    """(summed next-token NLL in nats, predicted tokens) over every chunk (Eq. 3; a chunk's first token has no
    context and is not predicted)."""
    total, n = 0.0, 0
    for s in range(0, chunks.input_ids.shape[0], batch_size):
        out = ar_loss(model, _rows(chunks, s, s + batch_size).to(model.device), attention="sdpa")
        total += float(out.loss.double() * out.n_targets)
        n += int(out.n_targets)
    return total, n


def chunk_noise(chunk: PackedBatch, t: float, seed: int) -> Noise:
    """The masks of one chunk [1, T] at noise level t (Eq. 4), drawn by a CPU generator with this seed: the same
    masks on every device and in every batch."""
    g = torch.Generator().manual_seed(seed)
    return sample_noise(chunk, generator=g, t=torch.tensor([[t]]))


@torch.no_grad()
def sdar_nelbo(
    model,
    chunks: PackedBatch,
    batch_size: int,
    *,
    block_size: int,
    mask_token_id: int,
    t_levels: int,
    seed: int,
) -> tuple[float, int]:
    """(summed NELBO in nats, trained tokens): Eq. (7)'s integral over t in (0, 1] by the midpoint rule on
    t_levels levels, t_k = (k + 1/2) / t_levels, one mask draw per (chunk, level). Per token this is an upper
    bound on sdar-tiny's NLL (up to the quadrature and the mask sampling).

    The same numbers as training's sdar_loss on [x_t ; x_0] (tests/test_evaluate.py checks it), at about half the
    cost: the clean half's keys and values do not depend on the noise, so they are computed once per chunk into a
    KV cache, and each noise level runs only the noisy half against them."""
    T = chunks.input_ids.shape[1]
    devices = [layer.self_attn.q_proj.weight.device for layer in model.model.layers]
    total, n = 0.0, 0
    for s in range(0, chunks.input_ids.shape[0], batch_size):
        rows = _rows(chunks, s, s + batch_size)
        B = rows.input_ids.shape[0]
        batch = rows.to(model.device)
        full = sdar_mask(batch.segment_ids, block_ids(batch.segment_ids, batch.positions, block_size), "sdpa")
        # full: [B, 1, 2T, 2T] over [x_t ; x_0]; the cache holds [x_0 ; x_t], so the key halves swap.
        clean_mask = full[:, :, T:, T:]  # [B, 1, T, T] block-causal
        noisy_mask = torch.cat([full[:, :, :T, T:], full[:, :, :T, :T]], -1)  # [B, 1, T, 2T]
        cache = KVCache.allocate(model.config, B, 2 * T, dtype=model.dtype, devices=devices)
        clean = AttentionInputs(mask=clean_mask)
        model(batch.input_ids, batch.positions, attn=clean, cache=cache.chunk(0, T), logits_from=T)
        for k in range(t_levels):
            t = (k + 0.5) / t_levels
            masked = torch.cat(
                [
                    chunk_noise(_rows(rows, i, i + 1), t, seed * 1_000_003 + (s + i) * t_levels + k).masked
                    for i in range(B)
                ]
            ).to(model.device)  # [B, T]
            x_t = torch.where(masked, torch.full_like(batch.input_ids, mask_token_id), batch.input_ids)
            noisy = AttentionInputs(mask=noisy_mask)
            logits = model(x_t, batch.positions, attn=noisy, cache=cache.chunk(T, T))  # [B, T, V]
            ce = F.cross_entropy(logits.flatten(0, 1).float(), batch.input_ids.flatten(), reduction="none")
            total += float((ce * masked.flatten()).double().sum()) / t / t_levels
        n += int(batch.loss_mask.sum())
    return total, n


# ---------------------------------------------------------------------------------------------------------------
# Arithmetic


def arith_eval(
    model, tokenizer, problems: list[dict], decoder: Decoder, settings: EvalSettings
) -> ArithTally:
    """Greedy decoding of every problem in batches of settings.batch_size; exact match of the final answer."""
    stop = stop_ids_for(tokenizer, model.config)
    mask_id = model.config.mask_token_id
    prompts = [encode_prompt(tokenizer, p["prompt"], chat=True) for p in problems]
    params = decoder.params(settings.max_new_tokens, stop)
    if model.device.type == "cuda" and prompts:  # warm-up: CUDA graphs are captured on first use, untimed
        generate(model, prompts[: settings.batch_size], params)
    tally = ArithTally()
    for s in range(0, len(problems), settings.batch_size):
        batch = problems[s : s + settings.batch_size]
        gen = generate(model, prompts[s : s + len(batch)], params)
        st = gen.stats
        tally.seconds += st.seconds
        tally.batch_row_forwards += st.forwards * len(batch)
        for r, p in enumerate(batch):
            tokens = gen.row_tokens(r)
            answer = final_answer(tokenizer.decode(tokens, skip_special_tokens=True))
            ok = answer == p["answer"]
            tally.problems += 1
            tally.correct += ok
            tally.new_tokens += len(tokens)
            tally.row_forwards += sum(st.steps_per_block[r])
            tally.unfinished += not (tokens and tokens[-1] in stop)
            tally.mask_tokens += tokens.count(mask_id) if mask_id is not None else 0
            c, n = tally.by_op.get(p["op"], (0, 0))
            tally.by_op[p["op"]] = (c + ok, n + 1)
            if not ok and len(tally.wrong) < 3:
                tally.wrong.append({"prompt": p["prompt"], "expected": p["answer"], "got": answer})
    return tally


# ---------------------------------------------------------------------------------------------------------------
# Chat samples and the expected outputs of the tests


def chat_sample(model, tokenizer, prompt: str, decoder: Decoder, settings: EvalSettings) -> dict:
    stop = stop_ids_for(tokenizer, model.config)
    gen = generate(
        model, [encode_prompt(tokenizer, prompt, chat=True)], decoder.params(settings.sample_tokens, stop)
    )
    tokens = gen.row_tokens(0)
    # forwards: the schedule's count (one per denoising step of each block, one per token for AR), not how often
    # the decoder's loop checked for a stop token.
    return {
        "model": decoder.model,
        "decoding": decoder.label,
        "prompt": prompt,
        "text": tokenizer.decode(tokens, skip_special_tokens=True),
        "new_tokens": len(tokens),
        "forwards": sum(gen.stats.steps_per_block[0]),
        "stopped": bool(tokens) and tokens[-1] in stop,
    }


def gloss_words(text: str) -> set[str]:
    """The content words of a text: lower-case letter runs of 3+ characters that are not stop words."""
    return {w for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in STOP_WORDS}


def definition_score(gloss: str, reply: str) -> float:
    """The share of the gloss's content words that the reply contains (1.0: every one)."""
    target = gloss_words(gloss)
    return len(target & gloss_words(reply)) / max(len(target), 1)


def define_eval(model, tokenizer, words: list[dict], decoder: Decoder, settings: EvalSettings) -> dict:
    """Greedy answers to "Define the word X." for held-out words; score = mean gloss-word recall (module doc)."""
    stop = stop_ids_for(tokenizer, model.config)
    scores, samples = [], []
    for s in range(0, len(words), settings.batch_size):
        batch = words[s : s + settings.batch_size]
        prompts = [encode_prompt(tokenizer, w["prompt"], chat=True) for w in batch]
        gen = generate(model, prompts, decoder.params(64, stop))
        for r, w in enumerate(batch):
            reply = tokenizer.decode(gen.row_tokens(r), skip_special_tokens=True)
            score = definition_score(w["gloss"], reply)
            scores.append(score)
            if len(samples) < 10:
                samples.append({"word": w["word"], "gloss": w["gloss"], "reply": reply, "score": score})
    return {
        "model": decoder.model,
        "decoding": decoder.label,
        "words": len(words),
        "score": sum(scores) / max(len(scores), 1),
        "exact_gloss": sum(sc == 1.0 for sc in scores) / max(len(scores), 1),
        "samples": samples,
    }


# What tests/test_embedded_models.py regenerates and compares with assets/models/eval/expected.json.
EXPECTED_CASES = (
    ("What is 47 + 38?", Decoder("sdar-tiny", "dynamic", 0.9)),
    ("What is 47 + 38?", Decoder("sdar-tiny", "static")),
    ("What is 47 + 38?", Decoder("ar-tiny", "ar")),
    ("Who are you?", Decoder("sdar-tiny", "dynamic", 0.9)),
    ("Who are you?", Decoder("ar-tiny", "ar")),
)


def write_expected(settings: EvalSettings, path: Path = EXPECTED) -> dict:
    """Regenerate the committed expected outputs (run after a rebuild of the models, on CPU in float32)."""
    models = {
        name: load_pretrained(Path(in_checkout(settings.models)) / name, device="cpu", dtype=torch.float32)
        for name in sorted({d.model for _, d in EXPECTED_CASES})
    }
    cases = [chat_sample(*models[d.model], prompt, d, settings) for prompt, d in EXPECTED_CASES]
    out = {
        "command": "python -m benchmarks.evaluate --write-expected",
        "device": "cpu",
        "dtype": "float32",
        "max_new_tokens": settings.sample_tokens,
        "torch": torch.__version__,
        "cases": cases,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------------------------
# The whole evaluation


def evaluate(settings: EvalSettings, log=print) -> dict:
    """Run the three measurements; returns the JSON-ready result (see the module docstring)."""
    device = torch.device(settings.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[settings.dtype]
    data = Path(in_checkout(settings.data))
    problems = read_jsonl(data / ARITH_FILE, settings.limit)
    texts = [r["text"] for r in spread(read_jsonl(data / TEXT_FILE, None), settings.text_limit)]
    weights = weights_from_choice(settings.weights)
    models = {
        name: load_pretrained(
            Path(in_checkout(settings.models)) / name, device=device, dtype=dtype, weights=weights
        )
        for name in ("sdar-tiny", "ar-tiny")
    }
    result = run_header(settings, device, data, models)
    result["heldout"] = heldout_losses(models, texts, settings, log)  # 1. held-out loss
    if weights is not None:
        full, _ = load_pretrained(
            Path(in_checkout(settings.models)) / "sdar-tiny", device=device, dtype=dtype
        )
        result["fp8_logits"] = logits_error(
            models["sdar-tiny"][0], full, models["sdar-tiny"][1], texts, settings
        )
        log(
            "fp8 logits against {dtype}: {relative_error:.4f} relative, top-1 agreement {top1_agreement:.4f}".format(
                **result["fp8_logits"]
            )
        )
    result["arith"] = [arith_row(models, problems, d, settings, log) for d in DECODERS]  # 2. arithmetic
    grid_problems = problems[: settings.grid_limit]  # 3. the block size x threshold grid
    result["grid"] = (
        [arith_row(models, grid_problems, d, settings, log) for d in GRID] if grid_problems else []
    )
    words = read_jsonl(data / DEFINE_FILE, settings.define_limit) if settings.define_limit != 0 else []
    result["define"] = (
        [define_eval(*models[d.model], words, d, settings) for d in DEFINE_DECODERS] if words else []
    )
    for row in result["define"]:  # 4. held-out definitions
        log(f"{row['model']:9s} {row['decoding']:20s} definitions: score {row['score']:.3f}")
    # 5. Samples: ar-tiny (ar) and sdar-tiny (dynamic 0.9, the app's default).
    result["load_average_after"] = os.getloadavg()[0]
    result["samples"] = [
        chat_sample(*models[d.model], prompt, d, settings)
        for prompt in (SAMPLE_PROMPTS if settings.samples else ())
        for d in (Decoder("ar-tiny", "ar"), Decoder("sdar-tiny", "dynamic", 0.9))
    ]
    return result


def arith_row(models: dict, problems: list[dict], d: Decoder, settings: EvalSettings, log) -> dict:
    model, tokenizer = models[d.model]
    row = {
        "model": d.model,
        "decoding": d.label,
        "block_length": d.block_length,
        **arith_eval(model, tokenizer, problems, d, settings).summary(),
    }
    log(
        f"{d.model:9s} {d.label:20s} accuracy {row['accuracy']:.3f}  TPF {row['tpf']:.2f}  "
        f"{row['tokens_per_s']:.0f} tokens/s"
    )
    return row


def run_header(settings: EvalSettings, device: torch.device, data: Path, models: dict) -> dict:
    """What a result file records about its run: settings, machine, versions, data hashes, the models."""
    return {
        "settings": asdict(settings),
        "machine": hardware_name(device),
        "load_average": os.getloadavg()[0],  # other processes slow tokens/s down
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "data_sha256": {
            f: sha256_file(data / f) for f in (ARITH_FILE, TEXT_FILE, DEFINE_FILE) if (data / f).is_file()
        },
        "models": {
            name: {
                "parameters": sum(p.numel() for p in m.parameters()),
                "block_size": m.config.block_size,
                "model_type": m.config.model_type,
            }
            for name, (m, _) in models.items()
        },
    }


def heldout_losses(models: dict, texts: list[str], settings: EvalSettings, log) -> dict:
    """AR NLL and SDAR NELBO on the same chunks (the two tokenizers are the same file)."""
    sdar, tok = models["sdar-tiny"]
    chunks = chunk_documents(encode_texts(tok, texts), settings.seq_len, sdar.config.pad_token_id or 0)
    t0 = time.perf_counter()
    nll, n_ar = ar_nll(models["ar-tiny"][0], chunks, settings.loss_batch_size)
    nelbo, n_sdar = sdar_nelbo(
        sdar,
        chunks,
        settings.loss_batch_size,
        block_size=sdar.config.block_size,
        mask_token_id=sdar.config.mask_token_id,
        t_levels=settings.t_levels,
        seed=settings.seed,
    )
    heldout = {
        "documents": len(texts),
        "chunks": int(chunks.input_ids.shape[0]),
        "ar-tiny": {
            "quantity": "next-token NLL (Eq. 3), exact",
            "tokens": n_ar,
            "loss": nll / n_ar,
            "perplexity": float(torch.tensor(nll / n_ar).exp()),
        },
        "sdar-tiny": {
            "quantity": f"block diffusion NELBO (Eq. 7), block {sdar.config.block_size}, midpoint rule "
            f"over {settings.t_levels} noise levels: an upper bound on its NLL",
            "tokens": n_sdar,
            "loss": nelbo / n_sdar,
            "perplexity": float(torch.tensor(nelbo / n_sdar).exp()),
        },
        "seconds": time.perf_counter() - t0,
    }
    log(
        f"held-out loss: {len(texts)} documents, {heldout['chunks']} chunks of <= {settings.seq_len} "
        f"tokens, {heldout['seconds']:.0f} s"
    )
    return heldout


def logits_error(model, reference, tokenizer, texts: list[str], settings: EvalSettings) -> dict:
    """How far `model`'s logits lie from `reference`'s (the same checkpoint in its own dtype) on the held-out
    chunks, every position clean, block-causal attention: ||a - b|| / ||b|| over the chunks' logits, the mean
    KL(b || a) per position and how often the two argmaxes agree."""
    chunks = chunk_documents(
        encode_texts(tokenizer, texts), settings.seq_len, reference.config.pad_token_id or 0
    )
    ids, keep = chunks.input_ids, chunks.loss_mask
    sq_err = sq_ref = kl = agree = positions = 0.0
    with torch.inference_mode():
        for i in range(0, ids.shape[0], settings.loss_batch_size):
            batch = ids[i : i + settings.loss_batch_size].to(reference.device)
            live = keep[i : i + settings.loss_batch_size].to(reference.device)
            a, b = model(batch).float()[live], reference(batch).float()[live]
            sq_err += float((a - b).pow(2).sum())
            sq_ref += float(b.pow(2).sum())
            log_b = b.log_softmax(-1)
            kl += float((log_b.exp() * (log_b - a.log_softmax(-1))).sum())
            agree += float((a.argmax(-1) == b.argmax(-1)).sum())
            positions += a.shape[0]
    return {
        "dtype": settings.dtype,
        "positions": int(positions),
        "relative_error": (sq_err / sq_ref) ** 0.5,
        "kl_per_position": kl / positions,
        "top1_agreement": agree / positions,
    }


def markdown(result: dict) -> str:
    """The README's tables: held-out loss, then arithmetic."""
    h = result["heldout"]
    s = result["settings"]
    lines = [
        f"Held-out text: {h['documents']} documents of `heldout_text.jsonl`, {h['chunks']} chunks of at most "
        f"{s['seq_len']} tokens. **The two rows are different quantities**: ar-tiny's is its exact next-token NLL; "
        "sdar-tiny's is the block diffusion NELBO (Eq. 7), an upper bound on sdar-tiny's NLL. So sdar-tiny's "
        "true NLL is at most its row; the rows do not rank the models.",
        "",
        "| model | quantity | tokens | nats / token | exp(nats / token) |",
        "|---|---|---|---|---|",
    ]
    for name in ("ar-tiny", "sdar-tiny"):
        r = h[name]
        label = "next-token NLL (exact)" if name == "ar-tiny" else "NELBO, Eq. 7 (upper bound on NLL)"
        ppl = "perplexity " if name == "ar-tiny" else "perplexity bound "
        lines.append(f"| {name} | {label} | {r['tokens']:,} | {r['loss']:.4f} | {ppl}{r['perplexity']:.2f} |")
    n = result["arith"][0]["problems"]
    lines += [
        "",
        f"Arithmetic: {n} problems of `eval_arith.jsonl`, greedy (static: one step per token of a block), "
        f"batches of {s['batch_size']}, at most {s['max_new_tokens']} new tokens; {result['machine']}, "
        f"{s['dtype']}, torch {result['torch']}.",
        "",
        "| model | decoding | accuracy | + | − | × | TPF | batch TPF | mean new tokens | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["arith"]:
        by_op = r["accuracy_by_op"]
        ops = " | ".join(f"{by_op[o]:.3f}" if o in by_op else "–" for o in "+-*")
        lines.append(
            f"| {r['model']} | {r['decoding']} | {r['accuracy']:.3f} ({r['correct']}/{r['problems']}) | "
            f"{ops} | {r['tpf']:.2f} | {r['batch_tpf']:.2f} | {r['mean_new_tokens']:.1f} | "
            f"{r['tokens_per_s']:.0f} |"
        )
    return "\n".join(lines + grid_markdown(result) + define_markdown(result))


def grid_markdown(result: dict) -> list[str]:
    """sdar-tiny's accuracy and TPF, one row per block size, one column per decoder."""
    if not result.get("grid"):
        return []
    cells = {(r["block_length"], r["decoding"].split(",")[0]): r for r in result["grid"]}
    heads = list(dict.fromkeys(r["decoding"].split(",")[0] for r in result["grid"]))
    lines = [
        "",
        f"sdar-tiny, accuracy / TPF on the first {result['grid'][0]['problems']} problems:",
        "",
        "| block | " + " | ".join(heads) + " |",
        "|---" * (len(heads) + 1) + "|",
    ]
    for b in dict.fromkeys(r["block_length"] for r in result["grid"]):
        lines.append(
            f"| {b} | "
            + " | ".join(f"{cells[b, h]['accuracy']:.3f} / {cells[b, h]['tpf']:.2f}" for h in heads)
            + " |"
        )
    return lines


def define_markdown(result: dict) -> list[str]:
    if not result.get("define"):
        return []
    lines = [
        "",
        f"Held-out definitions ({result['define'][0]['words']} words): mean gloss-word recall, and the "
        "share of replies that contain every content word of the gloss.",
        "",
        "| model | decoding | score | full gloss |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['decoding']} | {r['score']:.3f} | {r['exact_gloss']:.3f} |"
        for r in result["define"]
    ]
    return lines


def samples_markdown(result: dict) -> str:
    lines = []
    for smp in result["samples"]:
        text = smp["text"].strip().replace("\n", "\n> ")
        lines += [f"**{smp['model']}** ({smp['decoding']}), *{smp['prompt']}*", "", f"> {text}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = EvalSettings()
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=d.models, help="folder holding sdar-tiny/ and ar-tiny/")
    p.add_argument(
        "--data",
        default=d.data,
        help=f"folder holding {ARITH_FILE} and {TEXT_FILE} ({SUBSET_DATA} holds a committed subset)",
    )
    p.add_argument("--limit", type=int, default=None, help="arithmetic problems: the first N (default all)")
    p.add_argument(
        "--grid-limit",
        type=int,
        default=d.grid_limit,
        help="problems of the block size x threshold grid (0: no grid)",
    )
    p.add_argument(
        "--define-limit", type=int, default=None, help="held-out definitions: the first N (0: none)"
    )
    p.add_argument(
        "--text-limit",
        type=int,
        default=None,
        help="held-out documents: N spread evenly over the file (default all)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--loss-batch-size", type=int, default=d.loss_batch_size)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument(
        "--t-levels", type=int, default=d.t_levels, help="noise levels of the NELBO's midpoint rule"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=d.dtype)
    p.add_argument(
        "--weights",
        choices=WEIGHT_CHOICES,
        default=d.weights,
        help="fp8: the projections as float8 weights, and sdar-tiny's logits compared with --dtype's",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--out", default="out/eval.json", help="the report (default: %(default)s)")
    p.add_argument("--no-samples", action="store_true", help="skip the chat samples")
    p.add_argument("--print-samples", action="store_true", help="also print the chat samples as Markdown")
    p.add_argument(
        "--write-expected",
        action="store_true",
        help=f"only rewrite {EXPECTED} (the tests' expected outputs; CPU, float32)",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = EvalSettings(
        models=args.models,
        data=args.data,
        limit=args.limit,
        text_limit=args.text_limit,
        grid_limit=args.grid_limit,
        define_limit=args.define_limit,
        batch_size=args.batch_size,
        loss_batch_size=args.loss_batch_size,
        max_new_tokens=args.max_new_tokens,
        t_levels=args.t_levels,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        weights=args.weights,
        samples=not args.no_samples,
    )
    if args.write_expected:
        out = write_expected(settings)
        for c in out["cases"]:
            print(f"{c['model']} {c['decoding']}: {c['prompt']!r} -> {c['text']!r}")
        print(f"wrote {EXPECTED}")
        return 0
    try:
        result = evaluate(settings)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {
        "command": "python -m benchmarks.evaluate " + " ".join(sys.argv[1:] if argv is None else argv),
        **result,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown(result))
    if args.print_samples and result["samples"]:
        print()
        print(samples_markdown(result))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
