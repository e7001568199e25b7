"""vLLM: its versions and what each does, the launch plan, the gate and its offline reading,
readback, KV-cache arithmetic, the running server and deploy files."""
