"""Q-RAG as the retriever of a LlamaIndex query engine over a long document, saved and reloaded.

Runs offline: without a chat endpoint the engine uses LlamaIndex's ``MockLLM``, which answers with
the prompt it received, so you see exactly what a real LLM would read; the retrieved nodes (score =
Q-value) are printed, and how to configure an endpoint. With ``OPENAI_BASE_URL`` (or
``OPENAI_API_KEY``) and ``QRAG_ANSWER_MODEL`` set and ``pip install llama-index-llms-openai-like``,
a real chat model answers.
"""

from __future__ import annotations

import tempfile

from example_document import example_arguments, example_document, print_case
from llama_index.core import Document
from llama_index.core.llms import LLM, MockLLM

from qrag_integrations.llamaindex import QRAGRetriever
from qrag_integrations.openai import EndpointConfig, endpoint_help


def chat_model(endpoint: EndpointConfig) -> LLM | None:
    """An LLM for the configured endpoint, or None (after saying why) when there is none to use."""
    if not endpoint.configured:
        print(
            f"\nNo chat endpoint configured; using MockLLM, which echoes its prompt. To get answers, {endpoint_help()}."
        )
        return None
    try:
        from llama_index.llms.openai_like import OpenAILike
    except ImportError:
        print("\nA chat endpoint is configured, but this example needs: pip install llama-index-llms-openai-like")
        return None
    return OpenAILike(
        api_base=endpoint.base_url, api_key=endpoint.api_key or "not-needed", model=endpoint.model, is_chat_model=True
    )


def main() -> None:
    args = example_arguments(__doc__.splitlines()[0]).parse_args()
    document = example_document(args.task, args.question_index, args.background_sentences)
    print_case(document)

    retriever = QRAGRetriever.from_defaults(
        documents=[Document(text=document.text, metadata={"source": document.source}, id_=document.doc_id)],
        model=args.model,
        k=args.k,
    )
    with tempfile.TemporaryDirectory() as store:
        retriever.persist(store)
        retriever = QRAGRetriever.from_persist_dir(store, k=args.k)
        print(f"Index saved to and reloaded from {store}")

    llm = chat_model(EndpointConfig.from_env())
    engine = retriever.as_query_engine(llm=llm or MockLLM())
    response = engine.query(document.question)
    for hit in response.source_nodes:
        meta, text = hit.node.metadata, hit.node.get_content()
        print(f"  step {meta['qrag_step']}  score(Q)={hit.score:+.3f}  chunk {meta['qrag_chunk_index']:>4}  {text}")
    print(f"\n{'Prompt the LLM would read' if llm is None else 'Answer'}:\n{response}")


if __name__ == "__main__":
    main()
