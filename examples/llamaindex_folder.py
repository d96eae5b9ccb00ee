"""Index a folder of text files with a LlamaIndex ``IngestionPipeline``, persist, reload and query.

``SimpleDirectoryReader`` reads the folder, an ``IngestionPipeline`` with a ``SentenceSplitter`` cuts
it into nodes, and the nodes go into the Q-RAG retriever: the nodes of each file are put back
together into that file (by their ``start_char_idx``), so Q-RAG's positions span the whole file, and
a query returns the user's own nodes. The retriever is persisted, reloaded and queried through a
``RetrieverQueryEngine``. Runs offline: without a chat endpoint the engine uses ``MockLLM``, which
answers with the prompt it was given; with ``OPENAI_BASE_URL`` (or ``OPENAI_API_KEY``) set and
``pip install llama-index-llms-openai-like``, a real chat model answers.
"""

from __future__ import annotations

from example_document import folder_arguments, folder_case
from llama_index.core import SimpleDirectoryReader
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llamaindex_query_engine import chat_model

from qrag_integrations.llamaindex import QRAGRetriever
from qrag_integrations.openai import EndpointConfig


def main() -> None:
    args = folder_arguments(__doc__.splitlines()[0]).parse_args()
    folder, store, question = folder_case(args)

    documents = SimpleDirectoryReader(str(folder), required_exts=[".txt"], recursive=True).load_data()
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=32)])
    nodes = pipeline.run(documents=documents)
    retriever = QRAGRetriever.from_defaults(nodes=nodes, model=args.model, similarity_top_k=args.k, show_progress=True)
    print(f"Indexed {len(documents)} files ({len(nodes)} nodes) as {len(retriever.session.doc_ids)} documents")
    retriever.persist(store)
    reloaded = QRAGRetriever.from_persist_dir(store)
    print(f"Persisted to and reloaded from {store}\n")

    llm = chat_model(EndpointConfig.from_env())
    engine = reloaded.as_query_engine(llm=llm or MockLLM())
    response = engine.query(question)
    print(f"Question: {question}")
    for hit in response.source_nodes:
        name = hit.node.metadata.get("file_name", "?")
        for chunk in hit.qrag:
            print(f"  step {chunk['qrag_step']}  Q={chunk['qrag_q_value']:+.3f}  {name}  {chunk['text']}")
    print(f"\n{'Prompt the LLM would read' if llm is None else 'Answer'}:\n{response}")


if __name__ == "__main__":
    main()
