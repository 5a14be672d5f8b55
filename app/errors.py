"""The UI boundary: every exception a handler raises becomes a readable gr.Error, never a traceback. A user's
error is logged as one line; only a real fault (anything else) logs its traceback, once."""
from __future__ import annotations

import functools
import logging

import gradio as gr
import torch

from sdar_core import ContextTooLong

from .streaming import Busy

CONTEXT_HINT = "Shorten the prompt, clear the conversation, or lower max new tokens."
log = logging.getLogger("sdar.app")
FAULT = "Something went wrong"


def user_message(exc: BaseException) -> str:
    """What the person in front of the browser reads for `exc`."""
    if isinstance(exc, torch.OutOfMemoryError):
        return ("The device ran out of memory for this request. Try fewer new tokens, a shorter prompt or "
                "conversation, or a smaller model.")
    if isinstance(exc, Busy):
        return str(exc)[0].upper() + str(exc)[1:]
    if isinstance(exc, (ValueError, KeyError, FileNotFoundError)):  # CheckpointError, GenerationError, ...
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        if isinstance(exc, ContextTooLong):
            text = f"{text}. {CONTEXT_HINT}"
        return text[0].upper() + text[1:] if text else type(exc).__name__
    log.error("unexpected error in a handler", exc_info=exc)
    return f"{FAULT} ({type(exc).__name__}: {exc}). The app is still running; try again."


def to_gr_error(exc: BaseException) -> gr.Error:
    """The gr.Error a non-gr.Error exception reaches the user as."""
    if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return quiet(gr.Error(user_message(exc), title="SDAR Studio"))


def quiet(error: gr.Error) -> gr.Error:
    """`error` logged as one line; gradio prints no traceback for it."""
    error.print_exception = False
    log.info("refused: %s", " ".join(str(error.message).split())[:300])
    return error


def explained(exc: BaseException) -> str:
    """What the page shows in place for `exc` (its gr.Error message, or user_message), logged: a user's error as one line, a fault with its traceback."""
    if isinstance(exc, gr.Error):
        return quiet(exc).message
    return to_gr_error(exc).message


def unshown(message: str) -> gr.Error:
    """The gr.Error that ends a handler whose page already shows `message` in place: API clients still get the
    error, the page gets no overlay over what it shows."""
    error = gr.Error(message, visible=False, title="SDAR Studio")
    error.print_exception = False
    return error


def explains_in_place(n_outputs: int, at: int):
    """Decorate a generator handler of `n_outputs` outputs so that a refused request shows its reason in output
    `at` (a gr.Markdown beside the button) and leaves the others as they are; API clients still get the error."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                reason = explained(e)
                out = [gr.skip()] * n_outputs
                out[at] = "⚠️ " + reason
                yield tuple(out)
                raise unshown(reason) from None
        return wrapper
    return decorate

