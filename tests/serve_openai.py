"""The official `openai` Python client against a running `ferrite serve` (driven by tests/serve.rs).

usage: python3 tests/serve_openai.py BASE_URL API_KEY EXPECTED_GREEDY_TEXT
Checks models, chat (plain and streamed with usage), completions (plain and streamed), log-probabilities,
structured output (response_format json_schema and json_object, the grammar field, tools), and the
client's typed errors for bad requests and a wrong key. Prints one line per check; exits 1 on the
first failure.
"""
import sys

import openai

base, key, expected = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
QUESTION = "What is the capital of France?"


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    print(f"ok {name}")


models = client.models.list()
ids = [m.id for m in models.data]
check("models", len(ids) == 1, ids)
model = ids[0]

r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=20, temperature=0)
c = r.choices[0]
check("chat", c.message.role == "assistant" and c.message.content == expected, repr(c.message.content))
check("chat finish_reason", c.finish_reason in ("stop", "length"), c.finish_reason)
check("chat usage", r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage)

text, usage, finish = "", None, None
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for ch in chunk.choices:
        text += ch.delta.content or ""
        finish = ch.finish_reason or finish
check("chat stream text", text == expected, repr(text))
check("chat stream finish", finish in ("stop", "length"), finish)
check("chat stream usage", usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage)

comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
check("completion", comp.choices[0].text != "" and comp.usage.completion_tokens > 0, comp)
pieces = "".join(ch.choices[0].text for ch in client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True) if ch.choices)
check("completion stream", pieces == comp.choices[0].text, repr(pieces))

# log-probabilities: greedy picks the most likely token; the tokens spell the content; a stream
# carries the same numbers chunk by chunk
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=20, temperature=0, logprobs=True, top_logprobs=3
)
lp = r.choices[0].logprobs.content
check("chat logprobs", r.choices[0].message.content == expected and "".join(t.token for t in lp) == expected, lp)
check("chat top_logprobs", all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token and t.logprob <= 0 for t in lp), lp)
check("chat logprobs bytes", bytes(b for t in lp for b in t.bytes).decode() == expected, lp)
streamed = []
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=20, temperature=0, logprobs=True, top_logprobs=3, stream=True
):
    for ch in chunk.choices:
        if ch.logprobs is not None and ch.logprobs.content:
            streamed += ch.logprobs.content
check("chat stream logprobs", [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in lp], streamed)
comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2)
l = comp.choices[0].logprobs
check("completion logprobs", "".join(l.tokens) == comp.choices[0].text and len(l.token_logprobs) == len(l.tokens), l)
check("completion top_logprobs", all(len(d) == 2 for d in l.top_logprobs) and l.text_offset == sorted(l.text_offset), l)

# structured output: a JSON schema (properties in the schema's order), plain and streamed, then
# json_object, and llama-server's `grammar` field
import json

schema = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}, "population": {"type": "integer", "minimum": 0}},
    "required": ["city", "country", "population"],
    "additionalProperties": False,
}
rf = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}
ask = [{"role": "user", "content": "Give the capital of France as JSON."}]
r = client.chat.completions.create(model=model, messages=ask, max_tokens=200, temperature=0, response_format=rf)
doc = json.loads(r.choices[0].message.content)
check("json_schema answer", list(doc) == ["city", "country", "population"] and isinstance(doc["population"], int), r.choices[0].message.content)
check("json_schema ends by the grammar", r.choices[0].finish_reason == "stop", r.choices[0].finish_reason)
streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(model=model, messages=ask, max_tokens=200, temperature=0, response_format=rf, stream=True) if ch.choices)
check("json_schema streamed", streamed == r.choices[0].message.content, repr(streamed))
for seed in range(3):
    r = client.chat.completions.create(model=model, messages=ask, max_tokens=200, temperature=1, seed=seed, response_format=rf)
    doc = json.loads(r.choices[0].message.content)
    check(f"json_schema sampled (seed {seed})", sorted(doc) == ["city", "country", "population"] and doc["population"] >= 0, doc)
r = client.chat.completions.create(model=model, messages=ask, max_tokens=400, temperature=0, response_format={"type": "json_object"})
c = r.choices[0]
check("json_object", (c.finish_reason == "length" and c.message.content.startswith("{")) or isinstance(json.loads(c.message.content), dict), c.message.content)
comp = client.completions.create(model=model, prompt="Is Paris in France? Answer:", max_tokens=8, temperature=0, extra_body={"grammar": 'root ::= " " ("yes" | "no") "."'})
check("grammar field", comp.choices[0].text in (" yes.", " no."), repr(comp.choices[0].text))
for bad_rf, needle in [({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frog"}}}, "frog"), ({"type": "yaml"}, "type")]:
    try:
        client.chat.completions.create(model=model, messages=ask, max_tokens=4, response_format=bad_rf)
        check("bad response_format refused", False, "no error")
    except openai.BadRequestError as e:
        check("bad response_format refused", e.status_code == 400 and needle in str(e), e)
try:
    client.completions.create(model=model, prompt="x", max_tokens=4, extra_body={"grammar": "root ::= nothing"})
    check("bad grammar refused", False, "no error")
except openai.BadRequestError as e:
    check("bad grammar refused", "nothing" in str(e), e)

# tools: calls come back in tool_calls (never in content), plain and streamed, for "required",
# a named tool and "auto"; a follow-up turn with the results is accepted
import jsonschema

tools = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}}, "required": ["zone"]}}},
]
params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
ask = [{"role": "user", "content": "What's the weather in Paris?"}]
for choice, names in [("required", set(params)), ({"type": "function", "function": {"name": "get_time"}}, {"get_time"})]:
    r = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice=choice, temperature=0, max_tokens=200)
    c = r.choices[0]
    ok = c.finish_reason == "tool_calls" and c.message.content is None and len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0] if c.message.tool_calls else None
    ok = ok and call.function.name in names and call.id
    if ok:
        jsonschema.validate(json.loads(call.function.arguments), params[call.function.name])
    check(f"tool_choice {choice}", ok, c)
    got = {}
    for ch in client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice=choice, temperature=0, max_tokens=200, stream=True):
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            entry = got.setdefault(tc.index, ["", ""])
            entry[0] += tc.function.name or ""
            entry[1] += tc.function.arguments or ""
    check(f"tool_choice {choice} streamed", got == {0: [call.function.name, call.function.arguments]}, got)
r = client.chat.completions.create(model=model, messages=ask, tools=tools, temperature=0, max_tokens=200)
c = r.choices[0]
check("tool_choice auto", (c.finish_reason == "tool_calls" and c.message.tool_calls) or (c.message.content and "tool_call" not in c.message.content), c)
msgs = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}, {"role": "tool", "tool_call_id": call.id, "content": "22 degrees and sunny"}]
r = client.chat.completions.create(model=model, messages=msgs, tools=tools, temperature=0, max_tokens=60)
check("tool results accepted", r.choices[0].finish_reason in ("stop", "length", "tool_calls"), r)
for kwargs, needle in [({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"), ({"tools": [{"type": "function", "function": {"name": "x", "parameters": {"type": "object", "properties": {"s": {"type": "string", "pattern": "a+"}}}}}]}, "pattern")]:
    try:
        client.chat.completions.create(model=model, messages=ask, max_tokens=4, **{"tools": tools, **kwargs})
        check("bad tools refused", False, "no error")
    except openai.BadRequestError as e:
        check("bad tools refused", e.status_code == 400 and needle in str(e), e)

try:
    client.chat.completions.create(model=model, messages=[], max_tokens=4)
    check("empty messages refused", False, "no error")
except openai.BadRequestError as e:
    check("empty messages refused", e.status_code == 400 and "empty" in str(e), e)

try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], temperature=7)
    check("bad temperature refused", False, "no error")
except openai.BadRequestError as e:
    check("bad temperature refused", "temperature" in str(e), e)

bad = openai.OpenAI(base_url=base, api_key="wrong-" + key, max_retries=0)
try:
    bad.models.list()
    check("wrong key refused", False, "no error")
except openai.AuthenticationError as e:
    check("wrong key refused", e.status_code == 401, e)
print("all ok")
