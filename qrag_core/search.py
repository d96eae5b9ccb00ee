"""Multi-step retrieval at inference (docs/method.md §5): greedy and beam search over cached embeddings.

Each step encodes the current states (question + selected chunks, in document order) once, then
scores every available chunk with one rotation-and-dot-product pass over the cached action vectors
at the positions ρ_t of that state. Greedy search takes the argmax; beam search ("Plan Q-RAG")
keeps the B best partial selections and expands each by its top-k actions. Lines are ranked by
their estimated return (``beam_score="return"``, the default): the Q of the first pick, then for
each later pick its Q minus γ times the best Q of the state it was picked in, which telescopes the
Bellman equation Q(s_t, a_t) = r_t + γ·V(s_{t+1}) into the sum of the rewards the line is expected to
collect. ``beam_score="sum"`` ranks by summed Q, as the paper does; with a reward paid once, when the
last support chunk is found (docs/method.md §4), a sum counts that expected reward again at every
step and favours lines that find it late or never (docs/method.md §5 has the measurements). The beam
always keeps the greedy line, so its best selection never scores lower than greedy's.
Search stops after T steps, or earlier when the best Q falls below a threshold (at least one chunk
is always returned). With a lexical weight w > 0 or an identifier weight > 0 every ranking, the beam's
scores, the trace's values and the threshold use the hybrid score Q + w·f (+ the identifier term of ordered
documents) instead (:mod:`qrag_core.lexical`; one w for ordered documents, one for passage collections);
passage collections are then scored by the exact torch scorer, never a faiss index.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from qrag_core.chunking import Chunk, validate_text
from qrag_core.errors import InvalidInputError, warn_caller
from qrag_core.index import DocumentIndex
from qrag_core.lexical import lexical_feature
from qrag_core.search_options import SearchOptions
from qrag_core.validation import is_int

if TYPE_CHECKING:
    from qrag_core.model import QRAG

logger = logging.getLogger(__name__)


@dataclass
class SearchStep:
    """One selection: which chunk, its Q-value and position ρ_t at the moment it was chosen."""

    step: int
    """1-based step at which the chunk was selected."""
    chunk_index: int
    """Global index of the chunk in the searched index."""
    q_value: float
    """Q(s_t, c) of the chosen chunk."""
    position: float
    """ρ_t of the chosen chunk when it was chosen."""
    alternatives: list[tuple[int, float]] = field(default_factory=list)
    """The best other candidates at that step as (chunk index, Q)."""


@dataclass
class SelectedChunk:
    """A retrieved chunk with why it was picked."""

    chunk: Chunk
    step: int
    q_value: float
    position: float


@dataclass
class SearchResult:
    """The outcome of a search: selected chunks in document order, plus the step-by-step trace."""

    question: str
    chunks: list[SelectedChunk]
    trace: list[SearchStep]
    stopped_early: bool = False
    score: float = 0.0
    """What the search ranked its selection by: the estimated return, or the summed Q (``beam_score``)."""

    @property
    def texts(self) -> list[str]:
        return [s.chunk.text for s in self.chunks]

    @property
    def total_q(self) -> float:
        return float(sum(s.q_value for s in self.trace))

    def format(self, width: int = 100) -> str:
        """A human-readable trace: one line per step, then the evidence in document order."""
        lines = [f"Q: {self.question}"]
        by_step = {s.step: s for s in self.chunks}
        for step in self.trace:
            sel = by_step[step.step]
            text = sel.chunk.text if len(sel.chunk.text) <= width else sel.chunk.text[: width - 3] + "..."
            lines.append(
                f"  step {step.step}: chunk {sel.chunk.index:>6} (doc {sel.chunk.doc_id})  "
                f"Q={step.q_value:+.3f}  rho={step.position:7.3f}  {text}"
            )
        if self.stopped_early:
            lines.append("  (stopped early: best Q fell below the threshold)")
        return "\n".join(lines)


RETURN_DISCOUNT = 0.99
"""γ of the estimated return that ranks beam lines: the discount soft Q-learning trains with (docs/method.md §4)."""


@dataclass
class _Beam:
    selected: tuple[int, ...]
    score: float
    steps: list[SearchStep]
    greedy: bool


def _child_score(parent: _Beam, q: float, best_q: float, beam_score: str) -> float:
    """The score of ``parent`` extended by a pick of value ``q`` in a state whose best value is ``best_q``."""
    if beam_score == "sum":
        return parent.score + q
    if not parent.steps:
        return q  # Q(s_0, a_0): the return expected from the start
    # r̂ = Q(s_t, a_t) − γ·V(s_t) replaces the γ·V(s_t) the parent's last pick was valued with (Bellman).
    return parent.score - RETURN_DISCOUNT * best_q + q


def _validate(question: object, index: DocumentIndex, alternatives: object) -> None:
    """What the search takes besides its options (those are checked by :class:`SearchOptions`)."""
    validate_text(question, "the question")
    if not isinstance(index, DocumentIndex):
        raise InvalidInputError(f"index must be a DocumentIndex, got {type(index).__name__}")
    if len(index) == 0:
        raise InvalidInputError("the index is empty; add a document first")
    if not is_int(alternatives) or alternatives < 0:  # type: ignore[operator]
        raise InvalidInputError(f"alternatives must be an integer >= 0, got {alternatives!r}")


def _restricted(index: DocumentIndex, document_ids: tuple[str, ...]) -> DocumentIndex:
    """An index of some documents only, in index order (for a search restricted to several of them).

    It is kept with ``index`` (:meth:`DocumentIndex.derived`, forgotten when a document is added or
    removed), so repeating the last restriction reuses it, with the action vectors and faiss index a
    model computed over it, instead of copying the documents and rebuilding those on every search.
    """
    unknown = [doc_id for doc_id in document_ids if doc_id not in index.doc_ids]
    if unknown:
        raise InvalidInputError(f"no document(s) {unknown} in the index (it has {len(index.doc_ids)} documents)")
    chosen = tuple(sorted(document_ids, key=index.doc_ids.index))

    def subset() -> DocumentIndex:
        restricted = DocumentIndex(index.fingerprint, index.dim)
        for doc_id in chosen:
            restricted.add_from(index, doc_id)
        return restricted

    return index.derived(("restricted", chosen), subset)


def search(
    model: QRAG,
    question: str,
    index: DocumentIndex,
    options: SearchOptions | None = None,
    *,
    alternatives: int = 3,
    **overrides: Any,
) -> SearchResult:
    """Select up to ``options.k`` chunks of ``index`` for ``question``.

    ``options`` (:class:`SearchOptions`, each option also accepted as a keyword that overrides it):
    ``k`` search steps, ``beam`` width (1 = greedy), ``expand_k`` top actions each beam is expanded
    by, ``stop_threshold`` below which a line stops, ``document_id``/``document_ids`` to search some
    documents of a multi-document index only, the ``order`` of the result, ``vector_index`` for passage
    collections, ``lexical_weight`` w of the hybrid score Q + w·f (0: pure Q), ``passage_lexical_weight``
    (the w of passage collections, when it differs) and ``identifier_weight`` (the weight, in ordered documents,
    of the same feature over the state's words holding a digit). Options left at None
    take the model's defaults. ``alternatives``: runners-up recorded per step in the trace.
    """
    options = (options or SearchOptions()).override(**overrides).resolve(model.config)
    _validate(question, index, alternatives)
    if options.document_ids is not None:
        chosen = tuple(dict.fromkeys(options.document_ids))
        if not chosen:
            return SearchResult(question, [], [])
        restricted = len(chosen) > 1
        index = _restricted(index, chosen) if restricted else index
        options = dataclasses.replace(options, document_id=None if restricted else chosen[0])
    result = _search(model, question, index, options, alternatives)
    if options.order == "rank":
        result.chunks.sort(key=lambda s: s.step)
    return result


def _kind_weights(
    index: DocumentIndex, offset: int, end: int, ordered: Sequence[bool], in_ordered: float, in_passages: float
) -> torch.Tensor | None:
    """A weight of the hybrid score for each chunk of ``[offset, end)``: ``in_ordered`` in ordered documents,
    ``in_passages`` in passage collections; None when every one is 0."""
    kinds = {True: in_ordered, False: in_passages}
    if not any(kinds[flag] for flag in ordered):
        return None
    if len(ordered) == 1:
        return torch.full((end - offset,), float(kinds[ordered[0]]))
    sizes = torch.diff(index.doc_starts, append=torch.tensor([len(index)]))
    per_document = torch.tensor([float(kinds[flag]) for flag in ordered])
    return torch.repeat_interleave(per_document, sizes)


def _lexical_bonus(
    index: DocumentIndex,
    state_text: str,
    offset: int,
    end: int,
    selected: Sequence[int],
    weights: torch.Tensor | None,
    identifier_weights: torch.Tensor | None,
) -> torch.Tensor:
    """What the hybrid score adds to Q at every chunk of ``[offset, end)`` for one state (docs/method.md Eq. M10):
    w·f over all the state's words plus w_id times f over its identifier words (each weight per chunk)."""
    bonus = torch.zeros(end - offset)
    if weights is not None:
        bonus += weights * lexical_feature(index, state_text, offset, end, selected)
    if identifier_weights is not None:
        bonus += identifier_weights * lexical_feature(index, state_text, offset, end, selected, identifiers_only=True)
    return bonus


@torch.inference_mode()
def _search(
    model: QRAG, question: str, index: DocumentIndex, options: SearchOptions, alternatives: int
) -> SearchResult:
    """The search itself, with every option resolved; the chunks come in document order."""
    steps, beam, expand_k, stop_threshold = options.k, options.beam, options.expand_k, options.stop_threshold
    document_id = options.document_id

    actions = model.index_action_vectors(index)
    if document_id is not None:
        offset, end = index.document_range(document_id)
        doc_starts = None
        ordered = [index.ordered[index.doc_ids.index(document_id)]]
    else:
        offset, end = 0, len(index)
        doc_starts = index.doc_starts.tolist() if len(index.doc_ids) > 1 else None
        ordered = index.ordered
    actions = actions[offset:end]
    n = end - offset
    if steps > n:
        warn_caller(f"{steps} steps asked for but only {n} chunks exist; returning all of them")
        steps = n
    norm_max = model.index_action_norm_max(index)
    weights = _kind_weights(index, offset, end, ordered, options.lexical_weight, options.passage_lexical_weight)
    identifier_weights = _kind_weights(index, offset, end, ordered, options.identifier_weight, 0.0)
    lexical = weights is not None or identifier_weights is not None
    passages = None
    if not lexical and model.positions_off(ordered):  # faiss cannot add the lexical features
        passages = model.passage_index(index, options.vector_index, offset, end)

    beams = [_Beam((), 0.0, [], True)]
    finished: list[_Beam] = []
    for t in range(steps):
        selections = [[index.chunks[offset + i].text for i in sorted(b.selected)] for b in beams]
        states = model.search_state_vectors([question] * len(beams), selections)
        k = min(max(expand_k, alternatives + 1), n - t)
        children: dict[frozenset[int], _Beam] = {}
        for row, b in enumerate(beams):
            bonus = None
            if lexical:
                state_text = "\n".join([question, *selections[row]])
                bonus = _lexical_bonus(index, state_text, offset, end, b.selected, weights, identifier_weights)
                bonus = bonus.to(actions.device)
            top_q, top_i, top_positions = model.top_k(
                states[row], actions, b.selected, k, doc_starts, norm_max, ordered, passages, bonus
            )
            if stop_threshold is not None and t > 0 and top_q[0].item() < stop_threshold:
                finished.append(b)
                continue
            cand = list(zip(top_i.tolist(), top_q.tolist(), strict=True))
            cand_positions = top_positions.tolist()
            for rank, (i, qv) in enumerate(cand[: min(expand_k, len(cand))]):
                step = SearchStep(
                    t + 1,
                    offset + i,
                    qv,
                    cand_positions[rank],
                    [(offset + j, v) for j, v in cand if j != i][:alternatives],
                )
                score = _child_score(b, qv, cand[0][1], options.beam_score)
                child = _Beam((*b.selected, i), score, [*b.steps, step], b.greedy and rank == 0)
                key = frozenset(child.selected)
                if key not in children or children[key].score < child.score or child.greedy:
                    children[key] = child
        ranked = sorted(children.values(), key=lambda c: c.score, reverse=True)
        kept = ranked[:beam]
        greedy_child = next((c for c in ranked if c.greedy), None)
        if greedy_child is not None and greedy_child not in kept:
            kept[-1] = greedy_child
        beams = kept
        if not beams:
            break
    finished.extend(beams)
    best = max(finished, key=lambda b: b.score)
    # Global index order is document order (documents are appended whole), which the reader wants.
    selected = [
        SelectedChunk(index.chunks[s.chunk_index], s.step, s.q_value, s.position)
        for s in sorted(best.steps, key=lambda s: s.chunk_index)
    ]
    return SearchResult(question, selected, best.steps, stopped_early=len(best.steps) < steps, score=best.score)
