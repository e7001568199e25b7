"""Engine- and model-neutral helpers: JSON and atomic writes, sizes, hashes, redaction, the shipped
schemas, reports as data, safetensors headers. Nothing here knows about Qwen, vLLM or SGLang."""
