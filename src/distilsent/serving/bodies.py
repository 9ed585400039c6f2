"""The bodies the service reads and answers: pydantic models of the Hugging Face Inference API and TEI request
and answer bodies and of ``/explain``'s, :func:`parse_body` (one line per problem, text pairs named as such),
:class:`ServiceError` (a request answered with an error status), and the OpenAPI description of the routes
that read their bodies themselves (:class:`ApiDocs`).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from . import missing_extra

try:
    from pydantic import (
        BaseModel,
        ConfigDict,
        Field,
        RootModel,
        StrictBool,
        StrictFloat,
        StrictInt,
        StrictStr,
        TypeAdapter,
        ValidationError,
    )
except ImportError as e:
    raise missing_extra(e) from None

from ..data.examples import text_problem
from ..runtime.classifier import FUNCTIONS

LongText = Literal["truncate", "head_tail", "window"]
Aggregate = Literal["mean", "max"]
LONG_TEXT = Field(default=None, description="distilsent: texts over the maximum length are cut (truncate), read "
                  "as their first 128 + last 382 tokens (head_tail) or as windows whose scores are aggregated "
                  "(window); default: the server's --long-text, else 422 for such texts")
STRIDE = Field(default=None, ge=1, description="distilsent: with window, a window starts every this many tokens")
WINDOW = Field(default=None, ge=3, description="distilsent: with window, tokens per window ([CLS] and [SEP] "
               "included; a wider one is cut to the model's maximum length); default: the server's --window, "
               "else that maximum")
AGGREGATE = Field(default=None, description="distilsent: with window, the mean of the windows' scores weighted by "
                  "their tokens, or the most confident window (max); default: the server's --aggregate, else mean")


class Parameters(BaseModel):
    """Hugging Face Inference API parameters of text classification."""

    model_config = ConfigDict(extra="forbid")
    top_k: StrictInt | None = Field(
        default=None, ge=1, description="labels per text, best first; absent or null: every label (the hosted "
        "Inference API's default)"
    )
    function_to_apply: Literal[FUNCTIONS] | None = None  # type: ignore[valid-type]
    truncation: StrictBool = Field(default=False, description="cut texts over the maximum length instead of 422")
    # distilsent's own fields (not in the Hugging Face API): long texts and the abstain band.
    long_text: LongText | None = LONG_TEXT
    stride: StrictInt | None = STRIDE
    aggregate: Aggregate | None = AGGREGATE
    window: StrictInt | None = WINDOW
    neutral_below: StrictFloat | None = Field(
        default=None, ge=0, le=1, description="distilsent: label NEUTRAL when the best score is below this "
        "(binary models; each text's list then holds its best label only, so top_k may be absent, null or 1)",
    )


INPUTS = Field(description="a text, or a list of texts (a batch, never a pair)")
TEXT_PAIRS = 'inputs: text pairs ({"text", "text_pair"}) are not supported; send a text or a list of texts'


class HuggingFaceRequest(BaseModel):
    """Hugging Face Inference API body."""

    model_config = ConfigDict(extra="forbid")
    inputs: StrictStr | list[StrictStr] = INPUTS
    parameters: Parameters | None = None
    options: dict[str, Any] | None = Field(
        default=None, description="Hugging Face Inference API options (wait_for_model, use_cache): accepted, ignored"
    )


class TeiRequest(BaseModel):
    """text-embeddings-inference ``/predict`` body."""

    model_config = ConfigDict(extra="forbid")
    inputs: StrictStr | list[StrictStr] = INPUTS
    raw_scores: StrictBool | None = Field(default=None, description="logits instead of probabilities")
    truncate: StrictBool | None = Field(default=None, description="cut texts over the maximum length")
    long_text: LongText | None = LONG_TEXT
    stride: StrictInt | None = STRIDE
    aggregate: Aggregate | None = AGGREGATE
    window: StrictInt | None = WINDOW


PredictRequest = TypeAdapter(Union[HuggingFaceRequest, TeiRequest])


class ExplainRequest(BaseModel):
    """Body of ``POST /explain``, the page's word highlights."""

    model_config = ConfigDict(extra="forbid")
    inputs: StrictStr = Field(description="one text")


class ErrorBody(BaseModel):
    error: str
    error_type: str


class Label(BaseModel):
    label: str
    score: float


class HuggingFaceAnswer(RootModel[list[list[Label]]]):
    """Hugging Face body: one list per input (a string is one input), every label sorted by score, or the
    top_k best; with neutral_below the best label only, NEUTRAL inside the band."""


class TeiAnswer(RootModel[Union[list[Label], list[list[Label]]]]):
    """TEI body: every label sorted by score ({"score", "label"}); a list of texts gives one such list per text."""


PredictAnswer = TypeAdapter(Union[HuggingFaceAnswer, TeiAnswer])


class ServiceError(Exception):
    """A request the service answers with an error status (kept inside this module: HTTP is its concern)."""

    def __init__(self, status: int, error_type: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after  # seconds, where the status's usual Retry-After would mislead


def parse_body(raw: bytes) -> HuggingFaceRequest | TeiRequest:
    """The body as one of the two APIs; any malformed JSON (invalid UTF-8, too deep, ...) is a 422, and so is
    an empty or whitespace-only text (:func:`~distilsent.data.examples.text_problem`, the rule of every verb):
    it has nothing to classify, and its label would be the bias's."""
    try:
        body = PredictRequest.validate_json(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        if errors[0]["type"] == "json_invalid":
            reason = errors[0].get("ctx", {}).get("error", "malformed")
            raise ServiceError(422, "validation", f"body is not valid JSON ({reason})") from None
        if any(_is_text_pair(problem) for problem in errors):  # one line, not every union member's complaint
            raise ServiceError(422, "validation", TEXT_PAIRS) from None
        problems = []
        for problem in errors[:6]:
            if problem["type"] in ("model_type", "model_attributes_type"):
                problems.append("body: expected a JSON object")
                continue
            # loc starts with the union member tried: say which API's field is wrong
            api, *where = problem["loc"]
            api = "Hugging Face" if api == HuggingFaceRequest.__name__ else "TEI"
            problems.append(f"{'.'.join(str(w) for w in where) or 'body'}: {problem['msg']} ({api} body)")
        unique = list(dict.fromkeys(problems))
        raise ServiceError(422, "validation", "; ".join(unique) or "invalid request body") from None
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    problems = [(i, problem) for i, text in enumerate(texts) if (problem := text_problem(text))]
    if problems:
        single = isinstance(body.inputs, str)
        raise ServiceError(422, "validation", "; ".join(
            f"{'inputs' if single else f'inputs[{i}]'}: {problem}" for i, problem in problems[:6]
        ))
    return body


def _is_text_pair(problem: dict) -> bool:
    """Whether a validation problem is one of the pipeline's text-pair inputs: ``{"text", "text_pair"}``, or a
    ``[text, pair]`` list inside the list of inputs."""
    where, value = problem["loc"][1:], problem.get("input")
    if where[:1] != ("inputs",):
        return False
    if isinstance(value, dict):
        return bool({"text", "text_pair"} & set(value))
    nested = len(where) == 3  # ("inputs", "list[str]", index): an element of the list of inputs
    return nested and isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


# ---------------------------------------------------------------------------------------------- OpenAPI

ERROR_STATUSES = {
    400: "Host header not allowed",
    408: "body not received in time",
    413: "body, texts, tokens or an explanation's work over the limits",
    415: "body not sent as application/json",
    422: "invalid body, or a text too long without truncation",
    429: "queue full (predictions or explanations) or too many concurrent requests (Retry-After)",
    500: "the backend failed on this request's texts",
    503: "loading, failed, shutting down, or an explanation past its deadline (Retry-After)",
}
ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in ERROR_STATUSES.items()}
EXAMPLES = {
    "hf": {"inputs": "a gripping, beautiful film", "parameters": {"top_k": 2}},
    "tei": {"inputs": ["a gripping, beautiful film", "dull"], "raw_scores": False, "truncate": True},
}
# What the embedded default model answers to the examples above (scores rounded).
ANSWER_EXAMPLES = {
    "hf": [[{"label": "POSITIVE", "score": 0.9876}, {"label": "NEGATIVE", "score": 0.0124}]],
    "tei": [[{"score": 0.9876, "label": "POSITIVE"}, {"score": 0.0124, "label": "NEGATIVE"}],
            [{"score": 0.9661, "label": "NEGATIVE"}, {"score": 0.0339, "label": "POSITIVE"}]],
}
ANSWER_DESCRIPTION = (
    "Hugging Face body: as the hosted Inference API, one list per input (a string is one input), every label "
    "sorted by score or the top_k best. TEI body: every label sorted by score; one such list per text for a list."
)



class ApiDocs:
    """The OpenAPI description of the routes that read their bodies themselves (the limits come first, so
    FastAPI cannot infer it): keyword arguments for the route decorators, and the schemas they refer to
    (:attr:`definitions`, to merge into the app's ``components``)."""

    def __init__(self) -> None:
        self.definitions: dict = {}
        self.body_schema, self.answer_schema = self._schema_of(PredictRequest), self._schema_of(PredictAnswer)
        self.definitions["ExplainRequest"] = ExplainRequest.model_json_schema()

    def _schema_of(self, adapter: TypeAdapter) -> dict:
        schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
        self.definitions.update(schema.pop("$defs", {}))
        return schema

    @staticmethod
    def _request_body(schema: dict, example: dict) -> dict:
        content = {"application/json": {"schema": schema, "example": example}}
        return {"requestBody": {"required": True, "content": content}}

    def predict(self, api: Literal["hf", "tei"]) -> dict:
        """``responses`` and ``openapi_extra`` of ``POST /`` (``hf``) or ``POST /predict`` (``tei``)."""
        content = {"application/json": {"schema": self.answer_schema, "example": ANSWER_EXAMPLES[api]}}
        return {"responses": {**ERRORS, 200: {"description": ANSWER_DESCRIPTION, "content": content}},
                "openapi_extra": self._request_body(self.body_schema, EXAMPLES[api])}

    def explain(self) -> dict:
        schema = {"$ref": "#/components/schemas/ExplainRequest"}
        return {"responses": ERRORS, "openapi_extra": self._request_body(schema, {"inputs": "a gripping film"})}
