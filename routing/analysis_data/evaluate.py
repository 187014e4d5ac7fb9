"""Accuracy of routing.analysis on the labelled prompts: overall, per type, and the confusion matrix.

    .venv/bin/python routing/analysis_data/evaluate.py [--split tune|heldout|all] [--errors] [--raw]

Accuracy counts `context_type` (what scoring uses, general_chat when confidence is low); --raw counts
`detected_type` instead. --errors lists the misclassified prompts: use it on the tune split only; the held-out
split is there to measure, not to tune on.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from routing.analysis import CONTEXT_TYPES, analyse  # noqa: E402

DATA = Path(__file__).resolve().parent
SHORT = {
    "code_generation": "code_gen",
    "code_review": "code_rev",
    "math": "math",
    "analysis": "analysis",
    "creative_writing": "creative",
    "summarization": "summary",
    "translation": "transl",
    "question_answering": "qa",
    "general_chat": "chat",
}


def load(split):
    """Return the labelled records of a split ("tune", "heldout" or "all")."""
    records = []
    for name in ("tune.jsonl", "heldout.jsonl"):
        with open(DATA / name, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return [record for record in records if split == "all" or record["split"] == split]


def evaluate(records, raw=False):
    """Return (overall accuracy, {type: accuracy}, Counter of (label, predicted), errors)."""
    confusion, errors = Counter(), []
    for record in records:
        result = analyse(record["body"])
        predicted = result.detected_type if raw else result.context_type
        confusion[record["label"], predicted] += 1
        if predicted != record["label"]:
            errors.append((record, result))
    per_type = {}
    for label in CONTEXT_TYPES:
        total = sum(count for (gold, _), count in confusion.items() if gold == label)
        if total:
            per_type[label] = confusion[label, label] / total
    overall = sum(confusion[label, label] for label in CONTEXT_TYPES) / len(records)
    return overall, per_type, confusion, errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="heldout", choices=("tune", "heldout", "all"))
    parser.add_argument("--errors", action="store_true")
    parser.add_argument("--raw", action="store_true")
    args = parser.parse_args()
    records = load(args.split)
    overall, per_type, confusion, errors = evaluate(records, raw=args.raw)
    print(f"{args.split}: {len(records)} prompts, accuracy {overall:.1%}\n")
    print("| type | n | accuracy |\n|---|---:|---:|")
    for label, accuracy in per_type.items():
        total = sum(count for (gold, _), count in confusion.items() if gold == label)
        print(f"| {label} | {total} | {accuracy:.1%} |")
    print("\nConfusion matrix (rows: label, columns: predicted)\n")
    print("| label \\ predicted | " + " | ".join(SHORT[name] for name in CONTEXT_TYPES) + " |")
    print("|---|" + "---:|" * len(CONTEXT_TYPES))
    for label in CONTEXT_TYPES:
        cells = [str(confusion[label, name] or ".") for name in CONTEXT_TYPES]
        print(f"| {SHORT[label]} | " + " | ".join(cells) + " |")
    if args.errors:
        print()
        for record, result in errors:
            text = record["body"]["messages"][-1]["content"]
            text = text if isinstance(text, str) else str(text)
            print(f"{record['id']}: {record['label']} -> {result.detected_type} ({result.confidence}) "
                  f"{list(result.signals)} :: {text[:90]!r}")


if __name__ == "__main__":
    main()
