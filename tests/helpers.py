"""What the tests share besides fixtures (conftest.py holds those): tiny models in the real checkpoint format,
independent references, the Triton interpreter, and the app tests' checkpoints and tokenizer. Imported as a module
(`from helpers import tiny_config`): tests/ is on the path."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

import torch

from sdar_core.config import ModelConfig
from sdar_core.loading import save_pretrained
from sdar_core.model import SDARForCausalLM
from sdar_core.paths import REPO
from training.tokenizer import SPECIAL_TOKENS

FIXTURES = Path(__file__).parent / "fixtures"


def tiny_config(
    model_type: str = "sdar",
    *,
    block_size: int = 4,
    vocab_size: int = 96,
    layers: int = 2,
    mask_token_id: int | None = None,
    **overrides,
) -> ModelConfig:
    """A shrunk Qwen3/SDAR config: 2 layers, GQA 4/2 heads of 16, vocab 96 (the last id is the mask)."""
    fields = dict(
        model_type=model_type,
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=10000.0,
        max_position_embeddings=512,
        block_size=1 if model_type.startswith("qwen3") else block_size,
        mask_token_id=(vocab_size - 1 if mask_token_id is None else mask_token_id)
        if model_type.startswith("sdar")
        else None,
        eos_token_id=1,
    )
    if "moe" in model_type:
        fields.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)
    fields.update(overrides)
    return ModelConfig(**fields)


def random_model(
    config: ModelConfig, seed: int = 0, std: float = 0.5, proj_std: float = 0.2
) -> SDARForCausalLM:
    """A model with random weights large enough that logits are far from uniform (clear argmax) and
    that its greedy outputs vary from position to position (confidences spread over (0, 1))."""
    torch.manual_seed(seed)
    model = SDARForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, std if "embed" in name or "lm_head" in name else proj_std)
    return model.eval()


def interpreter_reason() -> str | None:
    """Why Triton's interpreter (TRITON_INTERPRET=1: the kernels run on CPU tensors) cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return "needs triton (its interpreter runs the kernels on the CPU): pip install 'triton>=3.7'"
    from importlib.metadata import version

    import numpy

    def release(text: str) -> tuple[int, int]:
        return tuple(int(v) for v in text.split(".")[:2])

    # Before 3.7 the interpreter read loaded scalars with int() of 1-element arrays, which numpy 2.3 refuses;
    # 3.7.1, 3.8.0 and 3.9.0 ran these tests with numpy 2.4.
    triton = version("triton")
    if release(triton) < (3, 7) and release(numpy.__version__) >= (2, 3):
        return (
            f"Triton {triton}'s interpreter needs numpy < 2.3 (numpy {numpy.__version__} is installed); "
            "Triton 3.7 or newer runs it with any numpy"
        )
    return None


def run_interpreted(script: str, *args: str, timeout: int = 600) -> str:
    """Run `script` under Triton's interpreter in a fresh process (the flag is read at import) with tests/ and the
    repository importable; its last line of output."""
    import os
    import subprocess
    import sys

    tests = Path(__file__).parent
    env = dict(
        os.environ,
        TRITON_INTERPRET="1",
        PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def hand_block_causal(length: int, block_size: int) -> torch.Tensor:
    """[length, length]: query i sees key j iff j's block <= i's block (built with loops, independent of sdar_core)."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(length):
            allowed[i, j] = (j // block_size) <= (i // block_size)
    return allowed


class FoldMath:
    """The norm and add folds' kernels stood in by their math, for the model's dataflow on the CPU: a GEMM that adds
    into the residual stream returns the sum and its sums of squares per `tile` columns (float64); one that reads a
    gemm.Normed normalises its x from those sums alone; the MoE gemv form with a Norm and a residual does both around
    the looped experts (its sums per `expert_tile` columns), and the router's product routed in one kernel is that
    product routed. `calls` counts each."""

    def __init__(self, tile: int = 16, expert_tile: int = 2) -> None:
        self.tile, self.expert_tile = tile, expert_tile
        self.calls = {"add": 0, "normed": 0, "experts": 0, "route": 0}

    @staticmethod
    def squares(total: torch.Tensor, tile: int) -> torch.Tensor:
        t = torch.nn.functional.pad(total.double(), (0, -total.shape[-1] % tile)).unflatten(-1, (-1, tile))
        return t.pow(2).sum(-1).float()

    @staticmethod
    def normalised(x: torch.Tensor, squares: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        mean_square = squares.double().sum(-1, keepdim=True) / x.shape[-1]
        return (x.double() * torch.rsqrt(mean_square + eps) * weight.double()).to(x.dtype)

    def add_linear(self, inp, weight, residual, swiglu=False):
        self.calls["add"] += 1
        total = residual + torch.nn.functional.linear(inp, weight)
        return total, self.squares(total, self.tile)

    def normed_linear(self, x, weight):
        self.calls["normed"] += 1
        return torch.nn.functional.linear(self.normalised(x.x, x.squares, x.norm.weight, x.norm.eps), weight)

    def gate_route(self, x, weight, top_k, norm_topk_prob):
        """moe.gate_route's math: the router's normalised product, routed by the eager ops."""
        from sdar_core.moe import route

        self.calls["route"] += 1
        logits = torch.nn.functional.linear(
            self.normalised(x.x, x.squares, x.norm.weight, x.norm.eps), weight
        )
        return route(logits.reshape(1, -1), top_k, norm_topk_prob, x.x.dtype, fuse=False)

    def gemv_forward(self, experts, x, chosen, weights, config=None, norm=None, residual=None):
        """moe.Experts.gemv_forward's math (`experts` the module)."""
        self.calls["experts"] += 1
        if norm is not None:
            x = self.normalised(x, norm.squares, norm.weight, norm.eps)
        out = experts.looped_forward(x, chosen, weights, fuse=False)
        if residual is None:
            return out
        total = residual + out
        return total, self.squares(total, self.expert_tile)


HOPPER = (90, 32)  # (compute capability, warp size) the kernels are built for by `compile_for_hopper`
POINTER_TYPES = {
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
    torch.float32: "*fp32",
    torch.int64: "*i64",
    torch.int32: "*i32",
    torch.bool: "*i1",
    torch.float8_e4m3fn: "*fp8e4nv",
}


def hopper_compiler_reason() -> str | None:
    """Why Triton cannot build kernels for Hopper here (it needs Triton with its CUDA backend and ptxas, no GPU)."""
    reason = interpreter_reason()
    if reason is not None:
        return reason
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as e:  # a Triton without its CUDA backend
        return f"Triton's CUDA backend does not import: {e}"
    return None


def compile_for_hopper(run) -> list[dict]:
    """Call `run`, a function that launches sdar_core's Triton kernels (on CPU tensors, of the dtypes a GPU run
    gives them), with every launch built for Hopper (sm_90, through ptxas: no GPU needed) instead of run: each
    launch's tensors become pointers of their dtype, its numbers i32 / i64 / fp32, its constexprs and launch options
    (warps, stages, PDL) as given. What the compiler raises, this raises. -> one {name, shared, constants, ptx} per
    launch: the kernel's name, the shared memory its build asks (bytes), its constexprs, its PTX, its registers a
    thread (ptxas's count, read from the cubin: `cubin_registers`) and its warps."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    built = []

    def build(fn, args, kwargs):
        bound = fn.signature.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in fn.arg_names})
        bound.apply_defaults()
        signature, constants, attrs = {}, {}, {}
        for i, param in enumerate(fn.params):
            value = bound.arguments[param.name]
            if param.is_constexpr or value is None:
                signature[param.name], constants[param.name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[param.name] = POINTER_TYPES[value.dtype]
                attrs[(i,)] = [["tt.divisibility", 16]]  # as a launch's allocations are aligned
            elif isinstance(value, bool):
                signature[param.name] = "i1"
            elif isinstance(value, int):
                signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
                if value % 16 == 0 and not param.do_not_specialize:  # as a launch specialises such numbers
                    attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                signature[param.name] = "fp32"
        options = {k: v for k, v in kwargs.items() if k not in fn.arg_names}
        kernel = triton.compile(
            ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", *HOPPER), options=options
        )
        built.append(
            {
                "name": fn.__name__,
                "shared": kernel.metadata.shared,
                "constants": constants,
                "ptx": kernel.asm["ptx"],
                "registers": cubin_registers(kernel.asm["cubin"]),
                "warps": options.get("num_warps", 4),
            }
        )

    original = JITFunction.run

    def intercept(self, *args, grid, warmup, **kwargs):
        build(self, args, kwargs)

    JITFunction.run = intercept
    try:
        run()
    finally:
        JITFunction.run = original
    return built


def cubin_registers(cubin: bytes) -> int:
    """The registers a thread of the one kernel in `cubin` (a CUDA ELF) takes: its EIATTR_REGCOUNT attribute, which
    ptxas writes in the .nv.info section (what `ptxas -v` prints as "Used N registers")."""
    import struct

    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)

    def header(i):  # (name offset, offset, size) of section i
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", cubin, shoff + i * shentsize)
        return name, offset, size

    names = header(shstrndx)[1]
    for i in range(shnum):
        name, offset, size = header(i)
        if cubin[names + name : cubin.index(b"\0", names + name)] != b".nv.info":
            continue
        p = offset
        while (
            p < offset + size
        ):  # entries: format, attribute, then a 16-bit size and that many bytes (format 4)
            fmt, attr, length = struct.unpack_from("<BBH", cubin, p)
            if fmt == 0x04 and attr == 0x2F:  # EIATTR_REGCOUNT: (function's symbol, registers)
                return struct.unpack_from("<II", cubin, p + 4)[1]
            p += 4 + (length if fmt == 0x04 else 0)
    raise ValueError("no register count in this cubin")


def free_port() -> int:
    """A free local TCP port for a test server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_studio(default_model: Path, registry):
    """The studio (build_app) with `default_model` and `registry`, launched on a free loopback port: its URL, the
    server closed on exit."""
    from app.layout import LAUNCH_KWARGS
    from app.ui import build_app

    demo = build_app(default_model=str(default_model), registry=registry)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_KWARGS
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def text_of(message: dict) -> str:
    """The text parts of a Gradio chatbot message (messages format)."""
    return "".join(part["text"] for part in message["content"] if part.get("type") == "text")


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints for the app tests

SPECIALS = SPECIAL_TOKENS
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = (
    """The sky is blue because air scatters short wavelengths of sunlight more than long ones.
A block diffusion model writes a block of tokens at once and refines it over a few denoising steps.
Autoregressive decoding writes one token per forward pass; SDAR commits several tokens per forward.
Once upon a time there was a small model that learned to answer questions about the world.
The quick brown fox jumps over the lazy dog. Numbers: 1 2 3 4 5 6 7 8 9 10. Hello, how are you today?
"""
    * 4
)


def build_tokenizer():
    """A small byte-level BPE (about 400 tokens) with SDAR's special tokens and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        mask_token="<|MASK|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML,
    )


def load_tokenizer():
    folder = REPO / "assets" / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        if all(t in tok.get_vocab() for t in SPECIALS) and tok.chat_template:
            return tok
    return build_tokenizer()


def write_checkpoints(root: Path, *, context: int = 512) -> tuple[Path, Path]:
    """root/sdar-tiny (block size 4) and its AR twin root/ar-tiny (model_type qwen3), same tokenizer: the real one
    (assets/tokenizer/) when it exists, else a small byte-level BPE with the same special tokens and ChatML."""
    tok = load_tokenizer()
    vocab = tok.get_vocab()
    vocab_size = max(len(tok), max(vocab.values()) + 1)
    common = dict(
        vocab_size=vocab_size,
        eos_token_id=vocab["<|im_end|>"],
        max_position_embeddings=context,
        pad_token_id=vocab["<|endoftext|>"],
    )
    sdar = random_model(tiny_config("sdar", block_size=4, mask_token_id=vocab["<|MASK|>"], **common), seed=1)
    ar = random_model(tiny_config("qwen3", **common), seed=2)
    return save_pretrained(sdar, tok, root / "sdar-tiny"), save_pretrained(ar, tok, root / "ar-tiny")


# The studio's decoding inputs for a quick, deterministic answer through the API (by name, as gradio_client sends them).
FAST = dict(
    block_length=4,
    steps=4,
    strategy="static",
    threshold=0.9,
    temperature=0.0,
    top_p=1.0,
    max_new_tokens=12,
    seed=0,
    pace_ms=0,
)
