"""The model side: a config.json seen through one typed view, context lengths and the pure
patch, checkpoints and the Hugging Face cache, the overlay manifest, tensor layouts, model shapes,
and the families of the Qwen line (families/)."""
