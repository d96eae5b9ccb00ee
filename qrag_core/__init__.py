"""qrag: multi-step retrieval over very long documents with embedders trained by soft Q-learning.

Implements "Q-RAG: Long Context Multi-step Retrieval via Value-based Embedder Training"
(arXiv 2511.07328). Start with :class:`QRAG`::

    from qrag_core import QRAG
    model = QRAG.from_pretrained()          # the shipped default model, offline
    result = model.retrieve("Where is Mary?", long_text)
    print(result.format())
"""

__version__ = "0.1.0"

from qrag_core.chunking import Chunk, chunk_text  # noqa: E402
from qrag_core.config import ChunkingConfig, QRAGConfig  # noqa: E402
from qrag_core.embedding_cache import EmbeddingCache  # noqa: E402
from qrag_core.errors import (  # noqa: E402
    CheckpointError,
    DataFormatError,
    InvalidInputError,
    ModelNotFoundError,
    QRAGError,
)
from qrag_core.index import DocumentIndex  # noqa: E402
from qrag_core.model import QRAG  # noqa: E402
from qrag_core.search import SearchResult, SearchStep, SelectedChunk  # noqa: E402

__all__ = [
    "QRAG",
    "CheckpointError",
    "Chunk",
    "ChunkingConfig",
    "DataFormatError",
    "DocumentIndex",
    "EmbeddingCache",
    "InvalidInputError",
    "ModelNotFoundError",
    "QRAGConfig",
    "QRAGError",
    "SearchResult",
    "SearchStep",
    "SelectedChunk",
    "__version__",
    "chunk_text",
]
