#!/usr/bin/python3
"""The HTTP API end to end: a 4-rank serving cluster (EP 2 x PP 2, brown-moe) with
`serve --http-listen`, a bearer token, and real clients (Python's http.client, curl, and
gRPC for comparison). Checks:
  - greedy completions (plain and streamed, OpenAI and KServe REST) equal the gRPC answer to
    the same request, and the streamed deltas add up to it;
  - logprobs (both shapes): each greedy token is the most likely one, streamed or not;
  - chat prompts rendered by the server are byte-identical to the real Jinja templates rendered
    by jinja2 (as transformers renders them), with the token ids SentencePiece gives each
    segment between special tokens; a chat answer equals the completion of its prompt ids;
  - 64 concurrent streams each equal the same request served alone;
  - 200 streams of which half disconnect mid-way: the others are intact, exactly 100 requests
    end cancelled, and the KV cache returns to idle; likewise requests that do not stream,
    whose clients give up waiting;
  - the bad-input table: each refusal's HTTP status and the field it names.

    tests/http_api_test.py SWITCHYARD_BINARY MODEL_DIR WORK_DIR
"""
import concurrent.futures
import http.client
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from grpc_wire import require_grpc  # noqa: E402

require_grpc("http_api_test.py")
import grpc  # noqa: E402
import jinja2.sandbox  # noqa: E402
import sentencepiece  # noqa: E402
from switchyard.v1 import switchyard_pb2, switchyard_pb2_grpc  # noqa: E402

CLUSTER = os.path.join(os.path.dirname(HERE), "launch", "cluster.sh")
TOKEN = "http-test-token"
MODEL = "brown-moe"
PROMPTS = ["The jury said that", "The President told reporters", "It was a", "Le café",
           "Atlanta's recent primary election produced", "We", "No one knew why the",
           "In the morning", "The city council voted", "Two", "Mr. Brown said", "After the war",
           "She said", "Once upon a time", "The price of", "Ünïcödé text 東京 and"]

# The templates as checkpoints ship them (tokenizer_config.json's chat_template).
MIXTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""
MIXTRAL_V01 = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') "
               "!= (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must "
               "alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
               "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
               "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
               "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
               "{% endif %}{% endfor %}")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt "
          "%}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CONVERSATIONS = [
    [{"role": "user", "content": "Who was on the jury?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me about  Atlanta.\nBriefly."}],
    [{"role": "user", "content": "Ünïcödé 東京 — ok?"}, {"role": "assistant", "content": " yes "},
     {"role": "user", "content": "  spaces  "}],
]
SYSTEM = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Why?"}]


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


class Api:
    def __init__(self, port):
        self.port = port

    def request(self, method, path, body=None, token=TOKEN, headers=None, timeout=120):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Content-Type": "application/json"}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read().decode("utf-8", "replace")
        conn.close()
        return r.status, dict(r.getheaders()), data

    def post(self, path, body, **kw):
        status, headers, data = self.request("POST", path, body, **kw)
        try:
            return status, headers, json.loads(data)
        except ValueError:
            return status, headers, data

    def stream(self, path, body, leave_after=None):
        """The data payloads of an SSE response; with leave_after=N, closes the connection
        after N payloads (a client that goes away)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {TOKEN}"})
        r = conn.getresponse()
        if r.status != 200:
            return r.status, [r.read().decode()]
        out = []
        while True:
            line = r.readline()
            if not line:
                break
            line = line.decode().rstrip("\n")
            if line.startswith("data: "):
                out.append(line[6:])
                if leave_after is not None and len(out) >= leave_after:
                    conn.sock.close()  # gone mid-stream
                    conn.close()
                    return 200, out
                if line == "data: [DONE]":
                    break
        conn.close()
        return 200, out

    def metric(self, name):
        _, _, text = self.request("GET", "/metrics", token=None)
        total = 0.0
        found = False
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        return total if found else None


def stream_text(payloads, field="text"):
    text, finish = "", None
    for p in payloads:
        if p == "[DONE]":
            continue
        j = json.loads(p)
        check("error" not in j, f"stream error: {p}")
        for c in j.get("choices", []):
            text += c["delta"].get("content", "") if "delta" in c else c.get(field, "")
            finish = c.get("finish_reason") or finish
    return text, finish


def completion(prompt, max_tokens=16, **extra):
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


def render_jinja(template, messages):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token="<s>",
                                            eos_token="</s>", add_generation_prompt=True)


def segment_ids(sp, text):
    """SentencePiece ids of a rendered prompt: special pieces by id, each text segment
    between them encoded on its own."""
    ids = []
    for part in re.split(r"(<s>|</s>)", text):
        if part == "<s>":
            ids.append(sp.bos_id())
        elif part == "</s>":
            ids.append(sp.eos_id())
        elif part:
            ids.extend(sp.encode(part))
    return ids


def main():
    binary, model, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    cluster = os.path.join(work, "cluster")
    token_file = os.path.join(work, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    subprocess.run([CLUSTER, "start", cluster, "4", "2", "2", binary, model, "--kv-blocks", "256",
                    "--http-listen", "127.0.0.1:0", "--http-port-file",
                    os.path.join(cluster, "http_port"), "--auth-token-file", token_file,
                    "--chat-template", "mixtral", "--http-threads", "256"], check=True)
    ok = False
    try:
        api = Api(int(open(os.path.join(cluster, "http_port")).read()))
        grpc_port = open(os.path.join(cluster, "port")).read().strip()
        stub = switchyard_pb2_grpc.SwitchyardStub(grpc.insecure_channel("127.0.0.1:" + grpc_port))
        auth = (("authorization", f"Bearer {TOKEN}"),)

        def grpc_complete(prompt=None, ids=None, max_tokens=16):
            req = switchyard_pb2.GenerateRequest(max_tokens=max_tokens)
            if ids is not None:
                req.token_ids.extend(ids)
            else:
                req.text = prompt
            return stub.Complete(req, metadata=auth, timeout=120)

        # 1. Greedy answers equal gRPC's: plain, streamed, KServe REST, curl.
        solo, solo_tokens = {}, {}
        for prompt in PROMPTS:
            want = grpc_complete(prompt)
            status, _, j = api.post("/v1/completions", completion(prompt))
            check(status == 200, f"completion {prompt!r}: {status} {j}")
            check(j["choices"][0]["text"] == want.text,
                  f"{prompt!r}: HTTP {j['choices'][0]['text']!r} != gRPC {want.text!r}")
            check(j["usage"]["prompt_tokens"] == want.prompt_tokens and
                  j["usage"]["completion_tokens"] == want.completion_tokens, f"usage {j}")
            solo[prompt] = want.text
            solo_tokens[prompt] = want.completion_tokens
        print(f"ok: {len(PROMPTS)} greedy completions equal the gRPC answers")
        for prompt in PROMPTS[:4]:
            status, payloads = api.stream("/v1/completions", completion(
                prompt, stream=True, stream_options={"include_usage": True}))
            text, finish = stream_text(payloads)
            check(status == 200 and payloads[-1] == "[DONE]", f"stream {payloads[-2:]}")
            check(text == solo[prompt], f"stream {prompt!r}: {text!r} != {solo[prompt]!r}")
            usage = json.loads(payloads[-2])
            check(usage["choices"] == [] and
                  usage["usage"]["completion_tokens"] == solo_tokens[prompt], usage)
            status, _, j = api.post(f"/v2/models/{MODEL}/infer", {
                "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
                            "data": [prompt]}], "parameters": {"max_tokens": 16}})
            check(status == 200 and j["outputs"][0]["data"][0] == solo[prompt], f"infer {j}")
            status, _, j = api.post(f"/v2/models/{MODEL}/generate",
                                    {"text_input": prompt, "max_tokens": 16})
            check(status == 200 and j["text_output"] == solo[prompt], f"generate {j}")
            status, payloads = api.stream(f"/v2/models/{MODEL}/generate_stream",
                                          {"text_input": prompt, "max_tokens": 16})
            text = "".join(json.loads(p)["text_output"] for p in payloads)
            check(text == solo[prompt], f"generate_stream {text!r}")
        curl = subprocess.run(
            ["curl", "-sS", "-N", f"http://127.0.0.1:{api.port}/v1/completions",
             "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json",
             "-d", json.dumps(completion(PROMPTS[0], stream=True))],
            capture_output=True, text=True, timeout=120)
        payloads = [l[6:] for l in curl.stdout.splitlines() if l.startswith("data: ")]
        check(stream_text(payloads)[0] == solo[PROMPTS[0]], f"curl: {curl.stdout[-300:]}")
        print("ok: streams, KServe infer/generate/generate_stream and curl agree")

        # Logprobs: greedy picks the most likely token; streamed values equal unstreamed ones.
        status, _, j = api.post("/v1/completions", completion(PROMPTS[0], logprobs=3))
        check(status == 200, f"logprobs: {status} {j}")
        lp = j["choices"][0]["logprobs"]
        n = j["usage"]["completion_tokens"]
        check(len(lp["tokens"]) == n and len(lp["token_logprobs"]) == n and
              len(lp["text_offset"]) == n, f"logprobs length: {lp}")
        for i in range(n):
            top = lp["top_logprobs"][i]
            check(len(top) <= 3 and lp["token_logprobs"][i] <= 0 and
                  abs(max(top.values()) - lp["token_logprobs"][i]) < 1e-6 and
                  lp["tokens"][i] in top, f"greedy token {i} is not the most likely: {lp}")
        status, payloads = api.stream("/v1/completions", completion(PROMPTS[0], logprobs=3,
                                                                    stream=True))
        streamed = [v for p in payloads[:-1] for c in json.loads(p)["choices"]
                    if c["logprobs"] for v in c["logprobs"]["token_logprobs"]]
        check(len(streamed) == n and all(abs(a - b) < 1e-6 for a, b in
                                          zip(streamed, lp["token_logprobs"])),
              f"streamed logprobs {streamed} != {lp['token_logprobs']}")
        status, _, j = api.post("/v1/chat/completions", {
            "messages": CONVERSATIONS[0], "max_tokens": 6, "temperature": 0, "logprobs": True,
            "top_logprobs": 2})
        content = j["choices"][0]["logprobs"]["content"]
        check(status == 200 and len(content) == j["usage"]["completion_tokens"] and
              all(len(c["top_logprobs"]) == 2 and c["top_logprobs"][0]["token"] == c["token"]
                  for c in content), f"chat logprobs: {j}")
        print(f"ok: logprobs of {n} greedy tokens name the most likely token, streamed or not")

        # 2. Chat templates: byte-identical to jinja2, ids per segment, answers as completions.
        sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(model, "tokenizer.model"))
        cases = [(MIXTRAL, c) for c in CONVERSATIONS + [SYSTEM]]
        cases += [(MIXTRAL_V01, c) for c in CONVERSATIONS] + [(CHATML, c) for c in CONVERSATIONS + [SYSTEM]]
        for template, messages in cases:
            want = render_jinja(template, messages)
            status, _, j = api.post("/tokenize", {"messages": messages, "chat_template": template})
            check(status == 200, f"tokenize: {status} {j}")
            check(j["prompt"] == want, f"render: {j['prompt']!r} != jinja2 {want!r}")
            check(j["tokens"] == segment_ids(sp, want), f"ids of {want!r}: {j['tokens']}")
        status, _, j = api.post("/tokenize", {"messages": SYSTEM, "chat_template": MIXTRAL_V01})
        check(status == 400 and j["error"]["param"] == "messages[0].role", f"v0.1 system: {j}")
        for messages in CONVERSATIONS + [SYSTEM]:
            ids = api.post("/tokenize", {"messages": messages})[2]["tokens"]
            status, _, j = api.post("/v1/chat/completions",
                                    {"model": MODEL, "messages": messages, "max_tokens": 12,
                                     "temperature": 0})
            check(status == 200, f"chat: {status} {j}")
            want = grpc_complete(ids=ids, max_tokens=12)
            check(j["choices"][0]["message"]["content"] == want.text,
                  f"chat {j['choices'][0]} != {want.text!r}")
            status, payloads = api.stream("/v1/chat/completions",
                                          {"messages": messages, "max_tokens": 12, "stream": True})
            check(json.loads(payloads[0])["choices"][0]["delta"]["role"] == "assistant", payloads[0])
            check(stream_text(payloads)[0] == want.text, "chat stream")
        print(f"ok: {len(cases)} chat renderings match jinja2; chat answers equal their prompts'")

        # 3. 64 concurrent streams, each as served alone.
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(64)]
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            results = list(pool.map(
                lambda p: api.stream("/v1/completions", completion(p, stream=True)), prompts))
        for p, (status, payloads) in zip(prompts, results):
            check(status == 200, f"concurrent: {status} {payloads}")
            check(stream_text(payloads)[0] == solo[p], f"concurrent {p!r}")
        print("ok: 64 concurrent streams equal the same requests served alone")

        # 4. 200 streams, every other one left after its second event.
        cancelled_before = api.metric('switchyard_request_finished_total{reason="cancelled"}') or 0
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(200)]
        with concurrent.futures.ThreadPoolExecutor(200) as pool:
            results = list(pool.map(
                # Those left get a long max_tokens and ignore EOS: they cannot end on their
                # own before the server notices.
                lambda ip: api.stream("/v1/completions",
                                      completion(ip[1], 300, stream=True, ignore_eos=True)
                                      if ip[0] % 2 else completion(ip[1], 48, stream=True),
                                      leave_after=2 if ip[0] % 2 else None),
                enumerate(prompts)))
        for i, (p, (status, payloads)) in enumerate(zip(prompts, results)):
            check(status == 200, f"stream {i}: {status} {payloads}")
            if i % 2 == 0:
                want = grpc_complete(p, max_tokens=48).text if i < 32 else None
                text, finish = stream_text(payloads)
                check(finish in ("length", "stop") and (want is None or text == want),
                      f"kept stream {i}: {text!r} {finish} != {want!r}")
        deadline = time.time() + 30
        while True:
            used = api.metric("switchyard_kv_blocks_used")
            running = api.metric("switchyard_requests_running")
            cancelled = api.metric('switchyard_request_finished_total{reason="cancelled"}') or 0
            if used == 0 and running == 0 and cancelled - cancelled_before == 100:
                break
            check(time.time() < deadline,
                  f"after 200 streams: kv used {used}, running {running}, "
                  f"cancelled {cancelled - cancelled_before} (want 0, 0, 100)")
            time.sleep(0.5)
        print("ok: 100 of 200 streams left mid-way were cancelled; KV back to idle")

        # Requests that do not stream, whose clients give up after 0.5 s: cancelled too.
        def give_up(i):
            conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=0.5)
            conn.request("POST", "/v1/completions",
                         body=json.dumps(completion(PROMPTS[i], 600, ignore_eos=True)),
                         headers={"Content-Type": "application/json",
                                  "Authorization": f"Bearer {TOKEN}"})
            try:
                conn.getresponse()
                return False
            except OSError:  # the timeout: leave
                conn.close()
                return True

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            left = sum(pool.map(give_up, range(16)))
        check(left == 16, f"{16 - left} of 16 long requests answered within 0.5 s")
        deadline = time.time() + 30
        while True:
            used = api.metric("switchyard_kv_blocks_used")
            cancelled = api.metric('switchyard_request_finished_total{reason="cancelled"}') or 0
            if used == 0 and cancelled - cancelled_before == 116:
                break
            check(time.time() < deadline, f"after 16 abandoned requests: kv used {used}, "
                  f"cancelled {cancelled - cancelled_before - 100} (want 0, 16)")
            time.sleep(0.5)
        print("ok: 16 requests whose clients gave up waiting were cancelled; KV back to idle")

        # 5. The bad-input table: (method, path, body, token, status, field or text).
        big = json.dumps({"prompt": "x" * (5 << 20)})
        table = [
            ("POST", "/v1/completions", "{not json", TOKEN, 400, "body: not valid JSON"),
            ("POST", "/v1/completions", "[1, 2]", TOKEN, 400, "body: must be a JSON object"),
            ("POST", "/tokenize", "[" * 1000000 + "]" * 1000000, TOKEN, 400, "nested deeper"),
            ("POST", f"/v2/models/{MODEL}/infer", '{"inputs": ' + "[" * 100000 + "]" * 100000 + "}",
             TOKEN, 400, "nested deeper"),
            ("POST", "/tokenize", {"model": 5, "prompt": "a"}, TOKEN, 400, "model"),
            ("POST", "/v1/completions", b'{"prompt": "\xff\xfe"}', TOKEN, 400, "ill-formed UTF-8"),
            ("POST", "/v1/completions", {"prompt": 7}, TOKEN, 400, "prompt"),
            ("POST", "/v1/completions", {"prompt": "a", "max_tokens": "9"}, TOKEN, 400, "max_tokens"),
            ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 99999}, TOKEN, 400, "max_tokens"),
            ("POST", "/v1/completions", {"prompt": "a", "temperature": -1}, TOKEN, 400, "temperature"),
            ("POST", "/v1/completions", {"prompt": "a", "top_p": 2}, TOKEN, 400, "top_p"),
            ("POST", "/v1/completions", {"prompt": "a", "n": 2}, TOKEN, 400, "n"),
            ("POST", "/v1/completions", {"prompt": "a", "logprobs": 6}, TOKEN, 400, "logprobs"),
            ("POST", "/v1/completions", {"prompt": [1, 70000]}, TOKEN, 400, "prompt[1]"),
            ("POST", "/v1/completions", {"prompt": "a", "stop": ["x"] * 9}, TOKEN, 400, "stop"),
            ("POST", "/v1/completions", {"prompt": "a", "model": "gpt-4"}, TOKEN, 404, "model"),
            ("POST", "/v1/chat/completions", {"messages": []}, TOKEN, 400, "messages"),
            ("POST", "/v1/chat/completions", {"messages": [{"role": "pirate", "content": "a"}]},
             TOKEN, 400, "messages[0].role"),
            ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}],
                                              "tools": [{"type": "function"}]}, TOKEN, 400, "tools"),
            ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}],
                                              "logprobs": True, "top_logprobs": 21}, TOKEN, 400,
             "top_logprobs"),
            ("POST", "/v1/completions", {"prompt": "a"}, None, 401, "authorization"),
            ("POST", "/v1/completions", {"prompt": "a"}, "wrong", 401, "invalid bearer token"),
            ("POST", "/v1/completions", big, TOKEN, 413, "larger than"),
            ("GET", "/v1/completions", None, TOKEN, 404, "unknown route"),
            ("POST", f"/v2/models/{MODEL}/infer", {"inputs": [], "priority": 1}, TOKEN, 400,
             "priority"),
            ("POST", f"/v2/models/{MODEL}/generate", {"text_input": ""}, TOKEN, 400, "text_input"),
            ("POST", "/v2/models/other/generate", {"text_input": "a"}, TOKEN, 404, "unknown model"),
        ]
        for method, path, body, token, want_status, want in table:
            status, headers, text = api.request(method, path, body, token=token)
            check(status == want_status, f"{method} {path} {str(body)[:80]}: {status} {text[:300]}")
            j = json.loads(text)
            err = j["error"]
            if isinstance(err, dict):  # the OpenAI form
                check(err.get("param") == want or want in err["message"], f"{path}: {err}")
            else:
                check(want in err, f"{path}: {err}")
            check(headers.get("x-request-id"), f"{path}: no x-request-id")
        print(f"ok: {len(table)} bad inputs refused with their status and field")
        ok = True
    finally:
        stop = subprocess.run([CLUSTER, "stop", cluster], capture_output=True, text=True)
        log = open(os.path.join(cluster, "log")).read()
        if not ok:
            print(log[-3000:])
    check(stop.returncode == 0, f"cluster stop: {stop.stdout} {stop.stderr}")
    check(re.search(r"access: id=\S+ peer=\S+ method=POST /v1/completions status=200", log),
          "no access-log line for POST /v1/completions")
    print("PASS")


if __name__ == "__main__":
    main()
