"""The UI boundary: every exception a handler raises becomes a readable gr.Error, never a traceback. A user's
error is logged as one line; only a real fault (anything else) logs its traceback, once."""

from __future__ import annotations

import functools
import logging
import re

import gradio as gr
import torch

from sdar_core import ContextTooLong

from .settings import shown
from .streaming import Busy

CONTEXT_HINT = "Shorten the prompt, clear the conversation, or lower max new tokens."
log = logging.getLogger("sdar.app")
FAULT = "Something went wrong"


def user_message(exc: BaseException) -> str:
    """What the person in front of the browser reads for `exc`."""
    if isinstance(exc, torch.OutOfMemoryError):
        return (
            "The device ran out of memory for this request. Try fewer new tokens, a shorter prompt or "
            "conversation, or a smaller model."
        )
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
    """What the page shows in place for `exc` (its gr.Error message, or user_message), logged: a user's error as
    one line, a fault with its traceback."""
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


def refuse_unreadable_inputs(demo: gr.Blocks) -> gr.Blocks:
    """Values that Gradio itself refuses before a handler runs (a wrong type, a NaN where a whole number goes, a
    choice that is not offered, too few values) reach the visitor as one readable gr.Error that names the input and
    what it accepts, logged as one line: Gradio would send API clients `{"error": null}` and log a traceback."""
    preprocess = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        try:
            return await preprocess(block_fn, inputs, state, explicit_call)
        except Exception as e:  # gradio's own gr.Errors too: they do not say which input they are about
            raise quiet(gr.Error(unreadable_input(block_fn.inputs, inputs, e), title="SDAR Studio")) from None

    demo.preprocess_data = preprocess_data
    return demo


def unreadable_input(blocks: list, values: list, error: Exception) -> str:
    """What the visitor reads when Gradio could not read one of `values` for `blocks` (the event's inputs)."""
    if len(values) < len(blocks):
        return f"this request needs {len(blocks)} values, got {len(values)}"
    match = re.search(r"at index (\d+)", str(error))
    index = (
        int(match.group(1))
        if match
        else next((i for i, (b, v) in enumerate(zip(blocks, values)) if not _readable(b, v)), None)
    )
    if index is None or index >= len(blocks):
        return (
            str(error.message)
            if isinstance(error, gr.Error)
            else (f"one of the values sent could not be read ({type(error).__name__})")
        )
    block, value = blocks[index], values[index]
    return f"{_label(block)} {_accepts(block)}, got {shown(value)}"


def _readable(block, value) -> bool:
    """Whether gradio reads `value` for `block` (its data model, then its preprocess: cheap and side-effect free for
    the studio's inputs, which hold no files)."""
    model = getattr(block, "data_model", None)
    try:
        if model is not None and value is not None:
            value = model.model_validate(value)
        block.preprocess(value)
    except Exception:
        return False
    return True


def _label(block) -> str:
    label = getattr(block, "label", None)
    return str(label) if label else block.get_block_name()


def _accepts(block) -> str:
    """What `block` reads, in words."""
    if isinstance(block, gr.Slider):
        return f"must be a number from {block.minimum:g} to {block.maximum:g}"
    if isinstance(block, gr.Number):
        return "must be a finite number" + (" (a whole number)" if block.precision == 0 else "")
    if isinstance(block, gr.Checkbox):
        return "must be true or false"
    if isinstance(block, (gr.Dropdown, gr.Radio, gr.CheckboxGroup)):
        choices = ", ".join(repr(v) for _, v in block.choices)
        many = isinstance(block, gr.CheckboxGroup) or getattr(block, "multiselect", False)
        return f"must be {'a list of' if many else 'one of'} {choices}"
    if isinstance(block, gr.Chatbot):
        return "must be a list of messages ({'role': 'user' or 'assistant', 'content': text})"
    if isinstance(block, gr.Textbox):
        return "must be text"
    return "could not be read"
