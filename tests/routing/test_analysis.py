"""Unit tests for routing.analysis: context type, confidence, requirements and the token estimate (no DB)."""

import ast
import json
from collections import Counter
from pathlib import Path

import pytest

from routing import analysis
from routing.analysis import CONTEXT_TYPES, LOW_CONFIDENCE, analyse

DATA = Path(analysis.__file__).resolve().parent / "analysis_data"

# The level reached on the held-out prompts when the rules were frozen (docs/analysis.md): correct answers per type
# out of 13, 110 of 117 overall. A change that loses any of them fails here; one that gains some should raise these.
HELD_OUT_CORRECT = {
    "code_generation": 11,
    "code_review": 13,
    "math": 12,
    "analysis": 11,
    "creative_writing": 11,
    "summarization": 13,
    "translation": 13,
    "question_answering": 13,
    "general_chat": 13,
}


def load(name):
    """Return the labelled records of one JSONL file."""
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def correct_per_type(records):
    """Return {label: how many records analyse() gives that label}."""
    return Counter(record["label"] for record in records if analyse(record["body"]).context_type == record["label"])


def chat(*turns, system=None, **extra):
    """Return a chat request body whose turns alternate user, assistant, user, ..."""
    messages = [{"role": "system", "content": system}] if system else []
    for index, text in enumerate(turns):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": text})
    return {"model": "auto", "messages": messages, **extra}


ARTICLE = (
    "The harbour town of Kelmore has relied on fishing for three centuries. In recent years the catch has fallen, "
    "and the council has tried to attract visitors with a summer festival, a new ferry link and a museum of "
    "maritime history. Local opinion is divided: some residents welcome the visitors, others worry about rents. "
)


def test_the_labelled_set_is_large_varied_and_split():
    records = load("tune.jsonl") + load("heldout.jsonl")
    labels = Counter(record["label"] for record in records)
    assert len(records) >= 300
    assert set(labels) == set(CONTEXT_TYPES) and min(labels.values()) >= 25
    assert len({record["id"] for record in records}) == len(records)
    held_out = [record for record in records if record["split"] == "heldout"]
    assert len(held_out) / len(records) >= 0.30


def test_held_out_accuracy_stays_at_the_level_reached():
    records = load("heldout.jsonl")
    correct = correct_per_type(records)
    assert sum(correct.values()) >= sum(HELD_OUT_CORRECT.values())  # 110 / 117 = 94.0 %
    for label, reached in HELD_OUT_CORRECT.items():
        assert correct[label] >= reached, label


def test_tune_accuracy_stays_at_the_level_reached():
    records = load("tune.jsonl")
    correct = correct_per_type(records)
    assert dict(correct) == Counter(record["label"] for record in records)  # 270 / 270


@pytest.mark.parametrize(
    "body, expected",
    [
        (chat("hi", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), ("tools",)),
        (chat("hi", functions=[{"name": "f", "parameters": {}}]), ("tools",)),
        (chat("hi", tool_choice="auto"), ("tools",)),
        (
            {
                "messages": [
                    {"role": "user", "content": "weather?"},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
                    {"role": "tool", "tool_call_id": "1", "content": "sunny"},
                ]
            },
            ("tools",),
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
            ("vision",),
        ),
        ({"messages": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}, ("vision",)),
        (chat("hi", response_format={"type": "json_object"}), ("json",)),
        (chat("hi", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}), ("json",)),
        (chat("hi", response_format={"type": "text"}), ()),
        (chat("hi", stream=True), ("streaming",)),
        (chat("hi", stream=False), ()),
        (
            {
                "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                          {"type": "image_url", "image_url": {"url": "data:,"}}]}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "response_format": {"type": "json_object"},
                "stream": True,
            },
            ("tools", "vision", "json", "streaming"),
        ),
    ],
)
def test_it_detects_requirements(body, expected):
    assert analyse(body).requirements == expected


def test_prompt_tokens_follow_the_documented_estimate():
    ascii_body = {"messages": [{"role": "user", "content": "a" * 400}]}
    assert analyse(ascii_body).prompt_tokens == 3 + 4 + 100  # reply priming + one message + 400 chars / 4
    cjk_body = {"messages": [{"role": "user", "content": "翻译" * 50}]}
    assert analyse(cjk_body).prompt_tokens == 3 + 4 + 100  # one token per CJK character
    cyrillic_body = {"messages": [{"role": "user", "content": "д" * 250}]}
    assert analyse(cyrillic_body).prompt_tokens == 3 + 4 + 100  # 2.5 characters per token
    image_body = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,", "detail": "low"}}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]},
        ]
    }
    assert analyse(image_body).prompt_tokens == 3 + 2 * 4 + 85 + 765


def test_needed_window_adds_the_output_budget():
    body = {"messages": [{"role": "user", "content": "a" * 400}]}
    assert analyse(body).needed_context_window == 107
    assert analyse({**body, "max_tokens": 500}).needed_context_window == 607
    assert analyse({**body, "max_completion_tokens": 300, "max_tokens": 500}).needed_context_window == 407
    assert analyse({**body, "max_tokens": True}).needed_context_window == 107  # not a number of tokens


def test_tools_count_towards_the_prompt():
    body = chat("hi")
    tools = [{"type": "function", "function": {"name": "lookup", "description": "x" * 400, "parameters": {}}}]
    assert analyse({**body, "tools": tools}).prompt_tokens > analyse(body).prompt_tokens + 100


def test_low_confidence_falls_back_to_general_chat_and_keeps_the_guess():
    result = analyse(chat("Translate and summarize this."))  # two tasks named with equal weight: a tie
    assert result.low_confidence and result.confidence < LOW_CONFIDENCE
    assert result.context_type == "general_chat"
    assert result.detected_type in ("translation", "summarization")
    confident = analyse(chat("Translate this into German: the train leaves at eight."))
    assert not confident.low_confidence and confident.context_type == confident.detected_type == "translation"


def test_a_request_without_any_cue_is_low_confidence_chat():
    result = analyse(chat("Plan a 5-day itinerary for Rome."))
    assert (result.context_type, result.low_confidence) == ("general_chat", True)


@pytest.mark.parametrize("last", ["thanks!", "ok, makes sense", "go on", "cool thx", "谢谢", "danke"])
def test_a_trivial_last_turn_is_skipped_for_the_task_before_it(last):
    task = "Write a Python function that merges two sorted lists."
    result = analyse(chat(task, "def merge(a, b): ...", last))
    alone = analyse(chat(task))
    assert result.context_type == "code_generation"
    assert (result.confidence, result.signals) == (alone.confidence, alone.signals)


def test_several_trivial_turns_look_further_back():
    body = chat("Summarise this article: " + ARTICLE, "Kelmore is trying tourism.", "thanks", "np", "ok")
    assert analyse(body).context_type == "summarization"


def test_a_short_follow_up_borrows_the_previous_task():
    assert analyse(chat("Translate 'cheers' to German.", "Prost!", "and in Spanish?")).context_type == "translation"
    follow_up = "What about 'see you tomorrow'?"
    assert analyse(chat(follow_up)).context_type == "question_answering"
    assert analyse(chat("Translate 'cheers' to German.", "Prost!", follow_up)).context_type == "translation"


def test_a_system_prompt_that_names_the_task_decides_a_bare_user_turn():
    text = "The meeting moved to Thursday at ten."
    assert analyse(chat(text)).context_type == "general_chat"
    body = chat(text, system="You translate everything the user writes into French.")
    assert analyse(body).context_type == "translation"


def test_the_instruction_at_the_end_of_a_long_pasted_document_decides():
    document = (ARTICLE + "A local poet wrote a story and a song about the festival.\n\n") * 30
    assert analyse(chat(document + "Translate the text above into Italian.")).context_type == "translation"
    assert analyse(chat(document + "Give me the key points in three bullets.")).context_type == "summarization"
    assert analyse(chat("Summarize the following:\n\n" + document)).context_type == "summarization"


@pytest.mark.parametrize(
    "code",
    [
        "func main() {\n    for i := 0; i < 3; i++ {\n        go func() { fmt.Println(i) }()\n    }\n}",
        "fn main() {\n    let v = vec![1, 2];\n    let first = &v[0];\n    v.push(3);\n}",
        "SELECT name, COUNT(*)\nFROM orders\nWHERE total > 10\nGROUP BY name;",
        "#!/bin/bash\nDIR=$1\nrm -rf $DIR/*\necho \"done\"",
        "```\n(defun square (x)\n  (* x x))\n```",
    ],
)
def test_code_in_any_language_is_reviewed_or_changed(code):
    assert analyse(chat(code + "\n\nWhat is wrong with this?")).context_type == "code_review"
    assert analyse(chat(code + "\n\nRewrite this in Python.")).context_type == "code_generation"


def test_technical_words_alone_name_the_topic_not_the_task():
    assert analyse(chat("Compare Python and Go for a CLI tool.")).context_type == "analysis"
    assert analyse(chat("Write a Go CLI tool that prints the date.")).context_type == "code_generation"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Traduis en allemand : je suis en retard.", "translation"),
        ("Übersetze ins Englische: Ich komme morgen.", "translation"),
        ("把这句话翻译成英文：我们明天见。", "translation"),
        ("Resume este texto en dos frases: " + ARTICLE, "summarization"),
        ("Fasse den Text zusammen: " + ARTICLE, "summarization"),
        ("Écris un poème sur la mer.", "creative_writing"),
        ("Löse die Gleichung 2x + 3 = 11.", "math"),
        ("Проанализируй плюсы и минусы удалённой работы.", "analysis"),
        ("Hola, ¿qué tal?", "general_chat"),
    ],
)
def test_it_understands_other_languages(text, expected):
    assert analyse(chat(text)).context_type == expected


def test_a_100k_token_prompt_is_read_in_a_bounded_window():
    filler = "Le chiffre d'affaires a progressé dans toutes les régions au cours du trimestre étudié. " * 2300
    middle = "\n\n```python\ndef poem():\n    return 'Write a poem about the sea.'\n```\n\n"
    body = chat(filler + middle + filler + "\n\nSummarize the report above.", max_tokens=1000)
    result = analyse(body)
    # Only both ends of the turn are read: the code and the cues buried in the middle never are.
    assert result.context_type == "summarization"
    assert 90_000 < result.prompt_tokens < 110_000  # the estimate covers the whole text (~400k characters)
    assert result.needed_context_window == result.prompt_tokens + 1000


def test_equal_inputs_give_equal_analyses():
    body = chat("Compare Python and Go for a CLI tool.", system="Be brief.", stream=True, max_tokens=100)
    reordered = {key: body[key] for key in reversed(list(body))}
    reordered["messages"] = [{key: m[key] for key in reversed(list(m))} for m in body["messages"]]
    first = analyse(body)
    for other in ("Write a Rust function that parses dates.", "hi!", "Why does this crash?\n```\nx = 1/0\n```"):
        analyse(chat(other))  # nothing of one request may leak into the next
    analysis._HIT_CACHE.clear()
    assert analyse(body) == first == analyse(reordered)
    assert json.loads(json.dumps(first.as_dict())) == first.as_dict()


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": ["not a message", {"role": "user"}, {"role": "user", "content": None}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}, "x", {"type": "text", "text": 5}]}]},
        {"messages": [{"role": ["user"], "content": "hi"}], "max_tokens": -5, "response_format": "json"},
        {"messages": [{"role": "assistant", "content": "only an assistant turn"}]},
    ],
)
def test_odd_shapes_give_a_plain_answer(body):
    result = analyse(body)
    assert result.context_type in CONTEXT_TYPES and result.prompt_tokens >= 3


def test_the_module_stays_pure():
    tree = ast.parse(Path(analysis.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"dataclasses", "json", "math", "re"}
