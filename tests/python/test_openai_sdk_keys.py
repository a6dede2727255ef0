"""Scoped keys as the official OpenAI SDK sees them: each refusal raises
the SDK's own exception class, with Custos's error code."""

import openai
import pytest

from conftest import cli, create_key


def sdk(custos, secret):
    return openai.OpenAI(base_url=custos.base_url, api_key=secret, max_retries=0)


def ask(client, model="mock-chat", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **kw)


@pytest.mark.parametrize(
    "secret, code",
    [
        ("sk-proj-not-a-custos-key", "malformed_api_key"),
        ("cst_live_0000000000000000000000000000000000000", "malformed_api_key"),
    ],
)
def test_bad_keys_raise_authentication_error(custos, secret, code):
    with pytest.raises(openai.AuthenticationError) as err:
        ask(sdk(custos, secret))
    assert err.value.status_code == 401
    assert err.value.code == code


def test_revoked_key_raises_authentication_error(custos):
    key = create_key(custos, "--name", "to-revoke", "--models", "mock-chat")
    client = sdk(custos, key["secret"])
    assert ask(client).choices[0].message.content
    cli(custos, "revoke", key["id"])
    with pytest.raises(openai.AuthenticationError) as err:
        ask(client)
    assert err.value.code == "revoked_api_key"


def test_rotated_out_key_raises_authentication_error(custos):
    key = create_key(custos, "--name", "to-rotate", "--models", "mock-chat")
    cli(custos, "rotate", key["id"], "--grace", "0s")
    with pytest.raises(openai.AuthenticationError) as err:
        ask(sdk(custos, key["secret"]))
    assert err.value.code == "key_rotated"


def test_expired_key_raises_authentication_error(custos):
    # The shortest expiry the CLI takes is well in the future, so expire it
    # by updating its expiry to "now".
    key = create_key(custos, "--name", "to-expire", "--models", "mock-chat", "--expires-in", "1s")
    import time

    time.sleep(1.2)  # expiry is wall-clock time: let one second pass
    with pytest.raises(openai.AuthenticationError) as err:
        ask(sdk(custos, key["secret"]))
    assert err.value.code == "expired_api_key"


def test_model_outside_scope_raises_permission_denied(custos):
    key = create_key(custos, "--name", "embed-only", "--models", "mock-embed")
    with pytest.raises(openai.PermissionDeniedError) as err:
        ask(sdk(custos, key["secret"]))
    assert err.value.status_code == 403
    assert err.value.code == "model_not_allowed"


def test_stream_without_capability_raises_permission_denied(custos):
    key = create_key(custos, "--name", "no-stream", "--models", "mock-chat", "--capabilities", "chat")
    client = sdk(custos, key["secret"])
    assert ask(client).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as err:
        list(ask(client, stream=True))
    assert err.value.code == "capability_not_allowed"


def test_rate_limit_raises_rate_limit_error_with_headers(custos):
    key = create_key(custos, "--name", "limited", "--models", "mock-chat", "--rpm", "2")
    client = sdk(custos, key["secret"])
    raw = client.chat.completions.with_raw_response.create(
        model="mock-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert "x-ratelimit-reset-requests" in raw.headers
    ask(client)
    with pytest.raises(openai.RateLimitError) as err:
        ask(client)
    assert err.value.status_code == 429
    assert err.value.code == "rate_limit_exceeded"
    assert int(err.value.response.headers["retry-after"]) >= 1
