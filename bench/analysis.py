#!/usr/bin/env python
"""Cost of request analysis (routing.analysis.analyse): one process, no server, no database.

    .venv/bin/python bench/analysis.py [--rounds 20] [--calibrate]

1. Typical prompts: every request of the labelled set (routing/analysis_data/*.jsonl), analysed --rounds times
   after one warm-up round; p50, p99 and max of the single calls, for the whole set and for its short (< 1,000
   characters) and long requests. Targets: p50 <= 0.2 ms, p99 <= 1 ms.
2. 100k-token prompts (~400,000 characters, instruction at the end): English prose on one line, prose in
   paragraphs, prose around a pasted code block, and Chinese. Target: <= 2 ms.
3. With --calibrate (needs tiktoken and its cl100k_base/o200k_base files, which litellm ships): the token
   estimate against the real counts on the labelled set, as the median and p10-p90 of estimate / real.

Times are wall-clock per call (time.perf_counter_ns) with the garbage collector on, as in the gateway. The machine
is shared, so a busy neighbour shows in p99 and max first. Percentiles are nearest-rank.
"""

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from routing.analysis import analyse, estimate_prompt_tokens  # noqa: E402

DATA = ROOT / "routing" / "analysis_data"
SHORT_CHARS = 1000


def percentile(sorted_values, p):
    """Return the nearest-rank p-th percentile of an ascending list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def load_bodies():
    """Return the request bodies of the labelled set."""
    bodies = []
    for name in ("tune.jsonl", "heldout.jsonl"):
        with open(DATA / name, encoding="utf-8") as f:
            bodies.extend(json.loads(line)["body"] for line in f if line.strip())
    return bodies


def body_chars(body):
    """Return the characters of text in a body's messages."""
    return sum(len(m["content"]) for m in body["messages"] if isinstance(m.get("content"), str))


def time_calls(bodies, rounds):
    """Return the sorted per-call times in microseconds, after one warm-up round."""
    for body in bodies:
        analyse(body)
    times = []
    for _ in range(rounds):
        for body in bodies:
            start = time.perf_counter_ns()
            analyse(body)
            times.append((time.perf_counter_ns() - start) / 1000)
    times.sort()
    return times


def row(name, times, extra=""):
    """Print one line of figures."""
    print(
        f"  {name:<34} n={len(times):>6}  p50 {percentile(times, 50):7.1f} us  p99 {percentile(times, 99):7.1f} us"
        f"  max {times[-1]:8.1f} us{extra}"
    )


def huge_prompts():
    """Return {name: body} for prompts of about 100k tokens (400,000 characters), the ask at the end."""
    sentence = "Revenue grew steadily in every region during the quarter under review, led by the north. "
    one_line = sentence * 4500
    paragraphs = "\n\n".join([sentence * 4] * 1125)
    code = "```python\n" + "def total(items):\n    return sum(i.price for i in items)\n\n" * 6500 + "```\n"
    chinese = "本季度各地区的收入稳步增长，其中北部地区增长最快。" * 4000
    ask = "\n\nSummarize the report above in five bullet points."
    return {
        "english, one line": one_line + ask,
        "english, 1,125 paragraphs": paragraphs + ask,
        "pasted code, 19,500 lines": "Review this module for bugs:\n\n" + code,
        "chinese, 100k characters": chinese + "\n\n请总结上面的报告。",
    }


def calibrate(bodies):
    """Print the token estimate against tiktoken's counts, per script."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", _litellm_tokenizer_dir())
    import tiktoken

    groups = {}
    for name in ("cl100k_base", "o200k_base"):
        encoding = tiktoken.get_encoding(name)
        for body in bodies:
            text = " ".join(m["content"] for m in body["messages"])
            real = 3 + sum(4 + len(encoding.encode(m["content"])) for m in body["messages"])
            groups.setdefault((_script(text), name), []).append(estimate_prompt_tokens(body) / real)
    print("\nToken estimate / real tokens (median, p10-p90):")
    for (script, name), ratios in sorted(groups.items()):
        ratios.sort()
        print(
            f"  {script:<22} {name:<12} n={len(ratios):>3}  median {percentile(ratios, 50):.2f}"
            f"  p10-p90 {percentile(ratios, 10):.2f}-{percentile(ratios, 90):.2f}"
        )


def _script(text):
    """Return the script group of a text: ascii, cjk, cyrillic or other latin."""
    if text.isascii():
        return "ascii"
    if any("\u3040" <= char <= "\u9fff" or "\uac00" <= char <= "\ud7af" for char in text):
        return "cjk"
    if any("\u0400" <= char <= "\u04ff" for char in text):
        return "cyrillic"
    return "latin with accents"


def _litellm_tokenizer_dir():
    """Return the directory where litellm keeps tiktoken's files (so no download is needed)."""
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    return str(Path(spec.origin).parent / "litellm_core_utils" / "tokenizers")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args()
    bodies = load_bodies()
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"\nTypical prompts: the labelled set, {len(bodies)} requests x {args.rounds} rounds")
    short = [body for body in bodies if body_chars(body) < SHORT_CHARS]
    long = [body for body in bodies if body_chars(body) >= SHORT_CHARS]
    row("all", time_calls(bodies, args.rounds))
    row(f"short (< {SHORT_CHARS:,} chars, {len(short)})", time_calls(short, args.rounds))
    row(f"long (>= {SHORT_CHARS:,} chars, {len(long)})", time_calls(long, args.rounds))
    print("\n100k-token prompts (200 calls each)")
    for name, text in huge_prompts().items():
        body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        times = time_calls([body], 200)
        result = analyse(body)
        row(name, times, f"  ({len(text):,} chars, ~{result.prompt_tokens:,} tokens, {result.context_type})")
    if args.calibrate:
        calibrate(bodies)


if __name__ == "__main__":
    main()
