"""Index a folder of text files with LangChain, save the index, reload it and ask a question.

The files are read as LangChain ``Document`` objects (``source`` = the file), cut by LangChain's
``RecursiveCharacterTextSplitter(add_start_index=True)`` as a LangChain user would, and added to a
``QRAGRetriever``: the splits of each file are put back together into that file (overlap removed,
offsets in the file), so Q-RAG's positions span the whole file. The retriever is saved (no pickle),
reloaded as it would be the next day, and asked. Runs offline: without a chat endpoint it prints the
evidence and how to configure one; with ``OPENAI_BASE_URL`` (or ``OPENAI_API_KEY``) set, the
answerer asks the chat model.
"""

from __future__ import annotations

from pathlib import Path

from example_document import folder_arguments, folder_case
from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter

from qrag_integrations.langchain import QRAGRetriever
from qrag_integrations.openai import Answerer, EndpointConfig, endpoint_help


def load_folder(folder: Path) -> list[Document]:
    """One document per ``.txt`` file of ``folder`` (recursively), with its path as ``source``."""
    files = sorted(folder.rglob("*.txt"))
    if not files:
        raise SystemExit(f"no .txt files in {folder}")
    return [Document(page_content=f.read_text(encoding="utf-8"), metadata={"source": str(f)}) for f in files]


def main() -> None:
    args = folder_arguments(__doc__.splitlines()[0]).parse_args()
    folder, store, question = folder_case(args)

    files = load_folder(folder)
    splits = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200, add_start_index=True).split_documents(
        files
    )
    retriever = QRAGRetriever.from_pretrained(args.model, k=args.k, show_progress=True)
    ids = retriever.add_documents(splits)
    chunks = len(retriever.session)
    print(f"Indexed {len(files)} files ({len(splits)} splits) as {len(set(ids))} documents, {chunks} chunks")
    retriever.save(store)
    print(f"Saved to {store}")

    reloaded = QRAGRetriever.load(store)
    print(f"Reloaded {len(reloaded.session.doc_ids)} documents from {store}\n")
    print(f"Question: {question}")
    for doc in reloaded.invoke(question):
        meta = doc.metadata
        where = f"{Path(meta['source']).name}:{meta['qrag_start']}"
        print(f"  step {meta['qrag_step']}  Q={meta['qrag_q_value']:+.3f}  {where:<28} {doc.page_content}")

    endpoint = EndpointConfig.from_env()
    if not endpoint.configured:
        print(f"\nNo chat endpoint configured; to get an answer, {endpoint_help()}.")
        return
    answer = Answerer(reloaded.session, endpoint, options=reloaded.search_options()).answer(question)
    print(f"\nAnswer from {answer.model}: {answer.text}")


if __name__ == "__main__":
    main()
