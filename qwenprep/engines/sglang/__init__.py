"""SGLang: discovery, the launch plan, the gate, KV-cache arithmetic and the running server."""
