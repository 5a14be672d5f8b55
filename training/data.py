"""Training data: read text and chat files, tokenize, pack into fixed-length rows with per-sample boundaries.

Text (pretraining, CPT): `.txt` (one document per file), `.jsonl` / `.json` records with a "text" field. Each
document ends with `<|endoftext|>`; documents are concatenated and cut into rows of seq_len tokens (a document cut
at a row end continues as a new segment of the next row), so no token is padding.

Chat (SFT): `.jsonl` / `.json` records {"messages": [{"role", "content"}, ...]} or alpaca {"instruction", "input",
"output"}, rendered with the tokenizer's chat template. Response-only training (paper §3.1, "response-only corruption
strategy"): only the assistant turns are trained; the prompt -- everything up to and including the assistant header
`<|im_start|>assistant\n` -- is a fixed condition, never masked and never a target. Conversations are packed whole
(a conversation longer than seq_len is truncated) and rows are padded.

Every row carries segment ids and position ids that restart at 0 per sample (see objective.PackedBatch).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from sdar_core.prompting import END_OF_TEXT

from .objective import PackedBatch
from .recipe import BUILTIN_TEXT, RecipeError

TINY_TEXT = Path(__file__).parent / "recipes" / "tiny-corpus.txt"
CACHE_VERSION = 1


class DataError(ValueError):
    """A data file we cannot read, with the file and the reason."""


# ---------------------------------------------------------------------------------------------------------------
# Reading files


def _records(path: Path) -> list:
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n} is not valid JSON ({e})") from None
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _as_messages(record: dict, where: str) -> list[dict]:
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in msgs
        ):
            raise DataError(f"{where}: 'messages' must be a list of {{'role', 'content'}}")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if "instruction" in record and "output" in record:  # alpaca
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        return system + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": record["output"]},
        ]
    raise DataError(
        f"{where}: a chat record needs 'messages' or alpaca 'instruction'/'output'; keys are {sorted(record)}"
    )


def read_documents(path: str, data_format: str = "auto", max_docs: int | None = None) -> tuple[str, list]:
    """("text", [str]) or ("chat", [messages]) from one file; the format is detected from the first record."""
    if path == BUILTIN_TEXT:
        return "text", [TINY_TEXT.read_text(encoding="utf-8")]
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"data file {path!r} does not exist")
    if p.suffix not in (".txt", ".jsonl", ".json"):
        raise DataError(f"{path}: unsupported file type {p.suffix!r} (use .txt, .jsonl or .json)")
    if p.suffix == ".txt":
        if data_format == "chat":
            raise DataError(f"{path}: a .txt file holds text, not chat data")
        return "text", [p.read_text(encoding="utf-8")]
    records = _records(p)[:max_docs]
    if not records:
        raise DataError(f"{path} holds no records")
    first = records[0]
    if not isinstance(first, dict):
        raise DataError(f"{path}: records must be JSON objects, got {type(first).__name__}")
    kind = data_format if data_format != "auto" else ("text" if "text" in first else "chat")
    if kind == "text":
        if any(not isinstance(r, dict) or not isinstance(r.get("text"), str) for r in records):
            raise DataError(f"{path}: every text record needs a string 'text' field")
        return "text", [r["text"] for r in records]
    return "chat", [_as_messages(r, f"{path} record {i}") for i, r in enumerate(records)]


# ---------------------------------------------------------------------------------------------------------------
# Tokenizing


def separator_id(tokenizer) -> int | None:
    """The document separator: <|endoftext|> when the vocabulary has it, else the eos token."""
    tid = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
        return tid
    return tokenizer.eos_token_id


def encode_texts(tokenizer, texts: list[str], chunk: int = 1000) -> list[list[int]]:
    """Token ids of each document, followed by the separator."""
    sep = separator_id(tokenizer)
    out = []
    for i in range(0, len(texts), chunk):
        for ids in tokenizer(texts[i : i + chunk], add_special_tokens=False)["input_ids"]:
            out.append(list(ids) + ([sep] if sep is not None else []))
    return out


def _render(tokenizer, messages, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns to train.

    A turn's span runs from the end of the prompt rendered with the generation prompt (the assistant header) to the
    end of the conversation rendered through that turn. Templates that rewrite earlier turns (Qwen3 drops old
    reasoning) are not prefix-consistent; then only the last assistant turn is trained."""
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        if full.startswith(through) and through.startswith(prompt):
            spans.append((len(prompt), len(through)))
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is not None and not spans:
        prompt = _render(tokenizer, messages[:last], generation_prompt=True)
        full = _render(tokenizer, messages[: last + 1])
        if not full.startswith(prompt):
            raise DataError(
                "the chat template renders the prompt differently from the conversation; "
                "cannot find the assistant response"
            )
        spans.append((len(prompt), len(full)))
    return full, spans


def encode_chats(
    tokenizer, conversations: list[list[dict]], response_only: bool = True, chunk: int = 500
) -> list[tuple[list[int], list[bool]]]:
    """(ids, trained) per conversation: trained marks assistant-turn tokens (every token if not response_only)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("chat data needs a tokenizer with a chat template")
    out = []
    for i in range(0, len(conversations), chunk):
        rendered = [chat_spans(tokenizer, msgs) for msgs in conversations[i : i + chunk]]
        enc = tokenizer([r[0] for r in rendered], add_special_tokens=False, return_offsets_mapping=True)
        for (_text, spans), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
            if response_only:
                trained = [any(a <= start < b for a, b in spans) for start, _ in offsets]
            else:
                trained = [True] * len(ids)
            out.append((list(ids), trained))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Packing


@dataclass
class PackedRows(PackedBatch):
    """All rows of a data set: the fields of a PackedBatch as [N, T] tensors (int32 on disk and in memory, the loss
    mask bool; `batch` makes the int64 batch a forward takes)."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, rows: list[int] | torch.Tensor) -> PackedBatch:
        ids, segments, positions, loss_mask = self.select(torch.as_tensor(rows, dtype=torch.long)).tensors()
        return PackedBatch(ids.long(), segments.long(), positions.long(), loss_mask.bool())

    def select(self, rows: torch.Tensor) -> PackedRows:
        return self.map(lambda t: t[rows])

    def state(self) -> dict:
        return {f.name: t for f, t in zip(fields(self), self.tensors())}


def _segments_and_positions(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From a [N, T] bool array of segment starts: segment ids (0, 1, ...) and positions restarting at each start."""
    starts = starts.copy()
    starts[:, 0] = True
    seg = np.cumsum(starts, axis=1) - 1
    idx = np.arange(starts.shape[1])[None, :]
    last_start = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
    return seg, idx - last_start


def pack_stream(docs: list[list[int]], seq_len: int, pad_id: int) -> PackedRows:
    """Concatenate documents and cut rows of seq_len (the last partial row is dropped unless it is the only one)."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    stream = np.fromiter((t for d in docs for t in d), dtype=np.int64, count=int(lengths.sum()))
    starts = np.zeros(len(stream), dtype=bool)
    starts[np.concatenate([[0], np.cumsum(lengths)[:-1]])[lengths > 0]] = True
    n_rows = len(stream) // seq_len
    loss = np.ones(len(stream), dtype=bool)
    if n_rows == 0:  # a tiny data set: one padded row
        pad = seq_len - len(stream)
        stream = np.concatenate([stream, np.full(pad, pad_id)])
        starts = np.concatenate([starts, [True], np.zeros(pad - 1, dtype=bool)]) if pad else starts
        loss = np.concatenate([loss, np.zeros(pad, dtype=bool)])
        n_rows = 1
    shape = (n_rows, seq_len)
    ids = stream[: n_rows * seq_len].reshape(shape)
    seg, pos = _segments_and_positions(starts[: n_rows * seq_len].reshape(shape))
    return PackedRows(
        *(torch.from_numpy(np.ascontiguousarray(a)).to(torch.int32) for a in (ids, seg, pos)),
        torch.from_numpy(loss[: n_rows * seq_len].reshape(shape).copy()),
    )


def pack_examples(
    examples: list[tuple[list[int], list[bool]]], seq_len: int, pad_id: int
) -> tuple[PackedRows, int]:
    """Greedy packing of whole examples in order; a row that cannot take the next example is padded (padding is a
    segment of its own, never trained). Returns the rows and the number of examples truncated to seq_len."""
    rows_ids, rows_loss, rows_starts = [], [], []
    ids, loss, starts = [], [], []
    truncated = 0

    def close_row():
        pad = seq_len - len(ids)
        rows_ids.append(ids + [pad_id] * pad)
        rows_loss.append(loss + [False] * pad)
        rows_starts.append(starts + ([True] + [False] * (pad - 1) if pad else []))

    for ex_ids, ex_trained in examples:
        if len(ex_ids) > seq_len:
            ex_ids, ex_trained, truncated = ex_ids[:seq_len], ex_trained[:seq_len], truncated + 1
        if not any(ex_trained):
            continue  # nothing to learn (e.g. the response was truncated away)
        if len(ids) + len(ex_ids) > seq_len:
            close_row()
            ids, loss, starts = [], [], []
        ids += ex_ids
        loss += list(ex_trained)
        starts += [True] + [False] * (len(ex_ids) - 1)
    if ids:
        close_row()
    if not rows_ids:
        raise DataError("no example has a trainable token")
    seg, pos = _segments_and_positions(np.array(rows_starts, dtype=bool))
    rows = PackedRows(
        torch.tensor(rows_ids, dtype=torch.int32),
        torch.from_numpy(seg).to(torch.int32),
        torch.from_numpy(pos).to(torch.int32),
        torch.tensor(rows_loss, dtype=torch.bool),
    )
    return rows, truncated


def concat_rows(parts: list[PackedRows]) -> PackedRows:
    return PackedRows(*(torch.cat(column) for column in zip(*(p.tensors() for p in parts))))


def build_rows(
    files: list[str],
    tokenizer,
    seq_len: int,
    *,
    data_format: str = "auto",
    response_only: bool = True,
    max_docs: int | None = None,
    log=print,
) -> PackedRows:
    """Read, tokenize and pack every file (text files pack as a stream, chat files as whole conversations)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (separator_id(tokenizer) or 0)
    texts, chats = [], []
    for path in files:
        kind, docs = read_documents(path, data_format, max_docs)
        (texts if kind == "text" else chats).extend(docs)
        log(f"data: {path}: {len(docs)} {kind} documents")
    parts = []
    if texts:
        parts.append(pack_stream(encode_texts(tokenizer, texts), seq_len, pad_id))
    if chats:
        rows, truncated = pack_examples(encode_chats(tokenizer, chats, response_only), seq_len, pad_id)
        if truncated:
            log(
                f"data: {truncated} of {len(chats)} conversations were longer than seq_len {seq_len} and truncated"
            )
        parts.append(rows)
    return concat_rows(parts)


def cache_key(files: list[str], tokenizer, **settings) -> str:
    """A hash of the inputs of build_rows: file identities, the tokenizer's vocabulary and template, settings."""
    ident = []
    for f in files:
        p = TINY_TEXT if f == BUILTIN_TEXT else Path(f)
        st = p.stat()
        ident.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    blob = json.dumps(
        [CACHE_VERSION, ident, vocab, getattr(tokenizer, "chat_template", None) or "", settings],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_build_rows(
    files: list[str], tokenizer, seq_len: int, cache_dir: Path | None, log=print, **settings
) -> PackedRows:
    """build_rows, cached as a tensor file in cache_dir (tokenizing a large corpus takes a while)."""
    if cache_dir is None:
        return build_rows(files, tokenizer, seq_len, log=log, **settings)
    path = Path(cache_dir) / f"rows-{cache_key(files, tokenizer, seq_len=seq_len, **settings)}.pt"
    if path.is_file():
        return PackedRows(**torch.load(path, weights_only=True))
    rows = build_rows(files, tokenizer, seq_len, log=log, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(rows.state(), tmp)
    tmp.replace(path)
    return rows


def split_eval(rows: PackedRows, fraction: float, seed: int) -> tuple[PackedRows, PackedRows | None]:
    """(train, eval): a seeded random `fraction` of the rows held out (at least one row, when there are two)."""
    n_eval = min(math.ceil(len(rows) * fraction), len(rows) - 1) if fraction > 0 else 0
    if n_eval <= 0:
        return rows, None
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    return rows.select(perm[n_eval:]), rows.select(perm[:n_eval])


class RowOrder:
    """The order rows are visited in: a fresh seeded permutation per epoch. Sample number i (counted over the whole
    run, all processes) is a pure function of (i, seed), so the data position of a run is just its step."""

    def __init__(self, n_rows: int, seed: int) -> None:
        self.n, self.seed = n_rows, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {
                epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            }
        return self._perms[epoch]

    def rows(self, start: int, count: int) -> list[int]:
        return [int(self._perm(i // self.n)[i % self.n]) for i in range(start, start + count)]


class MixedOrder:
    """The order rows are visited in when the training files have sampling weights (recipe `data_weights`).

    `sizes` are the row counts of the files, whose rows lie back to back in that order. Samples come in chunks of
    CHUNK: each chunk draws from file f exactly its quota (weight share of CHUNK, largest remainders), in a seeded
    shuffled order, and file f's visits walk its own RowOrder. So sample i is still a pure function of (i, seed),
    and a small file is repeated (a large one subsampled) to its weight."""

    CHUNK = 1000

    def __init__(self, sizes: list[int], weights: list[float], seed: int) -> None:
        total = sum(weights)
        exact = [w / total * self.CHUNK for w in weights]
        quota = [int(e) for e in exact]
        by_remainder = sorted(range(len(exact)), key=lambda f: quota[f] - exact[f])
        for f in by_remainder[: self.CHUNK - sum(quota)]:
            quota[f] += 1
        self.quota, self.seed = quota, seed
        self.offsets = [sum(sizes[:f]) for f in range(len(sizes))]
        self.orders = [RowOrder(n, seed + 7919 * f) if n else None for f, n in enumerate(sizes)]
        self._chunk: tuple[int, list[tuple[int, int]]] | None = None

    def _assignment(self, chunk: int) -> list[tuple[int, int]]:
        """(file, visit number within the file) of each sample of a chunk."""
        if self._chunk is None or self._chunk[0] != chunk:
            files = [f for f, q in enumerate(self.quota) for _ in range(q)]
            perm = torch.randperm(
                len(files), generator=torch.Generator().manual_seed(self.seed * 100_003 + chunk)
            )
            seen = [0] * len(self.quota)
            out = []
            for j in perm.tolist():
                f = files[j]
                out.append((f, chunk * self.quota[f] + seen[f]))
                seen[f] += 1
            self._chunk = (chunk, out)
        return self._chunk[1]

    def rows(self, start: int, count: int) -> list[int]:
        out = []
        for i in range(start, start + count):
            f, visit = self._assignment(i // self.CHUNK)[i % self.CHUNK]
            out.append(self.offsets[f] + self.orders[f].rows(visit, 1)[0])
        return out
