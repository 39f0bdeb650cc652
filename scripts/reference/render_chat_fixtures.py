#!/usr/bin/env python3
"""Render the chat template fixtures with Python Jinja2 exactly like
transformers' apply_chat_template does, and write the expected outputs that
engine/chat's Go tests compare against.

Inputs:  testdata/chat/models/<model>/tokenizer_config.json (+ chat_template.*)
Outputs: testdata/chat/expected/<model>.json, testdata/chat/features.json

Only needs Jinja2 (Debian: apt-get install -y python3-jinja2); transformers is
not required: its environment is reproduced below (see
transformers/utils/chat_template_utils.py, _compile_jinja_template).

Usage: python3 scripts/reference/render_chat_fixtures.py [repo-root]
"""

import json
import os
import sys
from datetime import datetime, timezone

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Fixed clock for strftime_now so outputs are deterministic. The Go tests use
# the same instant (RenderOptions.Now).
NOW = datetime(2024, 9, 5, 14, 3, 7, tzinfo=timezone.utc)
NOW_RFC3339 = "2024-09-05T14:03:07Z"


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return NOW.strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def token(v):
    if isinstance(v, dict):
        return v["content"]
    return v


def load(model_dir):
    """Mirror of engine/chat.LoadTemplate's lookup order."""
    with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    p = os.path.join(model_dir, "chat_template.jinja")
    if os.path.exists(p):
        src = open(p).read()
    elif os.path.exists(os.path.join(model_dir, "chat_template.json")):
        src = json.load(open(os.path.join(model_dir, "chat_template.json")))["chat_template"]
    else:
        src = cfg.get("chat_template")
        if isinstance(src, list):
            src = {t["name"]: t["template"] for t in src}["default"]
    return src, token(cfg.get("bos_token")), token(cfg.get("eos_token"))


def render(env, src, bos, eos, messages, add_generation_prompt, extra):
    kwargs = {}
    # HF passes the tokenizer's special tokens; unset ones are not passed.
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    kwargs.update(extra)
    tpl = env.from_string(src)
    return tpl.render(messages=messages, tools=kwargs.pop("tools", None),
                      documents=kwargs.pop("documents", None),
                      add_generation_prompt=add_generation_prompt, **kwargs)


SYS = {"role": "system", "content": "You are a terse assistant."}
U1 = {"role": "user", "content": "  What is 2+2?\n"}
A1 = {"role": "assistant", "content": "4."}
U2 = {"role": "user", "content": "And times 3?"}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. Zürich"}},
            "required": ["city"],
        },
    },
}

COMMON = [
    ("user", [U1], {}),
    ("user-assistant-user", [U1, A1, U2], {}),
]
WITH_SYSTEM = [("system-user-assistant", [SYS, U1, A1], {})]
ALTERNATION_ERROR = [("bad-alternation", [U1, U2], {})]

CASES = {
    "llama-2-chat": COMMON + WITH_SYSTEM + ALTERNATION_ERROR,
    "mistral-7b-instruct-v0.2": COMMON + ALTERNATION_ERROR + [
        ("system-unsupported", [SYS, U1], {}),
    ],
    "llama-3-instruct": COMMON + WITH_SYSTEM,
    "llama-3.2-instruct": COMMON + WITH_SYSTEM + [
        ("date-string", [U1], {"date_string": "01 Jan 2025"}),
        ("tools", [SYS, {"role": "user", "content": "Weather in Zürich?"}], {"tools": [WEATHER_TOOL]}),
        ("tools-in-system", [{"role": "user", "content": "Weather in Zürich?"}],
         {"tools": [WEATHER_TOOL], "tools_in_user_message": False}),
        ("tool-call-and-result", [
            {"role": "user", "content": "Weather in Zürich?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}]},
            {"role": "tool", "content": "{\"temp\": 21.5}"},
        ], {}),
    ],
    "qwen2-instruct": COMMON + WITH_SYSTEM,
    "gemma-2-it": COMMON + ALTERNATION_ERROR + [
        ("system-unsupported", [SYS, U1], {}),
    ],
    "smollm2-instruct": COMMON + WITH_SYSTEM,
    "list-form": COMMON,
    "jinja-file": COMMON,
    "json-file": COMMON,
}

# Small templates exercising the Python-isms HF templates rely on. "vars" are
# extra variables. Each is rendered with the HF environment.
FEATURES = [
    ("index-and-slice", "{{ messages[0]['role'] }}|{{ messages[1:] | length }}|{{ messages[-1].content }}", {}),
    ("negative-index-single", "{{ messages[-1]['role'] }}", {"messages": [{"role": "user", "content": "x"}]}),
    ("trim-filter-precedence", "{{ 'a' + messages[0]['content'] | trim + 'b' }}", {}),
    ("loop-vars", "{% for m in messages %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}{% if not loop.last %},{% endif %}{% endfor %}", {}),
    ("loop-length-revindex", "{% for m in messages %}{{ loop.length }}{{ loop.revindex0 }}{% endfor %}", {}),
    ("namespace", "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'assistant' %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.found }} {{ ns.n }}", {}),
    ("str-strip", "[{{ '  x y \n'.strip() }}][{{ '  x'.lstrip() }}][{{ 'x  '.rstrip() }}][{{ 'xxaxx'.strip('x') }}]", {}),
    ("str-startswith-endswith", "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }}", {}),
    ("str-split", "{{ 'a,b,c'.split(',') | join('|') }} {{ 'a b  c'.split() | length }} {{ 'k=v=w'.split('=', 1)[1] }}", {}),
    ("str-case", "{{ 'Hello World'.upper() }} {{ 'Hello World'.lower() }} {{ 'hello world'.title() }} {{ 'hello'.capitalize() }}", {}),
    ("str-replace", "{{ 'a-b-c'.replace('-', '+') }} {{ 'a-b-c' | replace('-', '') }}", {}),
    ("str-find-count", "{{ 'banana'.find('an') }} {{ 'banana'.count('a') }}", {}),
    ("tojson-basic", "{{ {'b': 1, 'a': [1, 2.5, 'é', none, true]} | tojson }}", {}),
    ("tojson-indent", "{{ {'b': {'c': []}, 'a': [1, {}]} | tojson(indent=2) }}", {}),
    ("tojson-string-escapes", "{{ 'quote\" back\\\\ nl\n tab\t <&>' | tojson }}", {}),
    ("tojson-var-order", "{{ tools | tojson }}", {"tools": [WEATHER_TOOL]}),
    ("whitespace-control", "a  {%- if true -%}  b  {%- endif -%}  c\n{{- ' d ' -}}\n e", {}),
    ("trim-lstrip-blocks", "x\n    {% if true %}\n    y\n    {% endif %}\nz", {}),
    ("is-defined", "{{ foo is defined }} {{ messages is defined }} {{ bos_token is defined }} {% if not foo is defined %}nofoo{% endif %}", {}),
    ("is-none", "{{ tools is none }} {{ tools is not none }}", {}),
    ("is-string-mapping", "{{ messages[0].content is string }} {{ messages[0] is mapping }} {{ messages is iterable }} {{ messages is sequence }}", {}),
    ("in-operator", "{{ 'role' in messages[0] }} {{ 'tool_calls' in messages[0] }} {{ 'ell' in 'hello' }} {{ 2 in [1, 2] }}", {}),
    ("string-concat", "{{ 'a' + 'b' ~ 1 }}", {}),
    ("conditional-expr", "{{ 'yes' if messages | length > 1 else 'no' }}", {}),
    ("dict-get-items", "{{ messages[0].get('name', 'anon') }} {% for k, v in {'x': 1, 'y': 2}.items() %}{{ k }}={{ v }};{% endfor %}", {}),
    ("items-filter", "{% for k, v in {'x': 1, 'y': 2} | items %}{{ k }}={{ v }};{% endfor %}", {}),
    ("set-block", "{% set x %}hi {{ messages | length }}{% endset %}[{{ x }}]", {}),
    ("loopcontrols", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("selectattr-map", "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('/') }}", {}),
    ("macro", "{% macro r(m) %}<{{ m.role }}>{% endmacro %}{% for m in messages %}{{ r(m) }}{% endfor %}", {}),
    ("modulo-compare", "{% for m in messages %}{{ (m.role == 'user') != (loop.index0 % 2 == 0) }}{% endfor %}", {}),
    ("strftime-now", "{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%A %B %-d') }}", {}),
    ("raise-exception", "{{ raise_exception('boom: ' + messages[0].role) }}", {}),
    ("string-literal-escapes", "{{ 'a\\nb\\tc' }}|{{ \"it's\" }}", {}),
    ("length-filters", "{{ messages | length }} {{ 'abc' | length }} {{ messages | first | attr('role') }} {{ (messages | last).role }}", {}),
    ("default-filter", "{{ foo | default('dflt') }} {{ none | default('x', true) }}", {}),
    ("join-map-upper", "{{ messages | map(attribute='role') | map('upper') | join(', ') }}", {}),
    ("none-rendering", "[{{ none }}][{{ tools }}]", {}),
]

FEATURE_MESSAGES = [
    {"role": "user", "content": "  Hi there \n"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]


def run_case(env, src, bos, eos, messages, agp, extra):
    out = {"messages": messages, "add_generation_prompt": agp, "extra": extra}
    try:
        out["expected"] = render(env, src, bos, eos, messages, agp, dict(extra))
    except jinja2.exceptions.TemplateError as e:
        out["error"] = str(e)
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    base = os.path.join(root, "testdata", "chat")
    env = make_env()
    os.makedirs(os.path.join(base, "expected"), exist_ok=True)
    for model, cases in CASES.items():
        src, bos, eos = load(os.path.join(base, "models", model))
        out = {"model": model, "now": NOW_RFC3339, "jinja2_version": jinja2.__version__, "cases": []}
        for name, messages, extra in cases:
            for agp in (False, True):
                c = run_case(env, src, bos, eos, messages, agp, extra)
                c["name"] = f"{name}/agp={str(agp).lower()}"
                out["cases"].append(c)
        with open(os.path.join(base, "expected", model + ".json"), "w") as f:
            json.dump(out, f, indent=2, ensure_ascii=False)
            f.write("\n")

    feats = {"now": NOW_RFC3339, "jinja2_version": jinja2.__version__, "messages": FEATURE_MESSAGES, "cases": []}
    for name, src, variables in FEATURES:
        v = {"messages": FEATURE_MESSAGES, "bos_token": "<s>", "eos_token": "</s>",
             "add_generation_prompt": False, "tools": None, "documents": None}
        v.update(variables)
        c = {"name": name, "template": src, "vars": variables}
        try:
            c["expected"] = env.from_string(src).render(**v)
        except jinja2.exceptions.TemplateError as e:
            c["error"] = str(e)
        feats["cases"].append(c)
    with open(os.path.join(base, "features.json"), "w") as f:
        json.dump(feats, f, indent=2, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
