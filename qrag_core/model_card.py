"""The ``README.md`` model card written next to a saved model, in the sentence-transformers style."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qrag_core.config import QRAGConfig


def _table(rows: dict[str, Any]) -> str:
    lines = ["| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def write_model_card(path: Path, config: QRAGConfig, training: dict[str, Any]) -> None:
    trained = bool(training)
    sections = [
        "---",
        "library_name: qrag",
        f"base_model: {config.base_model}",
        "tags: [retrieval, multi-step-retrieval, q-rag, soft-q-learning, long-context]",
        "---",
        "",
        "# Q-RAG multi-step retriever",
        "",
        "A pair of embedders (state and action) for multi-step retrieval over long documents, following "
        '"Q-RAG: Long Context Multi-step Retrieval via Value-based Embedder Training" (arXiv 2511.07328). '
        + ("Fine-tuned with qrag's trainer." if trained else "**Not fine-tuned**: both encoders are the base model."),
        "",
        "## Usage",
        "",
        "```python",
        "from qrag_core import QRAG",
        'model = QRAG.from_pretrained("path/to/this/directory")',
        'result = model.retrieve("Where is Mary?", long_text)',
        "print(result.format())",
        "```",
        "",
        "## Configuration",
        "",
        _table({k: v for k, v in config.to_dict().items() if k != "chunking"} | {"chunking": config.chunking}),
    ]
    if trained:
        sections += ["", "## Training", "", _table({k: v for k, v in training.items() if k != "evaluation"})]
        if training.get("evaluation"):
            sections += ["", "## Last evaluation", "", _table(training["evaluation"])]
    path.write_text("\n".join(sections) + "\n", encoding="utf-8")
