"""The model contract: one folder per version, one manifest, one loader, one ``Recommender``.

``<models_dir>/<version>/`` holds, for every format
  metadata.json      the manifest (see ``manifest``): format version, kind (trained | variant),
                     format (torch | onnx), run-time, lineage of a variant, the training
                     metadata (data_end, metrics, ...), the sha256 of every other file
  config.json        the model config (architecture, vocabulary size, text dimension)
  items.json         item ids in index order (index i+1 in the model = items[i]; 0 is padding)
and, by format,
  model.safetensors  PyTorch weights, each tensor in its codec (fp32, fp16, int8 per row; ``codec``)
  model.onnx         a self-contained ONNX graph of the scorer
  item_space.safetensors  variants: the text projection in the variant's space, and the
                     item table an ONNX graph hides (``item_space``)

Serving code calls ``load_recommender`` and nothing else from training; ``save_artifact``
writes a trained version and ``write_version`` any version (``training.compression`` writes
the variants with it).
"""

from training.artifact.loader import load_recommender, resolve_version_dir
from training.artifact.manifest import FORMAT_VERSION, ArtifactError, check_version_name, verified_manifest
from training.artifact.recommender import Recommender
from training.artifact.writer import new_version, save_artifact, write_version

__all__ = ["FORMAT_VERSION", "ArtifactError", "Recommender", "check_version_name", "load_recommender", "new_version",
           "resolve_version_dir", "save_artifact", "verified_manifest", "write_version"]
