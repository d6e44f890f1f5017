"""The official clients, unchanged, against the gateway: huggingface_hub's InferenceClient and openai."""

from __future__ import annotations

import pytest

from tests.gateway.harness import GatewayServer

pytestmark = pytest.mark.timeout(60)

openai = pytest.importorskip("openai")


def test_inference_client_text_generation(gateway: GatewayServer) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=gateway.url)
    assert client.text_generation("Hello", max_new_tokens=3) == " w0 w1 w2"
    out = client.text_generation("Hello", max_new_tokens=2, details=True)
    assert out.generated_text == " w0 w1" and out.details.finish_reason == "length"
    assert [t.id for t in out.details.tokens] == [1000, 1001]
    pieces = list(client.text_generation("Hello", max_new_tokens=3, stream=True))
    assert pieces == [" w0", " w1", " w2"]
    events = list(client.text_generation("Hello", max_new_tokens=2, stream=True, details=True))
    assert events[-1].generated_text == " w0 w1" and events[-1].details.generated_tokens == 2


def test_inference_client_errors(gateway: GatewayServer) -> None:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import ValidationError

    client = InferenceClient(base_url=gateway.url)
    with pytest.raises(ValidationError, match="`top_n_tokens` must be >= 0 and <= 5"):
        client.text_generation("Hello", max_new_tokens=2, top_n_tokens=9)


def test_inference_client_chat(gateway: GatewayServer) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=gateway.url)
    out = client.chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2)
    assert out.choices[0].message.content == " w0 w1"
    chunks = list(client.chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " w0 w1"


def test_openai_client_chat_and_completions(gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    out = client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                         top_p=1.0, n=2)
    assert [c.message.content for c in out.choices] == [" w0 w1", " w0 w1"]
    assert out.usage is not None and out.usage.completion_tokens == 4
    stream = client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " w0 w1 w2"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    comp = client.completions.create(model="tgi", prompt="Hi", max_tokens=2)
    assert comp.choices[0].text == " w0 w1"
    assert [m.id for m in client.models.list()] == [gateway.ctx.model_id]


def test_openai_client_errors(gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    # TGI's error body on /v1 too: the right exception class, the message in `body` (docs/api.md).
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "Hi"}],
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
                                       tool_choice={"type": "function", "function": {"name": "g"}})
    assert info.value.body == "Tool error: Tool with name g not found"
    with pytest.raises(openai.APIError, match="boom"):
        list(client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "an ERROR here"}],
                                            stream=True))


def test_text_generation_client(gateway: GatewayServer) -> None:
    # The `text-generation` package pins huggingface-hub<1.0, which transformers 5 cannot share,
    # so it is not in the test extra; it runs where it was installed beside (pip --no-deps).
    text_generation = pytest.importorskip("text_generation")
    client = text_generation.Client(gateway.url)
    out = client.generate("Hello", max_new_tokens=2, decoder_input_details=False, top_n_tokens=1)
    assert out.generated_text == " w0 w1"
    assert out.details.finish_reason.value == "length" and out.details.generated_tokens == 2
    assert [t.text for t in out.details.tokens] == [" w0", " w1"]
    events = list(client.generate_stream("Hello", max_new_tokens=3))
    assert [e.token.text for e in events] == [" w0", " w1", " w2"]
    assert events[-1].generated_text == " w0 w1 w2"
    with pytest.raises(text_generation.errors.ValidationError):
        client.generate("Hello", max_new_tokens=2, top_n_tokens=9)
