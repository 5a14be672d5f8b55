"""app/exposure.py and the registry's allow-list (issue 33): exposure is judged per request, so a studio bound to
127.0.0.1 behind a proxy or a tunnel is public for the strangers it forwards (finding 7); every name a public
request may not load gets one refusal, whatever it resolves to (finding 8)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from helpers import free_port


def fake_request(headers: dict | None = None, host: str | None = "127.0.0.1"):
    """What the registry reads of a gr.Request: its headers and its client's address."""
    return SimpleNamespace(headers=headers or {}, client=SimpleNamespace(host=host))


@pytest.mark.parametrize(
    "headers, host, server_exposed, public",
    [
        ({}, "127.0.0.1", False, False),
        ({}, "::1", False, False),
        ({}, "127.8.9.10", False, False),
        ({}, "::ffff:127.0.0.1", False, False),
        ({"Forwarded": "for=203.0.113.7"}, "127.0.0.1", False, True),
        ({"X-Forwarded-For": "203.0.113.7"}, "127.0.0.1", False, True),
        ({"x-real-ip": "203.0.113.7"}, "127.0.0.1", False, True),
        ({"X-Forwarded-For": "127.0.0.1"}, "127.0.0.1", False, True),  # a proxy said so: not to be trusted
        ({}, "192.168.1.20", False, True),
        ({}, "10.0.0.1", False, True),
        ({}, None, False, True),  # no client address: unknown, so public
        ({}, "testclient", False, True),
        ({}, "127.0.0.1", True, True),  # an exposed server: every request
    ],
)
def test_finding7_a_request_is_public_when_proxied_remote_or_the_server_is_exposed(
    headers, host, server_exposed, public
):
    from app.exposure import is_public, request_is_public

    assert is_public(headers, host, server_exposed=server_exposed) is public
    assert request_is_public(fake_request(headers, host), server_exposed=server_exposed) is public


def test_finding7_the_registry_judges_the_request_gradio_is_handling(studio_checkpoints, tmp_path):
    """Issue 33, finding 7: on a loopback-bound studio a forwarded request once loaded any folder of the server."""
    from gradio.context import LocalContext

    from app.registry import ModelRegistry, ModelUnavailable

    sdar, _ = studio_checkpoints
    outside = tmp_path / "copy"
    outside.mkdir()
    (outside / "config.json").write_text((sdar / "config.json").read_text())
    registry = ModelRegistry(models_dir=sdar.parent, exposed=False)  # bound to 127.0.0.1, not shared
    assert registry.key(str(outside)) == str(outside.resolve())  # no request: the server's verdict
    assert registry.key(str(outside), public=False) == str(outside.resolve())
    with pytest.raises(ModelUnavailable, match="not offered"):
        registry.key(str(outside), public=True)
    for request, allowed in [
        (fake_request(), True),
        (fake_request({"X-Forwarded-For": "203.0.113.7"}), False),
        (fake_request(host="198.51.100.4"), False),
    ]:
        token = LocalContext.request.set(request)
        try:
            if allowed:
                assert registry.key(str(outside)) == str(outside.resolve())
            else:
                with pytest.raises(ModelUnavailable, match="not offered"):
                    registry.key(str(outside))
                assert registry.key(str(sdar)) == str(sdar.resolve())  # the shipped models still load
        finally:
            LocalContext.request.reset(token)
    trusting = ModelRegistry(models_dir=sdar.parent, exposed=True, allow_any_model=True)  # --allow-any-model
    assert trusting.key(str(outside), public=True) == str(outside.resolve())


def test_finding7_a_loopback_studio_refuses_proxied_visitors_any_folder(studio_checkpoints, tmp_path):
    """Through a launched studio on 127.0.0.1: the same question, asked directly and through a 'proxy' (a
    client sending X-Forwarded-For or Forwarded), gets a different answer."""
    from gradio_client import Client

    from app.layout import LAUNCH_KWARGS
    from app.registry import ModelRegistry
    from app.ui import build_app

    sdar, _ = studio_checkpoints
    outside = tmp_path / "copy"
    outside.mkdir()
    (outside / "config.json").write_text((sdar / "config.json").read_text())
    registry = ModelRegistry(models_dir=sdar.parent, exposed=False)
    demo = build_app(default_model=str(sdar), registry=registry)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_KWARGS
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        direct = Client(url, verbose=False).predict(str(outside), api_name="/describe_model")
        assert "not offered" not in direct and "loads on first use" in direct
        for headers in ({"X-Forwarded-For": "203.0.113.7"}, {"Forwarded": "for=203.0.113.7;proto=https"}):
            proxied = Client(url, verbose=False, headers=headers).predict(
                str(outside), api_name="/describe_model"
            )
            assert "is not offered by this studio" in proxied and "--allow-any-model" in proxied
    finally:
        demo.close()


def test_finding8_every_refused_name_gets_one_message_whatever_it_resolves_to(studio_checkpoints, tmp_path):
    """Issue 33, finding 8: names resolving into the models folder (missing ones, `..` detours, the install's
    absolute path spelled another way, a symlink to a shipped model) once got their own messages, telling a
    visitor the install path and which paths are links."""
    from app.registry import ModelRegistry, ModelUnavailable

    sdar, _ = studio_checkpoints
    models = sdar.parent
    link = tmp_path / "link-to-shipped"
    link.symlink_to(sdar)
    file_in_models = models / "notes.txt"
    file_in_models.write_text("x")
    registry = ModelRegistry(models_dir=models)  # exposed: the safe default
    names = [
        str(models / "missing"),
        str(models / sdar.name / ".." / "missing"),
        str(models / ".." / models.name / sdar.name),
        "/" + str(sdar),
        str(sdar) + "/.",
        str(link),
        str(file_in_models),
        str(models),
        "/etc",
        "/etc/passwd",
        str(tmp_path / "nothing" / "here"),
        "org/any-model",
        "../" * 8 + "etc",
    ]
    messages = set()
    for name in names:
        with pytest.raises(ModelUnavailable) as e:
            registry.key(name)
        messages.add(str(e.value).replace(repr(name.strip()), "NAME"))
        assert registry.cached(name) is None and registry.peek_config(name) is None
    assert len(messages) == 1, messages
    assert "not offered by this studio" in messages.pop()
    assert registry.key(str(sdar)) == str(sdar.resolve())  # the name as listed loads
