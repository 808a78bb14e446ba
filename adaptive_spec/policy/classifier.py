"""Request class from the prompt: a linear model over stateless prompt features, trainable online.

``PromptClassifier`` = ``prompt_features_pipeline()`` (hand-crafted features + hashed word n-grams, nothing
learned) followed by ``SGDClassifier(loss="log_loss")``. Because the features learn nothing, the classifier can
be updated one batch at a time with ``partial_fit(X, y, classes=...)`` -- which a ``Pipeline`` cannot do; for
offline use the same model is available as a plain ``Pipeline`` (``PromptClassifier(...).pipeline()``).

Persistence is plain JSON (``to_json``/``from_json``, ``save``/``load``), validated by pydantic: parameters,
classes, the SGD weights (sparse) and its step counter. Nothing is unpickled, so a file from anywhere can at
worst be rejected, never run code.

A caller's explicit ``request_class`` always wins over the classifier: ``resolve_request_class``.

    >>> clf = PromptClassifier(random_state=0).fit(prompts, categories)     # doctest: +SKIP
    >>> clf.predict_one("Summarize: The council met on Tuesday ...")      # doctest: +SKIP
    ('summarization', 0.93)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StrictInt, StrictStr, ValidationError, model_validator
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.utils.murmurhash import murmurhash3_32
from sklearn.utils.validation import check_is_fitted

from .features import (
    FEATURES,
    INSTRUCTION_WINDOW,
    check_prompts,
    head_tail,
    prompt_feature_row,
    prompt_features_pipeline,
)

__all__ = ["CLASSIFIER_SCHEMA", "CLASSIFIER_VERSION", "ClassifierFile", "PromptClassifier", "resolve_request_class"]

CLASSIFIER_SCHEMA = "adaptive_spec.prompt_classifier"
CLASSIFIER_VERSION = 1


class PromptClassifier(ClassifierMixin, BaseEstimator):
    """Predicts a request class (e.g. a Spec-Bench category) from the prompt text.

    Parameters (stored as given; checked by ``fit``):

    * ``n_features``: hashing buckets for word n-grams (and again for char n-grams, if any);
    * ``ngram_range``: word n-grams hashed, (1, 2) = words and word pairs;
    * ``char_ngram_range``: char n-grams hashed, e.g. (3, 5), or None (default: faster, as accurate here);
    * ``text_chars``: hash only the first and last ``text_chars`` characters of a prompt (0: all of it);
    * ``dense_weight``: weight of the hand-crafted block next to the unit-norm hashed block(s);
    * ``alpha``, ``max_iter``, ``tol``, ``random_state``: passed to ``SGDClassifier(loss="log_loss")``.

    Learned: ``features_`` (the fitted, stateless feature union), ``sgd_`` (the ``SGDClassifier``), ``classes_``,
    ``n_features_out_`` (width of the feature matrix).
    """

    def __init__(
        self,
        *,
        n_features: int = 2**14,
        ngram_range: tuple[int, int] = (1, 2),
        char_ngram_range: tuple[int, int] | None = None,
        text_chars: int = INSTRUCTION_WINDOW,
        dense_weight: float = 1.0,
        alpha: float = 1e-4,
        max_iter: int = 50,
        tol: float | None = 1e-3,
        random_state: int | None = None,
    ):
        self.n_features = n_features
        self.ngram_range = ngram_range
        self.char_ngram_range = char_ngram_range
        self.text_chars = text_chars
        self.dense_weight = dense_weight
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    # -- the parts, unfitted --------------------------------------------------------------------------------

    def features(self) -> FeatureUnion:
        """The (stateless) feature union these parameters describe."""
        return prompt_features_pipeline(
            n_features=self.n_features,
            ngram_range=self.ngram_range,
            char_ngram_range=self.char_ngram_range,
            text_chars=self.text_chars,
            dense_weight=self.dense_weight,
        )

    def sgd(self) -> SGDClassifier:
        """The (unfitted) linear model these parameters describe."""
        return SGDClassifier(
            loss="log_loss", alpha=self.alpha, max_iter=self.max_iter, tol=self.tol, random_state=self.random_state
        )

    def pipeline(self) -> Pipeline:
        """The same model as a plain ``Pipeline(features, sgd)``: same fit, no ``partial_fit``."""
        return Pipeline([("features", self.features()), ("sgd", self.sgd())])

    # -- learning -------------------------------------------------------------------------------------------

    def fit(self, X: Sequence[str], y: Sequence[Any], sample_weight=None) -> "PromptClassifier":
        """Learn from prompts ``X`` and their classes ``y`` (at least two distinct classes)."""
        self._check_params()
        prompts, labels = _check_xy(X, y)
        if len(set(labels.tolist())) < 2:
            raise ValueError(f"y needs at least two distinct classes to fit, got {sorted(set(labels.tolist()))}")
        self.features_ = self.features().fit(prompts)
        Z = self.features_.transform(prompts)
        self.sgd_ = self.sgd().fit(Z, labels, sample_weight=sample_weight)
        self.classes_ = self.sgd_.classes_
        self.n_features_out_ = Z.shape[1]
        return self

    def partial_fit(self, X: Sequence[str], y: Sequence[Any], classes=None, sample_weight=None) -> "PromptClassifier":
        """One SGD pass over a batch; the first call (on an unfitted classifier) needs every class in ``classes``.

        Later calls continue from the current weights (after ``fit``, ``partial_fit`` or ``load``).
        """
        prompts, labels = _check_xy(X, y)
        first = not hasattr(self, "sgd_")
        if first:
            self._check_params()
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit (all classes to expect)")
            _check_labels(np.asarray(classes), "classes")
            self.features_ = self.features().fit(prompts)
            self.sgd_ = self.sgd()
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes {list(classes)} differ from the classifier's classes {self.classes_.tolist()}")
        unknown = sorted(set(labels.tolist()) - set(np.asarray(classes if first else self.classes_).tolist()))
        if unknown:
            raise ValueError(f"y has labels outside the classifier's classes: {unknown}")
        Z = self.features_.transform(prompts)
        self.sgd_.partial_fit(Z, labels, classes=classes if first else None, sample_weight=sample_weight)
        self.classes_ = self.sgd_.classes_
        self.n_features_out_ = Z.shape[1]
        return self

    # -- prediction -----------------------------------------------------------------------------------------

    def feature_matrix(self, X: Sequence[str]):
        """The feature matrix the linear model sees: sparse ``[n_prompts, n_features_out_]``."""
        check_is_fitted(self, "sgd_")
        return self.features_.transform(check_prompts(X))

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        return self.sgd_.decision_function(self.feature_matrix(X))

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return self.sgd_.predict(self.feature_matrix(X))

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """``[n_prompts, n_classes]``; one-vs-rest logistic scores normalized to sum to 1 (as ``SGDClassifier``)."""
        return self.sgd_.predict_proba(self.feature_matrix(X))

    def predict_one(self, prompt: str) -> tuple[Any, float]:
        """(most likely class, its probability) for one prompt: the request-time path, no sklearn validation.

        Same numbers as ``predict_proba([prompt])`` up to float rounding (tens of microseconds instead of
        hundreds).
        """
        check_is_fitted(self, "sgd_")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
        proba = self._proba_one(prompt)
        best = int(np.argmax(proba))
        return self.classes_[best].item(), float(proba[best])

    def _proba_one(self, prompt: str) -> np.ndarray:
        coef, intercept = self.sgd_.coef_, self.sgd_.intercept_  # [n_rows, n_features_out_], [n_rows]
        dense = np.log1p(np.asarray(prompt_feature_row(prompt))) * self.dense_weight  # [len(FEATURES)]
        n_dense = len(FEATURES)
        scores = coef[:, :n_dense] @ dense + intercept  # [n_rows]
        text = head_tail([prompt], self.text_chars)[0]
        offset = n_dense
        for analyzer in self._analyzers():
            index, value = _hash_tokens(analyzer(text), self.n_features)
            if len(index):
                scores = scores + coef[:, offset + index] @ value
            offset += self.n_features
        prob = 1.0 / (1.0 + np.exp(-scores))
        if len(prob) == 1:  # binary: the one row scores classes_[1]
            return np.array([1.0 - prob[0], prob[0]])
        return prob / prob.sum()

    def _analyzers(self) -> list:
        """The tokenizers of the hashed blocks, in column order (building one takes about a microsecond)."""
        return [pipe.named_steps["hash"].build_analyzer() for name, pipe in self.features_.transformer_list
                if name != "dense"]

    # -- persistence ----------------------------------------------------------------------------------------

    def to_json(self) -> str:
        """Parameters and learned weights as JSON (see ``ClassifierFile``)."""
        check_is_fitted(self, "sgd_")
        coef = self.sgd_.coef_
        flat = coef.ravel()
        nonzero = np.flatnonzero(flat)
        doc = ClassifierFile(
            schema=CLASSIFIER_SCHEMA,
            version=CLASSIFIER_VERSION,
            params=ClassifierParams(**self.get_params()),
            feature_names=list(FEATURES),
            classes=self.classes_.tolist(),
            coef=SparseMatrix(rows=coef.shape[0], cols=coef.shape[1], index=nonzero.tolist(),
                              value=flat[nonzero].tolist()),
            intercept=self.sgd_.intercept_.tolist(),
            t=float(self.sgd_.t_),
        )
        return doc.model_dump_json(by_alias=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "PromptClassifier":
        """Rebuild a fitted classifier from ``to_json`` output; a ValueError says what is wrong with a bad one."""
        doc = ClassifierFile.parse(text)
        clf = cls(**doc.params.model_dump())
        clf.features_ = clf.features().fit([""])
        coef = np.zeros(doc.coef.rows * doc.coef.cols, dtype=np.float64)
        coef[np.asarray(doc.coef.index, dtype=np.int64)] = doc.coef.value
        sgd = clf.sgd()
        sgd.classes_ = np.asarray(doc.classes)
        sgd.coef_ = coef.reshape(doc.coef.rows, doc.coef.cols)
        sgd.intercept_ = np.asarray(doc.intercept, dtype=np.float64)
        sgd.t_ = doc.t
        sgd.n_features_in_ = doc.coef.cols
        clf.sgd_ = sgd
        clf.classes_ = sgd.classes_
        clf.n_features_out_ = doc.coef.cols
        return clf

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "PromptClassifier":
        return cls.from_json(Path(path).read_bytes())

    # -- sklearn plumbing -----------------------------------------------------------------------------------

    def _check_params(self) -> None:
        try:
            ClassifierParams(**self.get_params())
        except ValidationError as e:
            raise ValueError(f"invalid PromptClassifier parameters: {e}") from None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.classifier_tags.multi_class = True
        return tags


def _check_xy(X, y) -> tuple[list[str], np.ndarray]:
    prompts = check_prompts(X)
    if not prompts:
        raise ValueError("X is empty: need at least one prompt")
    if isinstance(y, (str, bytes)) or not hasattr(y, "__len__"):
        raise ValueError(f"y must be a sequence of class labels, got {type(y).__name__}")
    labels = np.asarray(list(y.ravel() if isinstance(y, np.ndarray) else y))
    if len(labels) != len(prompts):
        raise ValueError(f"X and y have different lengths: {len(prompts)} prompts, {len(labels)} labels")
    _check_labels(labels, "y")
    return prompts, labels


def _check_labels(labels: np.ndarray, name: str) -> None:
    if labels.ndim != 1:
        raise ValueError(f"{name} must be one label per prompt (1-d), got shape {labels.shape}")
    if labels.dtype.kind not in "Ui":
        raise ValueError(f"{name} must hold class names (str) or integers, got dtype {labels.dtype}")


def _hash_tokens(tokens: list[str], n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """``HashingVectorizer(alternate_sign=False, norm="l2")`` for one document: (bucket indices, values)."""
    counts: dict[int, int] = {}
    for token in tokens:
        h = murmurhash3_32(token, seed=0)  # signed, as sklearn's FeatureHasher
        i = (2147483648 if h == -2147483648 else abs(h)) % n_features
        counts[i] = counts.get(i, 0) + 1
    index = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    value = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    norm = math.sqrt(float(value @ value)) if len(value) else 0.0
    return index, (value / norm if norm else value)


def resolve_request_class(
    prompt: str | None,
    request_class: str | None = None,
    classifier: PromptClassifier | None = None,
    min_probability: float = 0.0,
) -> tuple[str | None, str, float]:
    """(class, source, probability): the caller's class wins, else the classifier's if confident enough.

    ``source`` is "caller", "classifier" or "fixed" (no class: no prompt, no classifier, or below
    ``min_probability``), as in ``RequestReport.class_source``.
    """
    if request_class is not None:
        return request_class, "caller", 1.0
    if classifier is None or prompt is None:
        return None, "fixed", float("nan")
    label, probability = classifier.predict_one(prompt)
    if probability < min_probability:
        return None, "fixed", probability
    return label, "classifier", probability


# -- the file format ------------------------------------------------------------------------------------------


def _range(value: tuple[int, int] | None, name: str) -> None:
    if value is not None and not 1 <= value[0] <= value[1] <= 8:
        raise ValueError(f"{name} must be (low, high) with 1 <= low <= high <= 8, got {value}")


class ClassifierParams(BaseModel):
    """``PromptClassifier.__init__`` arguments, checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_features: StrictInt = Field(ge=2, le=2**22)
    ngram_range: tuple[StrictInt, StrictInt]
    char_ngram_range: tuple[StrictInt, StrictInt] | None
    text_chars: StrictInt = Field(ge=0)
    dense_weight: FiniteFloat = Field(ge=0)
    alpha: FiniteFloat = Field(gt=0)
    max_iter: StrictInt = Field(ge=1)
    tol: FiniteFloat | None
    random_state: StrictInt | None

    @model_validator(mode="after")
    def _ranges(self) -> "ClassifierParams":
        _range(self.ngram_range, "ngram_range")
        _range(self.char_ngram_range, "char_ngram_range")
        return self

    @property
    def width(self) -> int:
        """Columns of the feature matrix these parameters produce."""
        return len(FEATURES) + self.n_features * (1 if self.char_ngram_range is None else 2)


class SparseMatrix(BaseModel):
    """A dense ``[rows, cols]`` matrix by its nonzero entries: row-major flat ``index`` (ascending) and ``value``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: StrictInt = Field(ge=1)
    cols: StrictInt = Field(ge=1)
    index: list[StrictInt]
    value: list[FiniteFloat]

    @model_validator(mode="after")
    def _entries(self) -> "SparseMatrix":
        if len(self.index) != len(self.value):
            raise ValueError(f"coef has {len(self.index)} indices but {len(self.value)} values")
        index = np.asarray(self.index, dtype=np.int64)
        if len(index) and (index[0] < 0 or index[-1] >= self.rows * self.cols or np.any(np.diff(index) <= 0)):
            size = self.rows * self.cols
            raise ValueError(f"coef indices must be strictly ascending within [0, rows * cols = {size})")
        return self


class ClassifierFile(BaseModel):
    """Everything a ``PromptClassifier`` needs, as plain JSON. Unknown fields, wrong shapes, NaN/inf: rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["adaptive_spec.prompt_classifier"] = Field(alias="schema")
    version: Literal[1]
    params: ClassifierParams
    feature_names: list[str]  # the hand-crafted features the weights were learned on, in column order
    classes: list[StrictStr] | list[StrictInt] = Field(min_length=2)
    coef: SparseMatrix  # [1 if 2 classes else n_classes, params.width]
    intercept: list[FiniteFloat]  # [coef.rows]
    t: FiniteFloat = Field(ge=1)  # SGDClassifier.t_: its step counter, so partial_fit continues the schedule

    @model_validator(mode="after")
    def _consistent(self) -> "ClassifierFile":
        if self.feature_names != list(FEATURES):
            raise ValueError(
                "feature_names differ from this version's hand-crafted features (the file was written by another "
                "version of adaptive_spec.policy.features); retrain the classifier"
            )
        if len(set(self.classes)) != len(self.classes) or list(self.classes) != sorted(self.classes):
            raise ValueError("classes must be distinct and sorted")
        rows = 1 if len(self.classes) == 2 else len(self.classes)
        if self.coef.rows != rows:
            raise ValueError(f"coef has {self.coef.rows} rows, expected {rows} for {len(self.classes)} classes")
        if self.coef.cols != self.params.width:
            raise ValueError(f"coef has {self.coef.cols} columns, the parameters give {self.params.width} features")
        if len(self.intercept) != rows:
            raise ValueError(f"intercept has {len(self.intercept)} values, expected {rows}")
        return self

    @classmethod
    def parse(cls, text: str | bytes) -> "ClassifierFile":
        """Validate a JSON document; ValueError naming the first problem (schema and version checked first)."""
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"not a prompt classifier file: invalid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"not a prompt classifier file: top level is {type(raw).__name__}, not an object")
        if raw.get("schema") != CLASSIFIER_SCHEMA:
            raise ValueError(f"not a prompt classifier file: schema is {raw.get('schema')!r}, "
                             f"expected {CLASSIFIER_SCHEMA!r}")
        if raw.get("version") != CLASSIFIER_VERSION:
            raise ValueError(f"unsupported prompt classifier file version {raw.get('version')!r} "
                             f"(this code reads version {CLASSIFIER_VERSION})")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ValueError(f"invalid prompt classifier file: {e}") from None
