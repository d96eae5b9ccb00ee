"""Answer a question over a long document with Q-RAG retrieval and any OpenAI-compatible chat model.

Runs offline: without an endpoint it prints the retrieved evidence (step by step, with Q-values)
and how to configure one. With one, e.g. a local vLLM or llama.cpp server::

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 QRAG_ANSWER_MODEL=my-model python examples/answer_with_openai.py

or OpenAI itself (``OPENAI_API_KEY=... QRAG_ANSWER_MODEL=...``), it prints the model's answer too.
"""

from __future__ import annotations

from example_document import example_arguments, example_document, print_case

from qrag_core.retriever import Retriever
from qrag_core.search_options import SearchOptions
from qrag_integrations.openai import Answerer, EndpointConfig, endpoint_help


def main() -> None:
    args = example_arguments(__doc__.splitlines()[0]).parse_args()
    document = example_document(args.task, args.question_index, args.background_sentences)
    print_case(document)

    retriever = Retriever.from_pretrained(args.model)
    retriever.add_texts([document.text], metadatas=[{"source": document.source}], ids=[document.doc_id])
    answerer = Answerer(retriever, EndpointConfig.from_env(), options=SearchOptions(k=args.k))

    if not answerer.endpoint.configured:
        print(answerer.retrieve(document.question).format())
        print(f"\nNo chat endpoint configured, so this is the evidence only. To get an answer, {endpoint_help()}.")
        return
    answer = answerer.answer(document.question)
    print(answer.search.format())
    print(f"\nAnswer from {answer.model}: {answer.text}")


if __name__ == "__main__":
    main()
