"""Chat templates rendered where they can do no harm: a checkpoint's template is code its publisher wrote, and
jinja's sandbox (transformers' ImmutableSandboxedEnvironment) stops it from reaching Python's internals, but not
from looping for hours or building a string of gigabytes: `{% for i in range(99999) %}{% for j in range(99999) %}`
or a `namespace` string doubled forty times.

So the template renders in a worker process (`python -m sdar_core.template_sandbox`), with transformers' own
renderer (the same text as `tokenizer.apply_chat_template(..., tokenize=False)`), under a memory limit; the caller
waits at most `deadline` seconds and takes at most `max_chars` characters back, and a worker that overruns is
killed (the next render starts a fresh one). One worker per process, started on first use, serves renders one at a
time over its stdin/stdout: a render costs a round trip, not a process start.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

DEADLINE = 5.0  # seconds a render may take (the SDAR and Qwen3 templates take about a millisecond)
STARTUP = 60.0  # seconds the worker may take to import transformers' renderer (about one on an idle machine)
MAX_TEMPLATE_CHARS = 1 << 20  # the Qwen3 template is ~4,000 characters
MAX_RENDER_CHARS = (
    1 << 20
)  # what a render may return: contents are rendered as short placeholders (prompting.py)
MAX_WORKER_MEMORY = 512 << 20  # bytes of data the worker may allocate (RLIMIT_DATA)


class TemplateError(ValueError):
    """A chat template that cannot be rendered within the limits, or that fails, with the reason in words."""


class TemplateSandbox:
    """A worker process rendering chat templates under a deadline, an output cap and a memory limit."""

    def __init__(
        self,
        deadline: float = DEADLINE,
        max_chars: int = MAX_RENDER_CHARS,
        max_memory: int = MAX_WORKER_MEMORY,
    ) -> None:
        self.deadline, self.max_chars, self.max_memory = deadline, max_chars, max_memory
        self._worker: subprocess.Popen | None = None
        self._ready = False  # the worker said it finished its imports
        self._lock = threading.Lock()

    def render(self, template: str, messages: list[dict], variables: dict) -> str:
        """The template rendered for `messages` with add_generation_prompt and `variables` (the tokenizer's special
        tokens: bos_token, eos_token, ...), or TemplateError."""
        if not isinstance(template, str):
            raise TemplateError(f"the chat template must be text, got {type(template).__name__}")
        if len(template) > MAX_TEMPLATE_CHARS:
            raise TemplateError(
                f"the chat template holds {len(template):,} characters; at most "
                f"{MAX_TEMPLATE_CHARS:,} are rendered"
            )
        request = (
            json.dumps(
                {
                    "template": template,
                    "messages": messages,
                    "variables": variables,
                    "max_chars": self.max_chars,
                }
            )
            + "\n"
        )
        with self._lock:
            try:
                answer = self._ask(request)
            except BaseException:
                self.close()  # a killed, stuck or confused worker is never reused
                raise
        if "error" in answer:
            raise TemplateError(f"the chat template cannot be rendered: {answer['error']}")
        return answer["text"]

    def _ask(self, request: str) -> dict:
        worker = self.start()
        if not self._ready:  # the worker says so once its imports are done: they are not the template's time
            line = self._read_line(
                worker, STARTUP, 64, f"the chat template worker did not start within {STARTUP:g} s"
            )
            if line != b'"ready"\n':
                raise TemplateError("the chat template worker did not start")
            self._ready = True
        try:
            worker.stdin.write(request.encode())
            worker.stdin.flush()
        except OSError:
            raise TemplateError(
                "the chat template worker stopped (it ran out of memory or was killed)"
            ) from None
        # JSON escapes at most 6 bytes a character (\uXXXX), twice for a surrogate pair
        line = self._read_line(
            worker,
            self.deadline,
            12 * self.max_chars + 4096,
            f"the chat template did not finish rendering within {self.deadline:g} s (a template "
            "that loops or builds a huge text): it was stopped",
        )
        return json.loads(line.decode())

    def _read_line(self, worker: subprocess.Popen, seconds: float, limit: int, late: str) -> bytes:
        """One line from the worker within `seconds` and `limit` bytes, or TemplateError (`late` when too slow)."""
        buffer, end = bytearray(), time.monotonic() + seconds
        while not buffer.endswith(b"\n"):
            left = end - time.monotonic()
            if left <= 0 or not select.select([worker.stdout], [], [], left)[0]:
                raise TemplateError(late)
            chunk = os.read(worker.stdout.fileno(), 1 << 16)
            if not chunk:
                raise TemplateError(
                    "the chat template used more than the "
                    f"{self.max_memory >> 20:,} MB a render may take: it was stopped"
                )
            buffer += chunk
            if len(buffer) > limit:
                raise TemplateError(
                    f"the chat template's text passed {self.max_chars:,} characters: it was stopped"
                )
        return bytes(buffer)

    def start(self) -> subprocess.Popen:
        """The worker, started now if none runs: call it ahead of the first render to have the worker's imports
        (about a second) done by then. Does not wait."""
        if self._worker is None or self._worker.poll() is not None:
            self._ready = False
            env = dict(
                os.environ,
                OMP_NUM_THREADS="1",
                OPENBLAS_NUM_THREADS="1",
                TRANSFORMERS_VERBOSITY="error",
                SDAR_TEMPLATE_MEMORY=str(self.max_memory),
            )
            self._worker = subprocess.Popen(
                [sys.executable, "-m", "sdar_core.template_sandbox"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
        return self._worker

    def close(self) -> None:
        """Stop the worker (the next render starts another)."""
        worker, self._worker = self._worker, None
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()


SANDBOX = TemplateSandbox()
atexit.register(SANDBOX.close)


def _serve() -> None:
    """The worker: one JSON request a line on stdin, one JSON answer a line on stdout, until stdin closes."""
    import resource

    from transformers.utils.chat_template_utils import render_jinja_template

    limit = int(os.environ.get("SDAR_TEMPLATE_MEMORY", MAX_WORKER_MEMORY))
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    out = sys.stdout
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        try:
            r = json.loads(line)
            rendered, _ = render_jinja_template(
                conversations=[r["messages"]],
                chat_template=r["template"],
                add_generation_prompt=True,
                **r["variables"],
            )
            text = rendered[0]
            answer = (
                {"text": text}
                if len(text) <= r["max_chars"]
                else {
                    "error": f"its text has {len(text):,} characters; at most {r['max_chars']:,} are accepted"
                }
            )
        except MemoryError:
            answer = {"error": f"it needs more than the {limit >> 20:,} MB a render may take"}
        except Exception as e:  # a syntax error, raise_exception(...), a sandbox violation, a type error
            answer = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
