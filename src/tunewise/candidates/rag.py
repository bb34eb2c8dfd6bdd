"""The RAG candidate: a knowledge base of passages, retrieved by embedding similarity and put in the prompt."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunewise.candidates.base import (
    CandidateError,
    input_texts,
    register_candidate,
)
from tunewise.candidates.generating import GeneratingCandidate
from tunewise.candidates.llm_base import embed_texts, nearest_neighbours, truncate_texts
from tunewise.llm.chat import contexts as _contexts
from tunewise.models.loading import DEFAULT_ENCODER, DEFAULT_LLM


@dataclass(frozen=True)
class Passage:
    text: str
    source: str  # file path relative to the knowledge-base folder
    line: int  # 1-based line where the paragraph starts


_HEADING = re.compile(r"^\s*#{1,6}\s")


def _paragraphs(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(1-based start line, lines) of each run of non-blank lines."""
    blocks: list[tuple[int, list[str]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if blocks and blocks[-1][0] + len(blocks[-1][1]) == number:  # continues the previous block
            blocks[-1][1].append(line)
        else:
            blocks.append((number, [line]))
    return blocks


def load_passages(folder: str | Path) -> list[Passage]:
    """Paragraphs of the ``.md`` and ``.txt`` files under ``folder`` (blank lines separate them).

    A paragraph made only of Markdown headings is joined to the paragraph after it, so the heading
    ("## Returns") travels with the text it names.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CandidateError(f"data.knowledge_base: {root} is not a folder; point it at a folder of .md/.txt files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".md", ".txt") and p.is_file())
    passages: list[Passage] = []
    for path in files:
        source = str(path.relative_to(root))
        heading: tuple[int, list[str]] | None = None  # headings waiting for their paragraph
        for start, block in _paragraphs(path.read_text(encoding="utf-8", errors="replace").splitlines()):
            if heading is not None:
                start, block = heading[0], heading[1] + block
                heading = None
            if all(_HEADING.match(line) for line in block):
                heading = (start, block)
            else:
                passages.append(Passage("\n".join(block).strip(), source, start))
        if heading is not None:  # a file that ends with a heading keeps it as its own passage
            passages.append(Passage("\n".join(heading[1]).strip(), source, heading[0]))
    if not passages:
        raise CandidateError(f"data.knowledge_base: no paragraphs found in .md/.txt files under {root}")
    return passages


@register_candidate
class RagGenerator(GeneratingCandidate):
    """The ``rag_top_k`` knowledge-base paragraphs most similar to the message, in the system prompt."""

    name = "rag_llm_gen"

    def __init__(
        self,
        knowledge_base: str | None = None,
        llm: str = DEFAULT_LLM,
        encoder: str = DEFAULT_ENCODER,
        offline: bool = True,
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
        task_description: str | None = None,
        rag_top_k: int = 3,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        max_input_tokens: int = 256,
    ) -> None:
        self.knowledge_base = knowledge_base
        self.llm = llm
        self.encoder = encoder
        self.offline = offline
        self.trust_remote_code = trust_remote_code
        self.system_prompt = system_prompt
        self.task_description = task_description
        self.rag_top_k = rag_top_k
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> RagGenerator:
        if not self.knowledge_base:
            raise CandidateError(
                "rag_llm_gen needs a knowledge base: set data.knowledge_base in tunewise.yaml "
                "to a folder of .md/.txt files, or drop rag_llm_gen from baseline.candidates"
            )
        self._load_llm()
        self.system_prompt_ = self._system_prompt()
        self.passages_ = load_passages(self.knowledge_base)
        self.passage_texts_ = truncate_texts(self.tokenizer_, [p.text for p in self.passages_], self.max_input_tokens)
        self.passage_vectors_ = embed_texts([p.text for p in self.passages_], self.encoder)
        return self

    def retrieve(self, frame: pd.DataFrame) -> list[list[Passage]]:
        """The top-k passages for each row, most similar first."""
        self._check_fitted()
        nearest = nearest_neighbours(
            embed_texts(input_texts(frame), self.encoder), self.passage_vectors_, self.rag_top_k
        )
        return [[self.passages_[j] for j in row] for row in nearest]

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        nearest = nearest_neighbours(
            embed_texts(input_texts(frame), self.encoder), self.passage_vectors_, self.rag_top_k
        )
        out = []
        for text, (turns, system), near in zip(self._inputs(frame), _contexts(frame), nearest):
            passages = "\n\n".join(f"[{i + 1}] {self.passage_texts_[j]}" for i, j in enumerate(near))
            prompt = (
                f"{self.system_prompt_}\n\nUse these passages from the knowledge base when they "
                f"answer the message:\n\n{passages}"
            )
            out.append(
                [
                    {"role": "system", "content": "\n\n".join([prompt, *system])},
                    *turns,
                    {"role": "user", "content": text},
                ]
            )
        return out
