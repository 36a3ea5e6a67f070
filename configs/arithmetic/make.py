"""Writes train.jsonl and eval.jsonl beside this file: every sum a + b with a in 1..19 and b in 1..9, shuffled
with a fixed seed, 48 held out for evaluation. Each record carries its `answer`, which `exact_match` reads.

    python configs/arithmetic/make.py
"""

import json
import pathlib
import random

HERE = pathlib.Path(__file__).parent
EVAL_SIZE = 48


def main() -> None:
    problems = [(a, b) for a in range(1, 20) for b in range(1, 10)]
    random.Random(0).shuffle(problems)
    records = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in problems]
    for name, part in (("eval", records[:EVAL_SIZE]), ("train", records[EVAL_SIZE:])):
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(record) + "\n" for record in part))


if __name__ == "__main__":
    main()
