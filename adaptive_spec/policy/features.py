"""Features of a prompt, from its text alone, cheap enough to compute before every request.

Two parts, both stateless (``fit`` learns nothing, so an online ``partial_fit`` downstream stays valid):

* ``PromptFeatures``: 51 hand-crafted numbers per prompt (length, code / JSON / markup markers, character-class
  ratios, repetition, how much of the prompt is material an answer would copy, instruction-word families). Pure
  Python, regexes compiled once, counts by ``bytes.translate``/``count``: tens of microseconds for a short
  prompt, a few hundred for 3,000 characters (``benchmarks/features.py``).
* ``prompt_features_pipeline()``: those numbers squashed with a fixed ``log1p`` next to hashed word n-grams
  (``HashingVectorizer``) of the prompt's head and tail: the input of ``PromptClassifier``.

Why these: speculative decoding pays off when the answer is predictable. Code and structured output are
predictable for a draft model; summarization, RAG and extraction answers copy spans of the prompt (prompt-lookup
drafting wins); translation and open creative writing are the hard cases. No torch here: this runs in the
controller's hot path and in notebooks.

    >>> PromptFeatures().transform(["Summarize: The cat sat on the mat."]).shape
    (1, 51)
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import FunctionTransformer

__all__ = [
    "FEATURES",
    "INSTRUCTION_WINDOW",
    "PromptFeatures",
    "check_prompts",
    "head_tail",
    "prompt_feature_row",
    "prompt_features_pipeline",
]

# Instructions sit at the start or the end of a prompt; a long pasted document in between says little about the
# task and may mention "translate" or "code" by chance. Instruction words and hashed n-grams look only here.
INSTRUCTION_WINDOW = 300  # characters at each end

# name -> what it measures. Order is the column order of PromptFeatures.transform. All values are >= 0.
FEATURES: dict[str, str] = {
    # size
    "log_chars": "ln(1 + characters)",
    "log_words": "ln(1 + whitespace-separated words)",
    "log_lines": "ln(1 + lines)",
    "mean_word_len": "mean characters per word / 10",
    "blank_line_ratio": "blank lines / lines",
    # code
    "code_fences": "ln(1 + number of ``` fences)",
    "code_keywords": "ln(1 + lines starting with def/class/import/from..import/#include/function/return/...)",
    "brace_semicolon_density": "({ } ; count) per 100 characters, capped at 10",
    "indented_line_ratio": "lines indented by a tab or 2+ spaces / lines",
    "code_operators": "ln(1 + count of ==, !=, <=, >=, ->, =>, ::, ++, &&, ||)",
    "call_syntax": "ln(1 + count of identifier( with no space before the parenthesis)",
    # structured data
    "json_keys": 'ln(1 + count of "key": pairs)',
    "json_brackets": "ln(1 + count of {\" [{ [\" ]} }] ignoring whitespace)",
    "markup_tags": "ln(1 + count of <tag ...>, </tag>, <tag/>)",
    "markdown_markers": "ln(1 + count of # headers, | table rows, bullet and numbered list lines)",
    "list_item_ratio": "bullet or numbered list lines / lines",
    # character classes, as shares of all characters (letters/upper are ASCII only)
    "letter_ratio": "ASCII letters / characters",
    "digit_ratio": "ASCII digits / characters",
    "punct_ratio": "ASCII punctuation / characters",
    "space_ratio": "whitespace / characters",
    "upper_ratio": "ASCII uppercase / ASCII letters",
    "non_ascii_ratio": "non-ASCII characters / characters",
    "number_density": "ASCII digit runs per word, capped at 1",
    "math_expressions": "ln(1 + count of digit-operator-digit forms (spaces ignored) and = signs)",
    "question_marks": "ln(1 + count of ?)",
    "ends_with_question": "1 if the prompt's last non-space character is ?",
    "starts_with_wh": "1 if the prompt starts with who/what/when/where/which/why/how",
    # repetition
    "trigram_repeat_ratio": "1 - distinct word trigrams / word trigrams",
    "line_repeat_ratio": "1 - distinct non-blank lines / non-blank lines",
    "word_repeat_ratio": "1 - distinct lowercased words / words",
    # material an answer would copy (summarization, RAG, extraction favour prompt lookup)
    "doc_header": "1 if a line opens with Document:/Passage 2:/Article:/Context:/Text:/... or the prompt with "
    "a 'Summarize:'/'Translate ...:'-style task prefix",
    "longest_block_share": "characters of the longest line / characters",
    "quoted_share": "characters inside quotes of 20+ characters / characters",
    "copy_score": "share of the prompt outside its instruction (the shorter of the first and last non-blank "
    "lines, or a 'Task:' prefix of a one-line prompt), times min(1, characters / 1000)",
    "long_prompt": "1 if 1000+ characters",
    # instruction-word families (1/0), looked for in the first and last INSTRUCTION_WINDOW characters;
    # the full word lists are in _LEXICON
    "instr_summarize": "summarize/summary/tl;dr/key points/in N sentences",
    "instr_translate": "translate/translation/in French/into English/German to ...",
    "instr_creative": "poem/story/essay/blog/creative/limerick/lyrics/...",
    "instr_brainstorm": "brainstorm/ideas/suggest/come up with",
    "instr_explain": "explain/describe/discuss/what is/why/how does/compare/analyze",
    "instr_math": "solve/calculate/compute/how many/how much/equation/probability/...",
    "instr_extract": "extract/list/identify/categorize/JSON/table/CSV/format/rate/score",
    "instr_code": "code/function/program/script/bug/implement/Python/SQL/regex/algorithm/binary tree/...",
    "instr_roleplay": "pretend/imagine you/act as/role/persona/you are a/speak like",
    "instr_rewrite": "rewrite/rephrase/paraphrase/edit/proofread/correct/improve",
    "instr_email": "email/letter/memo/speech/announcement/advertisement/proposal/post",
    "instr_short_answer": "one word/yes or no/short answer/briefly/concise/fewer than/only the answer",
    "instr_step_by_step": "step by step/show your work/justify/reason/think/prove",
    "instr_count": "number of instruction families present / 4",
    "first_line_chars": "ln(1 + characters of the first non-blank line)",
    "last_line_chars": "ln(1 + characters of the last non-blank line)",
}
_N = len(FEATURES)

_I = re.IGNORECASE
# Line-start patterns are searched in "\n" + prompt: a literal first character lets the regex engine skip ahead.
_CODE_KEYWORD = re.compile(
    r"\n[ \t]*(?:def |class |import |from \S+ import |#include|function |public |private |static |return |"
    r"for \(|while \(|if \(|const |let |var |fn |func |package |SELECT |CREATE |#!|//|/\*)"
)
_INDENTED = re.compile(r"\n(?:\t| {2,})\S")
_MARKDOWN = re.compile(r"\n[ \t]*(?:#{1,6} |\|.*\||[-*+•] |\d{1,3}[.)] |[a-z][.)] )")
_LIST_ITEM = re.compile(r"\n[ \t]*(?:[-*+•] |\d{1,3}[.)] |[a-z][.)] )")
_JSON_KEY = re.compile(r"\"[^\"\n]{1,60}\"\s*:")
_TAG = re.compile(r"<(?:/?[A-Za-z][\w:-]*(?:\s[^<>\n]{0,200})?/?>)")
_QUOTED = re.compile(r"\"[^\"]{20,}\"|“[^”]{20,}”")
_WH = re.compile(r"\s*(?:who|what|when|where|which|why|how|whose|whom)\b", _I)
_TASK_PREFIX = re.compile(r"\s*[^:\n]{1,80}:\s")  # "Summarize: ...", "Translate German to English: ..."
_TASK_WORD = re.compile(r"\s*(?:summari[sz]e|translate|tl;?dr|extract|classify|answer|question|rewrite)", _I)
_CODE_OPS = [b"==", b"!=", b"<=", b">=", b"->", b"=>", b"::", b"++", b"&&", b"||"]
_JSON_BRACKETS = [b'{"', b"[{", b'["', b"]}", b"}]"]
_MATH_OPS = [b"0" + bytes([op]) + b"0" for op in b"+-*/^=<>"]
# Words that, followed by ":" at the start of a line, announce material to work on.
_DOC_WORDS = frozenset(
    "document passage article context text input story transcript email review reviews paragraph excerpt "
    "source content background conversation dialogue dialog data abstract report news table code snippet "
    "essay poem sentence sentences question reference references evidence information notes".split()
)

# Instruction-word families: (words, phrases). Matched against the lowercased words (runs of a-z 0-9 + #) of
# the instruction window; "stem*" matches any word starting with stem; phrases match consecutive words.
_LEXICON: dict[str, tuple[str, str]] = {
    "instr_summarize": (
        "summar* tldr gist condens* recap* synops*",
        "tl dr;key points;main points;in one sentence;in two sentences;in three sentences;in a few sentences",
    ),
    "instr_translate": (
        "translat*",
        "in english;into english;to english;in french;into french;to french;in german;into german;to german;"
        "in spanish;into spanish;to spanish;in chinese;into chinese;to chinese;in japanese;into japanese;"
        "in italian;into italian;in russian;into russian;in portuguese;into portuguese;german to;french to;"
        "spanish to;chinese to;russian to;czech to;romanian to;finnish to;turkish to;english to",
    ),
    "instr_creative": (
        "poem* poetry poetic story stories essay* blog* creativ* limerick* haiku* sonnet* song* lyric* novel "
        "fiction* narrativ* screenplay* tale* rap verse* riddle* joke* slogan* rhym* fairy* character*",
        "",
    ),
    "instr_brainstorm": ("brainstorm* idea* suggest* tips", "come up with;ways to;list of"),
    "instr_explain": (
        "explain* describ* discuss* compar* contrast* elaborat* outline* insight* analy* evaluat* why",
        "what is;what are;what was;what were;how does;how do;how did;how can;how is",
    ),
    "instr_math": (
        "solv* calculat* comput* equation* probabilit* integral* derivativ* percent* total averag* area sum "
        "remainder prime* math* arithmetic* geometr* triangle*",
        "how many;how much;how long;how far;how old",
    ),
    "instr_extract": (
        "extract* identif* categori* classif* json table* csv yaml xml format* pars* entit* rate score* list",
        "scale of;return only;return the",
    ),
    "instr_code": (
        "code coding function* program* script* bug* debug* implement* python c++ java javascript sql regex* "
        "algorithm* compil* html css api class method* variable* array* recursi* c# rust golang",
        "data structure;binary tree;linked list;unit test;regular expression",
    ),
    "instr_roleplay": (
        "pretend* roleplay* role persona embody embrac*",
        "act as;acting as;imagine you;imagine yourself;you are a;you are an;you are the;as if you;in the style;"
        "speak like",
    ),
    "instr_rewrite": ("rewrit* rephras* paraphras* edit* proofread* correct* improv* revis* polish* shorten*", ""),
    "instr_email": (
        "email* letter* memo* speech* announcement* advertisement* proposal* post",
        "e mail;press release;cover letter",
    ),
    "instr_short_answer": ("briefly concise*", "one word;yes or no;short answer;fewer than;less than;only the answer"),
    "instr_step_by_step": ("justify reason* think* proof prove", "step by step;show your work"),
}
_FIRST_INSTR = list(FEATURES).index("instr_summarize")
assert list(_LEXICON) == list(FEATURES)[_FIRST_INSTR : _FIRST_INSTR + len(_LEXICON)]


def _build_lexicon() -> tuple[dict[bytes, int], dict[bytes, int], tuple[int, ...]]:
    """(exact words and phrases -> family bit mask, stems -> bit mask, stem lengths)."""
    exact: dict[bytes, int] = {}
    stems: dict[bytes, int] = {}
    for bit, (words, phrases) in enumerate(_LEXICON.values()):
        for term in words.split() + [p for p in phrases.split(";") if p]:
            table, key = (stems, term[:-1]) if term.endswith("*") else (exact, term)
            table[key.encode()] = table.get(key.encode(), 0) | (1 << bit)
    return exact, stems, tuple(sorted({len(k) for k in stems}))


_EXACT, _STEMS, _STEM_LENGTHS = _build_lexicon()
_PHRASE_FIRST = frozenset(k.split()[0] for k in _EXACT if b" " in k)  # first words of phrases
# bytes.translate table for the instruction window: keep a-z 0-9 + #, everything else becomes a space.
_WORD_TABLE = bytes(c if chr(c) in string.ascii_lowercase + string.digits + "+#" else 32 for c in range(256))
_WORD_MASKS: dict[bytes, int] = {}  # memo of _word_mask (a pure function); cleared when it grows large
_WORD_MASKS_MAX = 50_000


def _word_mask(word: bytes) -> int:
    mask = _EXACT.get(word, 0)
    for n in _STEM_LENGTHS:
        if n > len(word):
            break
        mask |= _STEMS.get(word[:n], 0)
    if len(_WORD_MASKS) >= _WORD_MASKS_MAX:
        _WORD_MASKS.clear()
    _WORD_MASKS[word] = mask
    return mask


def _instruction_families(window: str) -> int:
    """Bit mask of the instruction families whose words occur in ``window`` (bit i: i-th ``_LEXICON`` entry)."""
    words = window.lower().encode("ascii", "ignore").translate(_WORD_TABLE).split()
    mask = 0
    memo, exact, first = _WORD_MASKS, _EXACT, _PHRASE_FIRST
    for i, word in enumerate(words):
        m = memo.get(word)
        mask |= _word_mask(word) if m is None else m
        if word in first:
            pair = word + b" " + words[i + 1] if i + 1 < len(words) else word
            mask |= exact.get(pair, 0)
            if i + 2 < len(words):
                mask |= exact.get(pair + b" " + words[i + 2], 0)
    return mask


# bytes.translate tables over the prompt's ASCII characters: "shape" maps letters and _ to a, digits to 0,
# whitespace to a space; "digit runs" maps digits to 0 and everything else to a space.
_SHAPE_TABLE = bytes(
    ord("a") if chr(c).isascii() and (chr(c).isalpha() or c == ord("_"))
    else ord("0") if chr(c) in string.digits
    else 32 if chr(c) in string.whitespace
    else c
    for c in range(256)
)
_DIGIT_TABLE = bytes(ord("0") if chr(c) in string.digits else 32 for c in range(256))
_LETTERS = string.ascii_letters.encode()
_UPPER = string.ascii_uppercase.encode()
_DIGITS = string.digits.encode()
_PUNCT = string.punctuation.encode()


def _count(ascii_bytes: bytes, chars: bytes) -> int:
    # bytes.translate deletes in one C pass: a few microseconds for thousands of characters
    return len(ascii_bytes) - len(ascii_bytes.translate(None, chars))


def _ln(n: float) -> float:
    return math.log1p(n)


def prompt_feature_row(prompt: str) -> list[float]:
    """The hand-crafted features of one prompt, in ``FEATURES`` order (all finite, >= 0)."""
    n_chars = len(prompt)
    chars = max(n_chars, 1)
    words = prompt.split()
    n_words = len(words)
    n_word_chars = sum(map(len, words))  # non-whitespace characters
    lines = prompt.splitlines() or [""]
    n_lines = len(lines)
    nonblank = [s for s in (line.strip() for line in lines) if s]
    nl_prompt = "\n" + prompt
    ascii_bytes = prompt.encode("ascii", "ignore")
    shape = ascii_bytes.translate(_SHAPE_TABLE)
    squashed = shape.replace(b" ", b"")
    letters = _count(ascii_bytes, _LETTERS)

    row = [
        # size
        _ln(n_chars),
        _ln(n_words),
        _ln(n_lines),
        (n_word_chars / n_words / 10) if n_words else 0.0,
        (n_lines - len(nonblank)) / n_lines,
        # code
        _ln(prompt.count("```")),
        _ln(len(_CODE_KEYWORD.findall(nl_prompt))),
        min(10.0, 100 * (prompt.count("{") + prompt.count("}") + prompt.count(";")) / chars),
        len(_INDENTED.findall(nl_prompt)) / n_lines,
        _ln(sum(ascii_bytes.count(op) for op in _CODE_OPS)),
        _ln(shape.count(b"a(")),
        # structured data
        _ln(len(_JSON_KEY.findall(prompt))),
        _ln(sum(squashed.count(b) for b in _JSON_BRACKETS)),
        _ln(len(_TAG.findall(prompt))),
        _ln(len(_MARKDOWN.findall(nl_prompt))),
        len(_LIST_ITEM.findall(nl_prompt)) / n_lines,
        # character classes
        letters / chars,
        _count(ascii_bytes, _DIGITS) / chars,
        _count(ascii_bytes, _PUNCT) / chars,
        (n_chars - n_word_chars) / chars,
        (_count(ascii_bytes, _UPPER) / letters) if letters else 0.0,
        (n_chars - len(ascii_bytes)) / chars,
        min(1.0, len(ascii_bytes.translate(_DIGIT_TABLE).split()) / n_words) if n_words else 0.0,
        _ln(sum(squashed.count(op) for op in _MATH_OPS) + prompt.count("=")),
        _ln(prompt.count("?")),
        1.0 if prompt.rstrip().endswith("?") else 0.0,
        1.0 if _WH.match(prompt) else 0.0,
    ]

    # repetition
    lowered = prompt.lower().split()
    trigrams = list(zip(lowered, lowered[1:], lowered[2:]))
    row.append((1 - len(set(trigrams)) / len(trigrams)) if trigrams else 0.0)
    row.append((1 - len(set(nonblank)) / len(nonblank)) if nonblank else 0.0)
    row.append((1 - len(set(lowered)) / n_words) if n_words else 0.0)

    # copyable material: what is not the instruction
    if len(nonblank) >= 2:
        instruction = min(len(nonblank[0]), len(nonblank[-1]))
    else:
        prefix = _TASK_PREFIX.match(prompt)
        instruction = prefix.end() if prefix else n_chars
    row += [
        1.0 if _has_doc_header(prompt, nonblank) else 0.0,
        max(map(len, nonblank), default=0) / chars,
        min(1.0, sum(map(len, _QUOTED.findall(prompt))) / chars),
        max(0, n_chars - instruction) / chars * min(1.0, n_chars / 1000),
        1.0 if n_chars >= 1000 else 0.0,
    ]

    # instruction words, in the first and last INSTRUCTION_WINDOW characters
    w = INSTRUCTION_WINDOW
    window = prompt if n_chars <= 2 * w else prompt[:w] + "\n" + prompt[-w:]
    mask = _instruction_families(window)
    hits = [float(mask >> bit & 1) for bit in range(len(_LEXICON))]
    row += hits
    row.append(sum(hits) / 4)
    row.append(_ln(len(nonblank[0])) if nonblank else 0.0)
    row.append(_ln(len(nonblank[-1])) if nonblank else 0.0)
    return row


def _has_doc_header(prompt: str, nonblank: list[str]) -> bool:
    """A "Summarize:"-style task prefix, or a line opening with "Document:", "Passage 2:", "Context:", ..."""
    if _TASK_WORD.match(prompt) and _TASK_PREFIX.match(prompt):
        return True
    for line in nonblank:
        colon = line.find(":", 0, 32)
        if colon > 0:
            head = line[:colon].rstrip(" 0123456789").lower()
            if head in _DOC_WORDS:
                return True
    return False


def check_prompts(X: object, name: str = "X") -> list[str]:
    """``X`` as a list of strings, or a ValueError saying what is wrong with it."""
    if isinstance(X, (str, bytes)):
        raise ValueError(f"{name} must be a list of prompt strings, not a single {type(X).__name__}")
    if not isinstance(X, Iterable):
        raise ValueError(f"{name} must be a list of prompt strings, got {type(X).__name__}")
    prompts = list(X.ravel() if isinstance(X, np.ndarray) else X)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(p).__name__}")
    return prompts


class PromptFeatures(TransformerMixin, BaseEstimator):
    """Stateless transformer: list of prompts -> ``[n_prompts, len(FEATURES)]`` float64 array.

    ``fit`` learns nothing (it only records ``n_features_out_``), so ``transform`` gives the same output fitted
    or not, and the features may feed an estimator updated online. Column names: ``get_feature_names_out()``;
    descriptions: ``FEATURES``.
    """

    def fit(self, X, y=None):
        check_prompts(X)
        self.n_features_out_ = _N
        return self

    def transform(self, X) -> np.ndarray:
        prompts = check_prompts(X)
        out = np.empty((len(prompts), _N), dtype=np.float64)  # [n_prompts, n_features]
        for i, prompt in enumerate(prompts):
            out[i] = prompt_feature_row(prompt)
        return out

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(list(FEATURES), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags


def head_tail(prompts, chars: int = INSTRUCTION_WINDOW) -> list[str]:
    """Each prompt cut to its first and last ``chars`` characters (0: whole prompts); the text fed to hashing."""
    prompts = check_prompts(prompts)
    if chars <= 0:
        return prompts
    return [p if len(p) <= 2 * chars else p[:chars] + "\n" + p[-chars:] for p in prompts]


def prompt_features_pipeline(
    n_features: int = 2**14,
    ngram_range: tuple[int, int] = (1, 2),
    char_ngram_range: tuple[int, int] | None = None,
    text_chars: int = INSTRUCTION_WINDOW,
    dense_weight: float = 1.0,
) -> FeatureUnion:
    """Stateless union: ``log1p(PromptFeatures)`` next to hashed n-grams of each prompt's head and tail.

    Output: sparse ``[n_prompts, len(FEATURES) + n_features (+ n_features with char n-grams)]``.

    * ``n_features``: hashing buckets per n-gram kind (word; char when ``char_ngram_range`` is given);
    * ``ngram_range``: word n-grams, e.g. (1, 2) for words and word pairs;
    * ``char_ngram_range``: character n-grams within word boundaries, e.g. (3, 5); None: none (faster);
    * ``text_chars``: hash only the first and last ``text_chars`` characters (0: the whole prompt);
    * ``dense_weight``: multiplies the hand-crafted block (the hashed blocks have unit L2 norm each).

    No step learns anything, so ``fit`` is a formality and ``SGDClassifier.partial_fit`` downstream stays valid.
    """
    text = FunctionTransformer(head_tail, kw_args={"chars": text_chars})
    hashers = [
        (
            "words",
            Pipeline([
                ("text", text),
                ("hash", HashingVectorizer(n_features=n_features, ngram_range=tuple(ngram_range),
                                           alternate_sign=False, norm="l2", dtype=np.float64)),
            ]),
        )
    ]
    if char_ngram_range is not None:
        hashers.append((
            "chars",
            Pipeline([
                ("text", FunctionTransformer(head_tail, kw_args={"chars": text_chars})),
                ("hash", HashingVectorizer(n_features=n_features, analyzer="char_wb",
                                           ngram_range=tuple(char_ngram_range), alternate_sign=False, norm="l2",
                                           dtype=np.float64)),
            ]),
        ))
    dense = Pipeline([
        ("prompt", PromptFeatures()),
        ("log1p", FunctionTransformer(np.log1p, feature_names_out="one-to-one")),
    ])
    return FeatureUnion([("dense", dense), *hashers], transformer_weights={"dense": dense_weight})
