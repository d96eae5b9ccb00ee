"""Fine-tune Q-RAG on your own labelled documents, then retrieve with the fine-tuned model.

Your corpus is a JSONL file, one question per line, with the document and the sentences that
support the answer (docs/data-format.md)::

    {"id": "q1", "question": "Where is the milk?", "answer": "hallway",
     "document": "…long text…", "supporting_facts": ["Mary got the milk there.", "Mary travelled to the hallway."]}

This script writes such a file from bAbI stories hidden in novel text, fine-tunes with
:func:`qrag_core.training.train` for a handful of steps (a real run uses hundreds; the same run from
the shell is ``qrag-finetune --data train.jsonl --eval-data eval.jsonl --out OUT``), then loads the
fine-tuned model from ``OUT/model`` and searches a held-out document with it. Runs offline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from example_document import ExampleDocument, example_arguments, example_document, print_case

from qrag_core import QRAG
from qrag_core.data.examples import Example, read_jsonl, write_jsonl
from qrag_core.embedding_cache import shared_cache
from qrag_core.retriever import Retriever
from qrag_core.search_options import SearchOptions
from qrag_core.training import TrainingConfig, train
from qrag_core.training.trainer import MODEL_DIR


def as_example(document: ExampleDocument) -> Example:
    return Example(
        id=document.doc_id,
        question=document.question,
        document=document.text,
        answer=document.answer,
        supporting_facts=document.supporting_facts,
    )


def write_corpus(path: Path, task: str, split: str, count: int, background_sentences: int, first: int = 0) -> Path:
    """``count`` labelled examples of a bAbI split, in the JSONL form a user's own corpus would take."""
    documents = [example_document(task, i, background_sentences, split) for i in range(first, first + count)]
    write_jsonl([as_example(d) for d in documents], path)
    return path


def main() -> None:
    parser = example_arguments(__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output directory of the run (default: a temporary directory)")
    parser.add_argument("--train-examples", type=int, default=4, help="labelled training questions to write")
    parser.add_argument("--eval-examples", type=int, default=2, help="labelled evaluation questions to write")
    parser.add_argument("--warm-start-steps", type=int, default=2, help="optimiser steps of the supervised warm start")
    parser.add_argument("--rl-steps", type=int, default=1, help="optimiser steps of soft Q-learning")
    parser.add_argument("--batch-size", type=int, default=2, help="episodes per optimiser step")
    parser.set_defaults(background_sentences=40)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        train_file = write_corpus(
            out / "train.jsonl", args.task, "train", args.train_examples, args.background_sentences
        )
        eval_file = write_corpus(
            out / "eval.jsonl", args.task, "test", args.eval_examples, args.background_sentences, first=1
        )
        print(f"Wrote {train_file} ({args.train_examples} questions) and {eval_file} ({args.eval_examples})")

        model = QRAG.from_pretrained(args.model)
        config = TrainingConfig(
            batch_size=args.batch_size,
            warm_start_steps=args.warm_start_steps,
            rl_steps=args.rl_steps,
            warmup_steps=1,
            eval_every=0,
            checkpoint_every=0,
        )
        result = train(
            model,
            read_jsonl(train_file, need_support=True),
            config,
            eval_examples={"eval": read_jsonl(eval_file, need_support=True)},
            out_dir=out,
            cache=shared_cache(),
            show_progress=False,
        )
        print(f"Trained {result.steps} steps ({result.examples} episodes) in {result.train_seconds:.1f} s")
        for name, scores in result.evaluation.items():
            print(f"  {name}: fact EM {scores['fact_em']:.2f}, fact recall {scores['fact_recall']:.2f}")

        held_out = example_document(args.task, args.question_index, args.background_sentences, "test")
        print_case(held_out)
        retriever = Retriever.from_pretrained(str(out / MODEL_DIR), cache=shared_cache())
        retriever.add_texts([held_out.text], ids=[held_out.doc_id])
        print(f"Fine-tuned model {out / MODEL_DIR}:")
        print(retriever.search(held_out.question, SearchOptions(k=args.k)).format())


if __name__ == "__main__":
    main()
