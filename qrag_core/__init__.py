"""qrag: multi-step retrieval over very long documents with embedders trained by soft Q-learning.

Implements "Q-RAG: Long Context Multi-step Retrieval via Value-based Embedder Training"
(arXiv 2511.07328). Start with :class:`Retriever`::

    from qrag_core import Retriever
    retriever = Retriever.from_pretrained()     # the shipped default model, offline
    retriever.add_texts([long_text])
    result = retriever.search("Where is Mary?")
    print(result.format())
"""

from qrag_core._version import __version__
from qrag_core.chunking import Chunk, chunk_text
from qrag_core.config import ChunkingConfig, QRAGConfig
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import (
    CheckpointError,
    DataFormatError,
    InvalidInputError,
    ModelNotFoundError,
    QRAGError,
)
from qrag_core.index import DocumentIndex
from qrag_core.model import QRAG
from qrag_core.retriever import Retriever
from qrag_core.search import SearchResult, SearchStep, SelectedChunk
from qrag_core.search_options import SearchOptions

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
    "Retriever",
    "SearchOptions",
    "SearchResult",
    "SearchStep",
    "SelectedChunk",
    "__version__",
    "chunk_text",
]
