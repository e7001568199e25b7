"""The checks qwenprep runs on files and plans: validation of a config, integrity of a
checkpoint (headers, tensors, every byte), an overlay's self-checks, and check's pre-flight
report."""
