"""Prompt features: each family fires on a prompt made for it, nothing is learned, output is finite and named."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from adaptive_spec.policy.features import (
    FEATURES,
    INSTRUCTION_WINDOW,
    PromptFeatures,
    head_tail,
    prompt_feature_row,
    prompt_features_pipeline,
)

DATA = Path("/work/shared/data/spec_bench_questions.jsonl")
NAMES = list(FEATURES)
PLAIN = "Tell me about your favourite season and what you like to do then"

CODE = """Fix the bug in this function:
```python
import math
def area(r):
    if r == 0:
        return 0;
    return math.pi * r ** 2 { }
```
"""
JSON_PROMPT = 'Return as JSON: {"name": "Ann", "tags": ["a", "b"], "items": [{"id": 1}]}'
HTML = "<html><body><div class='x'><p>Hello</p><br/></div></body></html>"
REPEATED = "\n".join(["the same line again and again"] * 8)
ARTICLE = "Document: " + " ".join(f"Sentence {i} of a long news report about the harbour." for i in range(60))
RAG = " ".join(f"Paragraph {i} says the river floods in spring." for i in range(60)) + "\nWhen does it flood?"


def column(prompts: list[str], name: str) -> np.ndarray:
    return PromptFeatures().transform(prompts)[:, NAMES.index(name)]


def spec_bench_prompts() -> list[str]:
    if not DATA.exists():
        pytest.skip(f"{DATA} not available")
    return [json.loads(line)["turns"][0] for line in DATA.read_text().splitlines()]


def test_names_match_width():
    features = PromptFeatures()
    out = features.transform([PLAIN, CODE])
    assert out.shape == (2, len(FEATURES)) and out.dtype == np.float64
    assert list(features.get_feature_names_out()) == NAMES
    assert len(set(NAMES)) == len(NAMES)
    assert all(FEATURES[name] for name in NAMES)  # each documented


@pytest.mark.parametrize(
    "name, prompt",
    [
        ("code_fences", CODE),
        ("code_keywords", CODE),
        ("brace_semicolon_density", CODE),
        ("indented_line_ratio", CODE),
        ("code_operators", CODE),
        ("call_syntax", "Call print(x) then len(y) and foo.bar(z)"),
        ("json_keys", JSON_PROMPT),
        ("json_brackets", JSON_PROMPT),
        ("markup_tags", HTML),
        ("markdown_markers", "# Title\n- one\n- two\n1. first\n| a | b |"),
        ("list_item_ratio", "Items:\n- one\n- two\n3) three"),
        ("digit_ratio", "Add 12345 and 67890 then 1111"),
        ("upper_ratio", "WHY IS THE SKY BLUE"),
        ("non_ascii_ratio", "Übersetze: Grüße aus München, schöne Straße"),
        ("punct_ratio", "Wait... what?! (really); yes: no."),
        ("number_density", "1 2 3 4 5 6"),
        ("math_expressions", "What is 3 + 4 * 2 and x = 7?"),
        ("question_marks", "Why? How? When?"),
        ("ends_with_question", "Where is Paris?"),
        ("starts_with_wh", "Who wrote Hamlet"),
        ("trigram_repeat_ratio", REPEATED),
        ("line_repeat_ratio", REPEATED),
        ("word_repeat_ratio", REPEATED),
        ("doc_header", ARTICLE),
        ("doc_header", "Answer the question.\nContext: the sky is blue.\nQuestion: what colour is it?"),
        ("doc_header", "Summarize: The council met on Tuesday."),
        ("quoted_share", 'Classify "this is a rather long quoted review text" please'),
        ("copy_score", ARTICLE),
        ("copy_score", RAG),
        ("long_prompt", ARTICLE),
        ("instr_summarize", "Summarize the following text in two sentences."),
        ("instr_summarize", "TL;DR please"),
        ("instr_translate", "Translate German to English: Guten Morgen"),
        ("instr_translate", "Say good morning in French"),
        ("instr_creative", "Write a poem about the sea"),
        ("instr_creative", "Compose a short story for children"),
        ("instr_brainstorm", "Brainstorm ideas for a birthday party"),
        ("instr_explain", "Explain how a rainbow forms"),
        ("instr_explain", "What is entropy"),
        ("instr_math", "Solve for x: 2x + 3 = 7"),
        ("instr_math", "How many apples are left"),
        ("instr_extract", "Extract the names and return them as JSON"),
        ("instr_extract", "List all cities mentioned in a table"),
        ("instr_code", "Write a Python function to reverse a linked list"),
        ("instr_code", "Find the bug in my script"),
        ("instr_roleplay", "Pretend to be a pirate captain"),
        ("instr_roleplay", "Act as a travel agent"),
        ("instr_rewrite", "Rewrite this paragraph more formally"),
        ("instr_email", "Draft an email to my landlord"),
        ("instr_short_answer", "Answer yes or no only"),
        ("instr_step_by_step", "Think step by step and justify your answer"),
        ("instr_count", "Explain and summarize the code"),
    ],
)
def test_family_fires_on_its_prompt(name, prompt):
    value, plain = column([prompt, PLAIN], name)
    assert value > plain, f"{name}: {value} on {prompt!r} vs {plain} on the plain prompt"


def test_plain_prompt_is_quiet():
    row = dict(zip(NAMES, prompt_feature_row(PLAIN)))
    assert all(row[n] == 0 for n in NAMES if n.startswith("instr_"))
    for name in ("code_fences", "code_keywords", "json_keys", "markup_tags", "doc_header", "copy_score"):
        assert row[name] == 0, name


def test_instruction_words_only_at_the_ends():
    # "translate" deep inside a pasted document is not an instruction
    filler = "lorem ipsum dolor sit amet " * 40
    middle = "Summarize: " + filler + " they translate poems " + filler
    row = dict(zip(NAMES, prompt_feature_row(middle)))
    assert row["instr_summarize"] == 1 and row["instr_translate"] == 0 and row["instr_creative"] == 0
    row = dict(zip(NAMES, prompt_feature_row(filler + filler + "Now translate this into French.")))
    assert row["instr_translate"] == 1


def test_stateless_fit_changes_nothing():
    prompts = [PLAIN, CODE, JSON_PROMPT, ARTICLE, ""]
    unfitted = PromptFeatures().transform(prompts)
    fitted = PromptFeatures().fit([HTML, RAG]).transform(prompts)
    np.testing.assert_array_equal(unfitted, fitted)
    np.testing.assert_array_equal(clone(PromptFeatures().fit(prompts)).transform(prompts), unfitted)

    a = prompt_features_pipeline().fit([HTML, RAG]).transform(prompts)
    b = prompt_features_pipeline().fit([CODE]).transform(prompts)
    assert (a != b).nnz == 0
    assert a.shape == (len(prompts), len(FEATURES) + 2**14)


def test_pipeline_shape_and_options():
    union = prompt_features_pipeline(n_features=2**8, char_ngram_range=(3, 4), text_chars=0).fit([PLAIN])
    out = union.transform([PLAIN, CODE])
    assert out.shape == (2, len(FEATURES) + 2 * 2**8)
    hashed = out[:, len(FEATURES):].toarray()
    assert (hashed >= 0).all()  # alternate_sign=False
    np.testing.assert_allclose(np.linalg.norm(hashed[:, : 2**8], axis=1), 1.0)  # l2 per block
    dense = prompt_features_pipeline(dense_weight=0.0).fit([PLAIN]).transform([CODE])[:, : len(FEATURES)]
    assert dense.nnz == 0


def test_edge_cases_finite_and_nonnegative():
    prompts = ["", " ", "\n\n\n", "?", "a", "日本語のテキストです。", "x" * 20_000, "\t" * 50 + "def f(): pass"]
    prompts.append('"' * 101)
    out = PromptFeatures().transform(prompts)
    assert np.isfinite(out).all() and (out >= 0).all()


def test_spec_bench_finite():
    prompts = spec_bench_prompts()
    out = PromptFeatures().transform(prompts)
    assert out.shape == (len(prompts), len(FEATURES))
    assert np.isfinite(out).all() and (out >= 0).all()
    # every feature varies somewhere on a real mix of prompts (no dead columns) except rare markers
    rare = {"code_fences", "markup_tags", "json_keys", "json_brackets", "instr_rewrite", "code_keywords"}
    dead = [n for n, col in zip(NAMES, out.T) if col.min() == col.max() and n not in rare]
    assert not dead, dead


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="single str"):
        PromptFeatures().transform("one prompt")
    with pytest.raises(ValueError, match=r"X\[1\] must be a str"):
        PromptFeatures().transform(["ok", 3])
    with pytest.raises(ValueError, match="list of prompt strings"):
        PromptFeatures().transform(42)
    assert PromptFeatures().transform(np.array(["a", "b"], dtype=object)).shape[0] == 2


def test_head_tail():
    long = "A" * 1000 + "B" * 1000
    (cut,) = head_tail([long], chars=INSTRUCTION_WINDOW)
    assert cut == "A" * INSTRUCTION_WINDOW + "\n" + "B" * INSTRUCTION_WINDOW
    assert head_tail(["short"], chars=10) == ["short"]
    assert head_tail([long], chars=0) == [long]


def test_latency_smoke():
    """Runs the transform on a 3,000-character prompt and prints the time: no assertion on speed here
    (benchmarks/features.py measures it)."""
    prompt = (ARTICLE * 3)[:3000] + "\nSummarize the document above."
    union = prompt_features_pipeline().fit([prompt])
    start = time.perf_counter()
    for _ in range(20):
        prompt_feature_row(prompt)
    hand = (time.perf_counter() - start) / 20
    start = time.perf_counter()
    for _ in range(5):
        union.transform([prompt])
    whole = (time.perf_counter() - start) / 5
    print(f"\n3,000 chars: hand-crafted {hand * 1e6:.0f} us, whole union transform {whole * 1e6:.0f} us")


def test_no_torch_import():
    code = (
        "import sys; import adaptive_spec.policy.features, adaptive_spec.policy.classifier; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root)})
