"""The options of a multi-step search, one dataclass for every way in (docs/method.md §5).

:class:`SearchOptions` is at once the parameters of :func:`qrag_core.search.search`, the defaults and
per-call overrides of :class:`qrag_core.retriever.Retriever`, the fields of the LangChain and
LlamaIndex adapters and the search flags of ``qrag-index search`` (generated from the field
docstrings by :func:`qrag_core.cli.add_dataclass_flags`). Options are checked here, when they are
made, and nowhere else; an option left at None takes the model's default (its
:class:`~qrag_core.config.QRAGConfig`) when :meth:`SearchOptions.resolve` fills them in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from qrag_core.config import QRAGConfig
from qrag_core.errors import InvalidInputError
from qrag_core.validation import check_finite, check_non_negative, check_positive_int
from qrag_core.vector_index import check_kind, default_kind

ORDERS: tuple[str, ...] = ("document", "rank")
"""Result orders: ``document`` (source order, what a reader wants) or ``rank`` (the order of selection)."""
BEAM_SCORES: tuple[str, ...] = ("return", "sum")
"""How beam lines are ranked: ``return`` (estimated return, the default) or ``sum`` (summed Q, the paper's)."""
CHOICES: dict[str, tuple[str, ...]] = {"order": ORDERS, "beam_score": BEAM_SCORES}
"""The options that take one of a fixed set of names (``vector_index`` has its own check, :func:`check_kind`)."""
WHAT = "retrieval option"
"""How an error names an option."""
POSITIVE = {"positive": True}
"""Field metadata of a count that must be at least 1 (checked here; the CLI flags parse it so)."""


@dataclass(frozen=True)
class SearchOptions:
    """How to search; an option left at None takes the model's default (its QRAGConfig)."""

    k: int | None = field(default=None, metadata={**POSITIVE, "flag": "--steps"})
    """Chunks to retrieve, i.e. search steps T (none: the model's max_steps)."""
    beam: int | None = field(default=None, metadata=POSITIVE)
    """Beam width B, 1 = greedy (none: the model's beam_width)."""
    expand_k: int | None = field(default=None, metadata=POSITIVE)
    """Top actions each beam is expanded by (none: the beam width)."""
    beam_score: str | None = None
    """How beam lines are ranked: return (estimated return, the default) or sum (summed Q, as in the paper)."""
    stop_threshold: float | None = None
    """Stop early when the best Q falls below this (none: the model's stop_threshold)."""
    document_id: str | None = None
    """Search only this document of a multi-document index (none: all of them)."""
    document_ids: tuple[str, ...] | None = None
    """Search only these documents, e.g. those a metadata filter matched; wins over document_id (empty: none)."""
    order: str | None = None
    """Order of the results: document (source order, the default) or rank (the order the search picked them)."""
    vector_index: str | None = None
    """Passage collections: torch or flat (exact); ivf, ivf-sq8, ivf-pq or hnsw (approximate); none: flat on a GPU."""
    lexical_weight: float | None = None
    """w of the hybrid score Q + w·(BM25 of the state text, in [0, 1]) in every document; 0 = pure Q (none: model's)."""
    passage_lexical_weight: float | None = None
    """w of the hybrid score in passage collections only (none: lexical_weight if given, else the model's)."""
    identifier_weight: float | None = None
    """Weight in ordered documents of BM25 over the state's words holding a digit (ids, numbers) (none: model's)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.metadata.get("positive"):
                check_positive_int(f"{WHAT} {f.name}", getattr(self, f.name), allow_none=True)
        check_finite(f"{WHAT} stop_threshold", self.stop_threshold, allow_none=True)
        if self.document_id is not None and not isinstance(self.document_id, str):
            raise InvalidInputError(f"{WHAT} document_id must be a string, got {self.document_id!r}")
        if self.document_ids is not None:
            if isinstance(self.document_ids, str) or not all(isinstance(i, str) for i in self.document_ids):
                raise InvalidInputError(f"{WHAT} document_ids must be a list of strings, got {self.document_ids!r}")
            object.__setattr__(self, "document_ids", tuple(self.document_ids))
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise InvalidInputError(f"{WHAT} {name} must be one of {list(allowed)}, got {value!r}")
        check_kind(self.vector_index, f"{WHAT} vector_index")
        for name in ("lexical_weight", "passage_lexical_weight", "identifier_weight"):
            check_non_negative(f"{WHAT} {name}", getattr(self, name), allow_none=True)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in field order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def override(self, **changes: Any) -> SearchOptions:
        """These options with ``changes`` applied; None values keep the current setting."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise InvalidInputError(f"unknown {WHAT}(s) {unknown}; known options: {list(self.names())}")
        return dataclasses.replace(self, **{name: value for name, value in changes.items() if value is not None})

    def resolve(self, config: QRAGConfig) -> SearchOptions:
        """Every option that has a default filled in: the model's T, beam width, threshold, lexical and identifier
        weights, expand_k = the beam width, beams ranked by estimated return, document order, faiss flat where faiss
        sees a GPU (a threshold stays None when the model has none)."""
        beam = config.beam_width if self.beam is None else self.beam
        weight = config.lexical_weight if self.lexical_weight is None else self.lexical_weight
        if self.passage_lexical_weight is not None:
            passage_weight = self.passage_lexical_weight
        elif self.lexical_weight is not None or config.passage_lexical_weight is None:
            passage_weight = weight
        else:
            passage_weight = config.passage_lexical_weight
        return dataclasses.replace(
            self,
            k=config.max_steps if self.k is None else self.k,
            beam=beam,
            expand_k=beam if self.expand_k is None else self.expand_k,
            beam_score=self.beam_score or BEAM_SCORES[0],
            stop_threshold=config.stop_threshold if self.stop_threshold is None else self.stop_threshold,
            order=self.order or ORDERS[0],
            vector_index=self.vector_index or default_kind(),
            lexical_weight=weight,
            passage_lexical_weight=passage_weight,
            identifier_weight=config.identifier_weight if self.identifier_weight is None else self.identifier_weight,
        )

    def as_dict(self) -> dict[str, Any]:
        """The options by name (as saved with a retriever, and as an adapter's fields)."""
        return {name: getattr(self, name) for name in self.names()}
