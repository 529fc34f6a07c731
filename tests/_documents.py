"""Hypothesis strategies for workflows and documents, shared by the I/O tests."""

from __future__ import annotations

import keyword
from typing import Any

import attrs
from hypothesis import strategies as st

import _sample_tools as sample
import plait

KINDS = ("call", "sequential", "parallel", "map_reduce")
EXPRESSION_KEYS = ("var", "lit", "fn")

identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True).filter(
    lambda s: not keyword.iskeyword(s)
)

# Text that YAML and JSON must carry unchanged: anything but lone surrogates,
# plus strings that look like YAML or like plait expressions.
texts = st.text(st.characters(codec="utf-8"), max_size=10) | st.sampled_from(
    [
        "${x}",
        "$${x}",
        "$$${x.y}",
        "${",
        "$",
        "yes",
        "off",
        "null",
        "~",
        "1.0",
        "0x1f",
        "- a",
        "a: b",
        "#c",
        "",
        " lead",
        "trail ",
        "multi\nline\n",
        "2024-01-02",
        "'quoted'",
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
plain_keys = texts.filter(lambda k: k not in EXPRESSION_KEYS)

# Plain data whose mappings hold no var/lit/fn key: what a document keeps as is.
plain_data = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(plain_keys, inner, max_size=3)
    ),
    max_leaves=8,
)
# Any JSON-like data, for Lit (which keeps mappings with var/lit/fn keys too).
any_data = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            plain_keys | st.sampled_from(EXPRESSION_KEYS), inner, max_size=3
        )
    ),
    max_leaves=8,
)

var_parts = (
    identifiers
    | st.integers(0, 20).map(str)
    | st.sampled_from(["full name", "a-b", "$x", "{y}", "-1"])
)
variables = st.lists(var_parts, min_size=1, max_size=3).map(
    lambda parts: plait.Var(".".join(parts))
)
functions = st.sampled_from(["len", "upper", sample.join, sample.add])


def expressions() -> st.SearchStrategy[Any]:
    leaves = scalars | variables | st.builds(plait.Lit, any_data)
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(plain_keys, inner, max_size=3)
            | st.builds(
                lambda fn, args: plait.Fn(fn, *args),
                functions,
                st.lists(inner, max_size=3),
            )
        ),
        max_leaves=6,
    )


retries = st.builds(
    plait.Retry,
    attempts=st.integers(1, 5),
    backoff=st.floats(1, 10),
    initial_delay=st.floats(0, 5),
    max_delay=st.floats(0, 60),
    jitter=st.booleans(),
    retry_on=st.sampled_from(
        [
            (OSError, TimeoutError),
            (ValueError,),
            (sample.Flaky, OSError),
            (),
            (plait.ToolTimeout,),
            sample.is_transient,
        ]
    ),
)
rate_limits = st.builds(
    plait.RateLimit,
    rate=st.floats(0.1, 100),
    per=st.sampled_from([1.0, 0.5, 60]),
    burst=st.none() | st.integers(1, 10),
)
timeouts = st.none() | st.floats(0.001, 1e6) | st.integers(1, 100)
step_names = st.none() | identifiers


@st.composite
def tool_palettes(draw: st.DrawFn) -> list[str | plait.Tool]:
    """Call targets for one workflow: names, and tools with distinct names."""
    limited = attrs.evolve(
        sample.double,
        name="limited",
        concurrency_limit=draw(st.none() | st.integers(1, 8)),
        retry=draw(st.none() | retries),
        rate_limit=draw(st.none() | rate_limits),
    )
    return [
        "search",
        "fetch",
        sample.double,
        sample.shout,
        plait.Tool.of(sample.greet),
        attrs.evolve(sample.double, name="twice"),
        attrs.evolve(sample.shout, name="shout_fast", timeout=None, retry=None),
        limited,
    ]


@st.composite
def steps(
    draw: st.DrawFn, palette: list[str | plait.Tool], depth: int = 0, root: bool = False
) -> plait.Step:
    kind = draw(st.sampled_from(KINDS if depth < 3 else ("call",)))
    name = None if root else draw(step_names)
    timeout = draw(timeouts)
    child = steps(palette, depth + 1)
    if kind == "call":
        args = draw(st.lists(expressions(), max_size=3))
        kwargs = draw(st.dictionaries(texts, expressions(), max_size=3))
        return plait.Call(
            draw(st.sampled_from(palette)),
            *args,
            name=name,
            timeout=timeout,
            retry=draw(st.none() | retries),
            arguments=kwargs,
        )
    if kind == "sequential":
        return plait.Sequential(
            *draw(st.lists(child, min_size=1, max_size=3)), name=name, timeout=timeout
        )
    if kind == "parallel":
        on_error = draw(st.sampled_from(["raise", "collect"]))
        if draw(st.booleans()):
            branches = draw(
                st.dictionaries(texts.filter(bool), child, min_size=1, max_size=3)
            )
            return plait.Parallel(
                branches, name=name, timeout=timeout, on_error=on_error
            )
        return plait.Parallel(
            *draw(st.lists(child, min_size=1, max_size=3)),
            name=name,
            timeout=timeout,
            on_error=on_error,
        )
    return plait.MapReduce(
        draw(expressions()),
        draw(child),
        reduce=draw(st.none() | st.sampled_from(["total", sample.add])),
        initial=draw(st.none() | expressions()),
        max_concurrency=draw(st.none() | st.integers(1, 64)),
        ordered=draw(st.booleans()),
        item=draw(identifiers),
        on_error=draw(st.sampled_from(["raise", "collect"])),
        name=name,
        timeout=timeout,
    )


@st.composite
def workflows(draw: st.DrawFn) -> plait.Workflow:
    palette = draw(tool_palettes())
    return plait.Workflow(
        draw(steps(palette, root=True)),
        name=draw(st.none() | texts),
        inputs=tuple(draw(st.lists(identifiers, unique=True, max_size=3))),
        description=draw(st.none() | texts),
    )


# A valid document that uses every kind of step and most keys.
SAMPLE_YAML = """\
name: word lengths
description: fetch pages, measure them, greet the result
inputs: [urls, who]
tools:
  loud: "_sample_tools:shout"
  twice:
    import: "_sample_tools:double"
    concurrency_limit: 4
    timeout: 10
    retry: {attempts: 5, backoff: 1.5, retry_on: [OSError, "_sample_tools:Flaky"]}
    rate_limit: {rate: 20, per: 1}
functions:
  plus: "_sample_tools:add"
kind: sequential
steps:
  - kind: map_reduce
    over: ${urls}
    map:
      kind: call
      tool: "_sample_tools:fetch"
      args: ["${item}"]
    reduce: plus
    initial: 0
    max_concurrency: 8
    name: total
  - kind: parallel
    on_error: collect
    steps:
      doubled: {kind: call, tool: twice, args: {x: "${total}"}}
      greeting:
        kind: call
        tool: "_sample_tools:greet"
        args: [{fn: "_sample_tools:join", args: ["${who}", " & co"]}]
        kwargs: {punctuation: "$${not a var}"}
        timeout: 2.5
      loud: {kind: call, tool: loud, args: ["${who}"]}
"""
