"""Q-RAG as the retriever of a LangChain (LCEL) question-answering chain over a long document.

The chain is ``{"context": retriever | format, "question": RunnablePassthrough()} | prompt | chat_model``.
Runs offline: without a chat endpoint the chain stops at the prompt, which is printed with the
retrieved chunks and how to configure an endpoint. With ``OPENAI_BASE_URL`` (or ``OPENAI_API_KEY``)
and ``QRAG_ANSWER_MODEL`` set and ``pip install langchain-openai``, the chat model answers.
"""

from __future__ import annotations

from example_document import example_arguments, example_document, print_case
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from qrag_integrations.langchain import QRAGRetriever
from qrag_integrations.openai import DEFAULT_SYSTEM_PROMPT, EndpointConfig, endpoint_help

PROMPT = ChatPromptTemplate.from_messages(
    [("system", DEFAULT_SYSTEM_PROMPT), ("human", "Passages (in document order):\n{context}\n\nQuestion: {question}")]
)


def format_passages(docs: list[Document]) -> str:
    return "\n".join(f"[{i}] {doc.page_content}" for i, doc in enumerate(docs, start=1))


def main() -> None:
    args = example_arguments(__doc__.splitlines()[0]).parse_args()
    document = example_document(args.task, args.question_index, args.background_sentences)
    print_case(document)

    retriever = QRAGRetriever.from_pretrained(args.model, k=args.k)
    retriever.add_documents([Document(page_content=document.text, metadata={"source": document.source})])
    for doc in retriever.invoke(document.question):
        meta = doc.metadata
        step, q, chunk = meta["qrag_step"], meta["qrag_q_value"], meta["qrag_chunk_index"]
        print(f"  step {step}  Q={q:+.3f}  chunk {chunk:>4}  {doc.page_content}")

    endpoint = EndpointConfig.from_env()
    inputs = {"context": retriever | RunnableLambda(format_passages), "question": RunnablePassthrough()}
    if not endpoint.configured:
        prompt = (inputs | PROMPT).invoke(document.question)
        print("\nNo chat endpoint configured; the chain stops at the prompt, which would be sent as:\n")
        print(prompt.to_string())
        print(f"\nTo get an answer, {endpoint_help()}, and pip install langchain-openai.")
        return
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        print("\nA chat endpoint is configured, but this example needs: pip install langchain-openai")
        return
    chat_model = ChatOpenAI(
        base_url=endpoint.base_url, api_key=endpoint.api_key or "not-needed", model=endpoint.model, temperature=0
    )
    chain = inputs | PROMPT | chat_model | StrOutputParser()
    print(f"\nAnswer: {chain.invoke(document.question)}")


if __name__ == "__main__":
    main()
