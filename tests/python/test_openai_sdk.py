"""The official OpenAI Python SDK against the real binary and its built-in
mock provider: the application developer's view of Custos."""


import openai
import pytest


@pytest.fixture(scope="module")
def client(custos, api_key):
    return openai.OpenAI(base_url=custos.base_url, api_key=api_key, max_retries=0)


def test_chat(client):
    resp = client.chat.completions.create(
        model="mock-chat",
        messages=[{"role": "user", "content": "Hello from the SDK"}],
    )
    assert resp.object == "chat.completion"
    assert "Hello from the SDK" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens > 0


def test_chat_request_id_and_served_model_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="mock-chat",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Request-Id": "sdk-correlation-1"},
    )
    assert raw.headers["x-request-id"] == "sdk-correlation-1"
    assert raw.headers["x-custos-model-served"] == "mock-chat"
    assert raw.parse().choices[0].message.content


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="mock-chat",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream please" in text
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 3, "the mock streams in several chunks"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens > 0


def test_chat_streaming_without_usage_sees_no_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="mock-chat",
            messages=[{"role": "user", "content": "no usage"}],
            stream=True,
        )
    )
    assert chunks
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_completions(client):
    resp = client.completions.create(model="mock-chat", prompt="Say this is a test")
    assert resp.object == "text_completion"
    assert resp.choices[0].text


def test_embeddings_default_base64_encoding(client):
    # The SDK asks for base64 by default and decodes it.
    resp = client.embeddings.create(model="mock-embed", input=["alpha", "beta"])
    assert len(resp.data) == 2
    assert len(resp.data[0].embedding) == 256
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0


def test_embeddings_float_encoding(client):
    resp = client.embeddings.create(model="mock-embed", input="alpha", encoding_format="float", dimensions=8)
    assert len(resp.data[0].embedding) == 8
    norm = sum(x * x for x in resp.data[0].embedding)
    assert abs(norm - 1.0) < 1e-3


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["mock-chat", "mock-embed"]
    assert client.models.retrieve("mock-chat").id == "mock-chat"


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="mock-nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"
    assert err.value.request_id  # the SDK reads x-request-id


def test_bad_request_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="mock-chat", messages="not a list")
    assert err.value.code == "invalid_type"
    assert err.value.param == "messages"
