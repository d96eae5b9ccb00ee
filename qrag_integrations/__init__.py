"""Thin adapters that plug Q-RAG retrieval into LLM frameworks.

Each adapter is its own module, imported on demand, so each framework is an optional extra:

- ``qrag_integrations.langchain``: ``QRAGRetriever``, a LangChain ``BaseRetriever``
  (``pip install "qrag[langchain]"``);
- ``qrag_integrations.llamaindex``: ``QRAGRetriever``, a LlamaIndex ``BaseRetriever``
  (``pip install "qrag[llamaindex]"``).

The behaviour both share (indexing, search options, result metadata, persistence, thread safety)
lives in :mod:`qrag_core.retriever`.
"""
