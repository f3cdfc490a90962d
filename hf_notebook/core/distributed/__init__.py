"""Per-rank plans for tensor/pipeline-parallel inference on a target cluster (torchrun + transformers, vLLM, SGLang)."""
