"""qwenprep's own reading of vLLM's serve parser, for the gate (qwenprep.engines.vllm.gate) when no
vLLM is
installed (discover() is None, or check --no-engine).

offline_dests reads the serve arguments as vLLM 0.32's parser would: --config YAML expanded
before the rest, ``_`` read as ``-`` in names, short options (-tp, -q ...) and unique prefixes
resolved against a snapshot of vLLM's serve options (engines.vllm_flags.LONG_OPTIONS), dotted
``--hf-overrides.a.b`` keys merged into --hf-overrides' dict, human-readable lengths (1k, 1M).
offline_view turns the parsed arguments and config.json into what vLLM would use (length, RoPE,
quantization), the dict qwenprep.engines.vllm.gate.compare judges. MODEL_FLAG and OWN_OPTION name
the
arguments qwenprep sets itself, which both the online and the offline gate refuse after --;
serve_at finds where `serve MODEL ...` starts in a plan's argv. This module imports nothing
of qwenprep.engines.vllm.gate; importers take these names from here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.model.contexts import effective_rope
from qwenprep.model.view import ModelView, deep_merge

if TYPE_CHECKING:
    from qwenprep.engines.vllm.launch import LaunchPlan

# vLLM's FlexibleArgumentParser moves a `--model X` it finds anywhere to the model position
MODEL_FLAG = re.compile(r"^--model(=.+|$)")
# vLLM dest -> the qwenprep option that sets it. The tool-call options (--enable-auto-tool-choice,
# --tool-call-parser) are the user's: the profile's pair is left out of the argv when the user
# gives either (engine.build_launch_plan), and nothing the gate proves depends on them.
OWN_OPTION = {
    "model": "PATH (qwenprep serve PATH: the model is qwenprep's positional argument)",
    "max_model_len": "--max-model-len (qwenprep check: --context)",
    "tensor_parallel_size": "--tp",
    "enable_expert_parallel": "--ep/--no-ep",
    "served_model_name": "--served-model-name",
    "host": "--host",
    "port": "--port",
}


def _human_int(text: str) -> int | None:
    """vLLM's human_readable_int_or_auto: 1k = 1000, 1K = 1024, 1m = 10^6, 1M = 2^20, auto."""
    t = text.strip()
    if t in ("-1", "auto", "AUTO", "Auto"):
        return -1
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", t)
    if m:
        num, suf = m.groups()
        if suf.islower():
            return int(float(num) * 10 ** (3 * "kmgt".index(suf) + 3))
        return int(num) * 2 ** (10 * "KMGT".index(suf) + 10) if num.isdigit() else None
    try:
        return int(t)
    except ValueError:
        return None


def _json_or(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        n = _human_int(text)
        return text if n is None else n


def yaml_args(file: str) -> list[str]:
    """vLLM's load_config_file: YAML keys as --key VALUE (bool: --key / --no-key; list: the
    items; dict: JSON)."""
    if file.rsplit(".", 1)[-1] not in ("yaml", "yml"):
        raise ValueError(f"Config file must be of a yaml/yml type. {file} supplied")
    import yaml  # PyYAML comes with huggingface_hub

    try:
        with open(file, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:  # syntax errors, two documents (vLLM's safe_load fails alike)
        mark = getattr(e, "problem_mark", None)
        where = f"{file}, line {mark.line + 1}" if mark is not None else file
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: not a YAML file vLLM can read ({what})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{file}: not UTF-8 text ({e.reason})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: the top level is not a mapping of option: value")
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, bool):
            out += [f"--{key}"] if value else [f"--no-{key}"]
        elif isinstance(value, list):
            out += [f"--{key}", *(str(v) for v in value)] if value else []
        elif isinstance(value, dict):
            out += [f"--{key}", json.dumps(value)]
        else:
            out += [f"--{key}", str(value)]
    return out


# every short option of vLLM 0.32's serve parser (vllm/engine/arg_utils.py,
# EngineArgs.add_cli_args: add_argument("--long", "-short", ...))
SHORT = {
    "-tp": "tensor-parallel-size",
    "-pp": "pipeline-parallel-size",
    "-q": "quantization",
    "-ep": "enable-expert-parallel",
    "-dp": "data-parallel-size",
    "-n": "nnodes",
    "-r": "node-rank",
    "-dcp": "decode-context-parallel-size",
    "-pcp": "prefill-context-parallel-size",
    "-dpn": "data-parallel-rank",
    "-dpr": "data-parallel-start-rank",
    "-dpl": "data-parallel-size-local",
    "-dpa": "data-parallel-address",
    "-dpp": "data-parallel-rpc-port",
    "-dpb": "data-parallel-backend",
    "-dph": "data-parallel-hybrid-lb",
    "-dpe": "data-parallel-external-lb",
    "-dpm": "data-parallel-multi-port-external-lb",
    "-sc": "speculative-config",
    "-dc": "diffusion-config",
    "-cc": "compilation-config",
    "-ac": "attention-config",
}


def _resolve(name: str, known: Sequence[str]) -> str:
    if name in known:
        return name
    hits = [k for k in known if k.startswith(name)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ValueError(f"ambiguous option: {name} could match {', '.join(hits[:6])}")
    raise ValueError(f"unrecognized arguments: {name}")


def offline_dests(argv: Sequence[str], known: Sequence[str] | None = None) -> dict[str, Any]:
    """The serve arguments ARGV (after `serve MODEL`) as vLLM's parser would read them, by
    qwenprep's own rules: --config YAML expanded before the rest, `_` read as `-` in names,
    unique prefixes resolved against KNOWN (vLLM 0.32's serve options), dotted --x.a.b keys
    merged into --x's dict. dest -> value, the last one wins. ValueError says what vLLM's
    parser would refuse."""
    from qwenprep.engines.vllm.flags import LONG_OPTIONS

    names = known if known is not None else LONG_OPTIONS
    args = list(argv)
    if args.count("--config") > 1:  # vLLM's _pull_args_from_config asserts the same
        raise ValueError("More than one config file specified!")
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise ValueError("No config file specified! Please check your command-line arguments.")
        args = yaml_args(args[i + 1]) + args[:i] + args[i + 2 :]
    dests: dict[str, Any] = {}
    dotted: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if not tok.startswith("-") or re.fullmatch(r"-\d+(\.\d+)?", tok):
            raise ValueError(f"unrecognized arguments: {tok}")
        name, eq, value = tok.partition("=")
        head, dot, keys = name.partition(".")
        if head.startswith("--"):
            head = "--" + head[2:].replace("_", "-")
        elif head in SHORT:
            head = "--" + SHORT[head]
        elif head.startswith("-q") and not eq and not dot:  # argparse: -qfp8 is -q fp8
            head, eq, value = "--quantization", "=", head[2:]
        if (
            not eq
            and i < len(args)
            and (not args[i].startswith("-") or re.fullmatch(r"-\d+(\.\d+)?", args[i]))
        ):
            value, has_value = args[i], True
            i += 1
        else:
            has_value = bool(eq)
        if not head.startswith("--"):
            continue  # another short option: its value (if any) was taken above
        if dot:
            node = dotted.setdefault(_resolve(head, names)[2:].replace("-", "_"), {})
            *path, last = keys.rstrip("+").split(".")
            for k in path:
                node = node.setdefault(k, {})
            node[last] = _json_or(value)
            continue
        full = _resolve(head, names)
        dest = full[2:].replace("-", "_")
        if full.startswith("--no-") and "--" + full[5:] in names:
            dests[dest[3:]] = False
        else:
            dests[dest] = value if has_value else True
    for key, tree in dotted.items():  # vLLM appends them as JSON after everything else
        dests[key] = tree
    if isinstance(dests.get("hf_overrides"), str):
        dests["hf_overrides"] = json.loads(dests["hf_overrides"])
    if isinstance(dests.get("max_model_len"), str):
        n = _human_int(dests["max_model_len"])
        if n is None:
            raise ValueError(f"argument --max-model-len: invalid value: {dests['max_model_len']!r}")
        dests["max_model_len"] = n
    return dests


class Unmodelled(ValueError):
    """An argument the offline reading does not follow: the gate refuses it offline (judge it
    with vLLM installed) rather than pass what nobody judged."""


def _hf_config_path(where: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The config vLLM reads under --hf-config-path WHERE: WHERE/config.json when WHERE is a
    local directory holding one (a Hub repo id would be fetched: not followed offline)."""
    if where is None:
        return config
    from pathlib import Path

    cfg = Path(str(where)) / "config.json"
    if not cfg.is_file():
        raise Unmodelled(
            f"--hf-config-path {where}: no config.json there; the offline reading follows only "
            "a local directory holding one"
        )
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise Unmodelled(f"--hf-config-path {where}: cannot read {cfg} ({e})") from None
    if not isinstance(data, dict):
        raise Unmodelled(f"--hf-config-path {where}: {cfg} is not a JSON object")
    return data


def offline_view(config: dict[str, Any], dests: dict[str, Any]) -> dict[str, Any]:
    """What vLLM 0.30+ with transformers 5 would use for CONFIG with the parsed DESTS
    (hf_overrides replace top-level keys; a rope dict given without rope_theta loses it, the
    docs/facts.md trap). --hf-config-path: the config.json in that directory instead of
    CONFIG (vLLM's get_config reads hf_config_path or the model); --quantization: the method
    vLLM is told to use. ValueError as vLLM's length check would refuse; Unmodelled for what
    this reading does not follow (refused offline, never passed unjudged)."""
    config = _hf_config_path(dests.get("hf_config_path"), config)
    fmt = dests.get("config_format")
    if fmt not in (None, "auto", "hf"):
        raise Unmodelled(
            f"--config-format {fmt}: the offline reading knows only Hugging Face config.json "
            "(auto, hf)"
        )
    eff = dict(config)
    over = dests.get("hf_overrides") or {}
    if not isinstance(over, dict):
        raise ValueError(f"--hf-overrides must be a JSON object, got {over!r}")
    for key, value in over.items():
        if isinstance(eff.get(key), dict) and isinstance(value, dict) and key.endswith("_config"):
            eff[key] = deep_merge(eff[key], value)  # vLLM 0.32 ModelConfig._update_nested
        else:
            eff[key] = value
    rope = effective_rope(eff)
    if any(k in over for k in ("rope_scaling", "rope_parameters")):
        block = over.get("rope_scaling", over.get("rope_parameters"))
        if not (isinstance(block, dict) and "rope_theta" in block):
            rope.pop("rope_theta", None)  # the override replaced the dict that carried it
    mpe = ModelView(eff).max_position_embeddings
    want = dests.get("max_model_len")
    if isinstance(mpe, int) and isinstance(want, int) and want > mpe:
        raise ValueError(
            f"User-specified max_model_len ({want}) is greater than the derived "
            f"max_model_len (max_position_embeddings={mpe})"
        )
    qc = eff.get("quantization_config")
    quant = qc.get("quant_method") if isinstance(qc, dict) else None
    asked = dests.get("quantization")
    if asked is not None and not isinstance(asked, str):
        raise Unmodelled(f"--quantization {asked!r}: not a method name")
    return {
        "max_model_len": want if isinstance(want, int) and want > 0 else mpe,
        "rope_type": rope.get("rope_type", "default"),
        "factor": rope.get("factor"),
        "original_max_position_embeddings": rope.get("original_max_position_embeddings"),
        "rope_theta": rope.get("rope_theta", 10000),
        "quantization": asked if asked is not None else quant,
        "partial_rotary_factor": rope.get("partial_rotary_factor", 1.0),
        "mrope_section": rope.get("mrope_section"),
        "max_position_embeddings": mpe,
        "dual_chunk_attention_config": ModelView(eff).text.get("dual_chunk_attention_config"),
    }


def flag_values(args: Sequence[str], flag: str) -> list[str]:
    """The values ARGS give FLAG (`FLAG V`, `FLAG=V`, `_` for `-`; prefixes too, as vLLM's
    parser accepts them: a wider key only costs a cache miss)."""
    out = []
    for i, a in enumerate(args):
        name, eq, value = a.partition("=")
        name = "--" + name[2:].replace("_", "-") if name.startswith("--") else name
        if len(name) > 4 and flag.startswith(name):
            if eq:
                out.append(value)
            elif i + 1 < len(args):
                out.append(args[i + 1])
    return out


def serve_at(argv: Sequence[str]) -> int:
    """Where `serve MODEL ...` starts in ARGV (python -c WORKER_ENTRY serve MODEL ...)."""
    from qwenprep.engines.vllm.launch import WORKER_ENTRY

    return list(argv).index(WORKER_ENTRY) + 1 if WORKER_ENTRY in argv else list(argv).index("serve")


def fingerprint(plan: LaunchPlan, python: str, items: list[dict[str, Any]]) -> str:
    """The probe's answer depends on the argv, the interpreter, the files it reads and the
    environment: the in-process cache (check then serve --dry-run of one plan) keys on all."""
    h = hashlib.sha256(json.dumps([python, items]).encode())
    files = [
        Path(plan.model_path) / "config.json",
        Path(plan.model_path) / ".qwenprep" / "manifest.json",
    ]
    args = [a for it in items for a in it["argv"]]
    files += [Path(v) for v in flag_values(args, "--config")]
    for f in list(files[2:]):  # what a --config YAML names counts as if on the command line
        try:
            args += yaml_args(str(f))
        except (ValueError, OSError):
            pass
    # --hf-config-path DIR (vLLM reads DIR/config.json and DIR's other config files) and the
    # tokenizer's directory: every file vLLM may read from them, by name and content
    dirs = [
        Path(v) for flag in ("--hf-config-path", "--tokenizer") for v in flag_values(args, flag)
    ]
    for d in dirs:
        h.update(str(d).encode())
        try:
            listed = sorted(p for p in d.iterdir() if p.suffix in (".json", ".yaml", ".yml"))
        except OSError:
            listed = []
        files += listed
    for f in files:
        h.update(str(f).encode())
        try:
            h.update(hashlib.sha256(f.read_bytes()).digest())
        except OSError:
            h.update(b"-")
    from qwenprep.util.hashing import env_key

    h.update(env_key(plan.child_env(), ("VLLM_", "HF_", "TRANSFORMERS_")))
    return h.hexdigest()
