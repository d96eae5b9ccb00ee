"""Thin adapters that plug Q-RAG retrieval into LLM frameworks and chat endpoints.

Each adapter is its own module, imported on demand, so each framework or client is an optional extra:

- ``qrag_integrations.langchain``: ``QRAGRetriever``, a LangChain ``BaseRetriever``
  (``pip install "qrag[langchain]"``);
- ``qrag_integrations.llamaindex``: ``QRAGRetriever``, a LlamaIndex ``BaseRetriever``
  (``pip install "qrag[llamaindex]"``);
- ``qrag_integrations.openai``: ``Answerer``, retrieval then an answer from any OpenAI-compatible chat
  endpoint (``pip install "qrag[openai]"``, needed only once a question is sent).

The behaviour the retrievers share (indexing, search options, result metadata, persistence, thread safety)
lives in :mod:`qrag_core.retriever`.
"""
