"""serve: launch vLLM (or SGLang) as a watched child, or print its per-node
commands and deploy artefacts (--emit-config, --emit k8s)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from qwenprep.cli._common import (
    cli,
    echo,
    emit_json,
    fail,
    json_option,
    run,
    serving_engine_for,
    serving_engine_option,
    usage,
    vllm_python_option,
)
from qwenprep.errors import QwenprepError
from qwenprep.request import MULTINODE_MODES, PORTS
from qwenprep.util.report import SCHEMA_VERSION

if TYPE_CHECKING:
    from qwenprep.engines.base import Engine


@cli.command(short_help="Launch vLLM from the overlay with the right flags.")
@click.argument("path")
@click.option(
    "--tp",
    type=click.IntRange(min=1),
    default=None,
    help="Tensor parallel size (default: the model profile's).",
)
@click.option("--ep/--no-ep", default=None, help="Expert parallel (default: the model profile's).")
@click.option(
    "--max-model-len",
    "max_len",
    default=None,
    metavar="N",
    help="Context to serve: tokens, 256k or 1m (default: the overlay's context). "
    "1m = 1,048,576 here (vLLM itself reads 1m as 1,000,000); vLLM gets the "
    "integer.",
)
@click.option("--host", default=None, help="Address vLLM listens on (vLLM's default: all).")
@click.option(
    "--port",
    type=click.IntRange(*PORTS),
    default=None,
    help="Port, 1-65535 (vLLM's default: 8000).",
)
@click.option("--served-model-name", default=None, help="Name clients use in requests.")
@vllm_python_option
@click.option("--dry-run", is_flag=True, help="Print the command and environment; start nothing.")
@click.option(
    "--ready-timeout",
    type=float,
    default=1800.0,
    show_default=True,
    help="Seconds to wait for /v1/models before giving up.",
)
@click.option(
    "--proof/--no-proof",
    default=True,
    show_default=True,
    help="Once ready, send one prompt longer than the native window (streamed, one output "
    "token) and report its time to first token; a failure stops the server (exit 1).",
)
@click.option(
    "--record/--no-record",
    default=True,
    show_default=True,
    help="Keep the past-native request's time to first token, with the GPU, layout and "
    "engine version, in $HF_HOME/qwenprep/measurements.jsonl (QWENPREP_MEASUREMENTS names "
    "another file; QWENPREP_NO_RECORD=1 keeps nothing): a later plan for the same GPU and "
    "layout shows it as 'measured here'.",
)
@click.option(
    "--proof-tokens",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help="Length of the past-native prompt (default: native + max(256, native/64)).",
)
@click.option(
    "--expect-digest",
    default=None,
    metavar="D",
    help="Refuse (exit 3) unless PATH is the overlay with this manifest digest.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write vLLM's log here too, appended to an existing file (default: a new "
    "$TMPDIR/qwenprep-vllm-*.log; never through a symlink); "
    "if vLLM stops before it is ready, the lines that say why are read from it.",
)
@click.option(
    "--emit-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE.yaml",
    help="Write the launch as a vLLM --config YAML and print "
    "the command(s) that use it (vllm serve MODEL --config FILE); start nothing.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --emit-config: replace FILE even when it was edited after qwenprep wrote it, "
    "or was not written by qwenprep.",
)
@click.option(
    "--emit",
    "emit",
    type=click.Choice(["k8s"]),
    default=None,
    help="k8s: print a Kubernetes LeaderWorkerSet manifest (leader and workers, the "
    "overlay digest guard, readiness on /v1/models); start nothing.",
)
@click.option(
    "--image",
    default=None,
    metavar="IMAGE",
    help="Container image for --emit k8s (default: vllm/vllm-openai:vVERSION); it "
    "needs qwenprep beside vLLM for the digest guard.",
)
@click.option("--nnodes", type=int, default=None, help="Nodes to spread the plan over.")
@click.option("--gpus-per-node", type=int, default=None, help="GPUs on each node.")
@click.option("--master-addr", default=None, help="Head node address for multi-node plans.")
@click.option(
    "--multinode-mode",
    type=click.Choice(MULTINODE_MODES),
    default=None,
    help="How nodes join (default: native if vLLM has it, else ray; dp if TP fits "
    "a node). SGLang: its own --nnodes/--node-rank/--dist-init-addr.",
)
@serving_engine_option
@json_option
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(
    path: str,
    tp: int | None,
    ep: bool | None,
    max_len: str | None,
    host: str | None,
    port: int | None,
    served_model_name: str | None,
    vllm_python: str | None,
    dry_run: bool,
    ready_timeout: float,
    proof: bool,
    record: bool,
    proof_tokens: int | None,
    expect_digest: str | None,
    log_file: Path | None,
    emit_config: Path | None,
    force: bool,
    emit: str | None,
    image: str | None,
    nnodes: int | None,
    gpus_per_node: int | None,
    master_addr: str | None,
    multinode_mode: str | None,
    serving_engine: str | None,
    as_json: bool,
    vllm_args: tuple[str, ...],
) -> None:
    """Launch vLLM on PATH with the known-good flags for the installed version.

    Refuses a --max-model-len the config does not allow (exit 3) before vLLM starts; waits
    until /v1/models reports the intended length. If vLLM stops before that, exit 3 with the
    log lines that say why; once ready, vLLM's own exit code is passed through.
    Extra vLLM flags go after `--`: the installed vLLM parses the whole argv and reads the
    model config back with it before anything starts (the gate qwenprep check runs too);
    what it refuses, or would run differently from the overlay, is refused (exit 3).

    \b
    Examples:
      qwenprep serve ./overlay
      qwenprep serve ./overlay --dry-run --json
      qwenprep serve ./overlay --port 8001 -- --max-num-seqs 4
      qwenprep serve ./overlay --emit-config vllm.yaml
      qwenprep serve ./overlay --nnodes 2 --gpus-per-node 4 --emit k8s > lws.yaml
    """
    import shlex

    from qwenprep.ops.serve import serve_plan
    from qwenprep.request import ServeRequest

    engine = serving_engine_for(serving_engine, vllm_python, as_json)
    emitting = emit_config is not None or emit is not None
    if emitting and not engine.emits_artefacts:
        run(
            as_json,
            lambda: usage(
                f"--emit-config and --emit write vLLM artefacts; {engine.display} "
                "has no --config file or LeaderWorkerSet emitter here."
            ),
        )
    dry_run = dry_run or emitting
    from qwenprep.request import seconds

    run(as_json, lambda: seconds(ready_timeout, "--ready-timeout"))  # nan would never time out
    if image is not None:  # said before vLLM is asked anything
        from qwenprep.engines.vllm.deploy import check_image

        if emit != "k8s":
            run(as_json, lambda: usage("--image is the container image of --emit k8s."))
        named_image: str = image
        run(as_json, lambda: check_image(named_image))
    if force and emit_config is None:
        run(as_json, lambda: usage("--force goes with --emit-config FILE."))
    if emit == "k8s" or emit_config is not None:  # files kept and shared: never a secret
        from qwenprep.util.redact import argv_secrets

        if argv_secrets(vllm_args):
            from qwenprep.errors import UsageError

            k8s = emit == "k8s"
            flag, holder = ("--emit k8s", "manifest") if k8s else ("--emit-config", "config file")
            where = "to the pods from a Kubernetes Secret: env" if k8s else "in the environment:"

            def secret_in_file() -> None:
                raise UsageError(
                    f"{flag}: the engine arguments after -- carry a credential (--api-key, "
                    f"--hf-token or another); the {holder} would hold it in plain text.",
                    hint=f"leave it out and give it {where} "
                    "VLLM_API_KEY (vLLM reads it when --api-key is not given) or HF_TOKEN",
                )

            run(as_json, secret_in_file)
    if emit_config is not None:  # a bad target is said before vLLM is asked anything
        from qwenprep.engines.vllm.deploy import config_target

        named: Path = emit_config
        emit_config = run(as_json, lambda: config_target(named, force=force))

    def make_plan() -> Any:
        req = ServeRequest.from_options(
            max_len=max_len or None,
            tp=tp,
            ep=ep,
            host=host,
            port=port,
            served_model_name=served_model_name,
            extra_args=vllm_args,
            expect_digest=expect_digest,
            nnodes=nnodes,
            gpus_per_node=gpus_per_node,
            master_addr=master_addr,
            multinode_mode=multinode_mode,
        )
        return serve_plan(path, req, engine=engine, python=vllm_python, dry_run=dry_run)

    plan = run(as_json, make_plan)
    for note in plan.notes:
        echo(f"note: {note}", err=True)
    if emitting:
        _emit_artefacts(plan, emit_config, emit, image, as_json, force)
        return
    if proof and proof_tokens is not None:  # judged in a dry run as the real run judges it
        from qwenprep.engines.proof import proof_request

        run(as_json, lambda: proof_request(plan.model_path, plan.max_model_len, proof_tokens))
    if dry_run or plan.nodes:
        if as_json:
            emit_json(
                {"schema_version": SCHEMA_VERSION, "ok": True, "dry_run": True, **plan.to_dict()}
            )
        elif plan.nodes:
            for node in plan.nodes:
                echo(f"# node {node.node_rank} ({node.role}, {plan.multinode_mode})")
                echo(node.shell())
        else:
            for k in plan.unset_env:
                echo(f"unset {k}")
            for k, v in plan.env.items():
                echo(f"export {k}={v}")
            echo(shlex.join(plan.argv))
        return
    proof_req = None
    if proof:  # a bad --proof-tokens is said before the engine starts
        from qwenprep.engines.proof import proof_request

        proof_req = run(
            as_json, lambda: proof_request(plan.model_path, plan.max_model_len, proof_tokens)
        )
    _serve_foreground(engine, plan, ready_timeout, as_json, log_file, proof_req, record)


def _emit_artefacts(
    plan: Any, config: Path | None, emit: str | None, image: str | None, as_json: bool, force: bool
) -> None:
    """serve --emit-config FILE / --emit k8s: write the artefacts; print the commands (text)
    or the manifest (YAML on stdout), or one JSON object with both."""
    from qwenprep.engines.vllm import deploy

    out: dict[str, Any] = {}
    written = None
    if config is not None:
        written = run(as_json, lambda: deploy.emit_config(plan, config, force=force))
        out["config"] = written.to_dict()
        echo(f"wrote {config}: {len(written.options)} vLLM options", err=True)
    manifest = None
    if emit == "k8s":
        manifest = run(
            as_json,
            lambda: deploy.lws_manifest(
                plan, image=image or deploy.default_image(plan), source=deploy.source_dir(plan)
            ),
        )
        out["k8s"] = manifest
    if as_json:
        emit_json(
            {"schema_version": SCHEMA_VERSION, "ok": True, "dry_run": True, **plan.to_dict(), **out}
        )
        return
    if manifest is not None:
        echo(deploy.dump_yaml(manifest, deploy.K8S_HEADER), nl=False)
        return
    assert written is not None  # emitting: --emit-config or --emit
    for node in written.nodes:
        echo(f"# node {node.node_rank} ({node.role}, {plan.multinode_mode})")
        echo(node.shell())
    if not written.nodes:
        echo(out["config"]["command"])


def _serve_foreground(
    engine: Engine,
    plan: Any,
    ready_timeout: float,
    as_json: bool,
    log_file: Path | None,
    proof_req: Any = None,
    record: bool = True,
) -> NoReturn:
    """Run vLLM (or SGLang) as a child: its output on our stderr (vLLM's through its log
    file), SIGINT/SIGTERM forwarded; before ready qwenprep's exit codes, after it the
    engine's own code passed through."""
    import shlex
    import signal

    echo(f"starting {engine.display} {plan.engine.version}: {shlex.join(plan.argv)}", err=True)
    try:
        out: Any = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        out = None
    handle: Any = run(
        as_json,
        lambda: engine.start(
            plan, out=out, log_file=log_file, say=lambda line: echo(line, err=True)
        ),
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: handle.send_signal(signum))
    try:
        models = handle.wait_ready(ready_timeout)
    except QwenprepError as err:
        handle.stop()
        fail(err, as_json)
    entry = models["data"][0]
    proofs = _run_proofs(plan, handle, proof_req, ready_timeout, as_json, record)
    echo(
        f"ready: {plan.base_url}/v1 serves {entry['id']} with max_model_len "
        f"{entry['max_model_len']} (Ctrl-C stops it)",
        err=True,
    )
    if as_json:  # one object per line: a pipeline reads the ready line as it comes
        _emit_json_line(
            {
                "schema_version": SCHEMA_VERSION,
                "ok": True,
                "ready": True,
                "url": plan.base_url,
                "model": entry["id"],
                "max_model_len": entry["max_model_len"],
                "pid": handle.pid,
                **proofs,
            }
        )
        sys.stdout.flush()
    rc = handle.wait()
    echo(f"{engine.display} exited with code {rc}", err=True)
    sys.exit(rc)


def _run_proofs(
    plan: Any, handle: Any, proof_req: Any, timeout: float, as_json: bool, record: bool = True
) -> dict[str, Any]:
    """After ready: the past-native request (a failure stops the server, exit 3), its time
    kept for plan unless RECORD is off (qwenprep.planning.measured), and the engine's own KV figure
    from /metrics. Returns the keys `serve --json` adds."""
    from qwenprep.engines.proof import describe, engine_kv, run_proof
    from qwenprep.errors import ChecksFailed

    out: dict[str, Any] = {}
    kv = engine_kv(plan.base_url)
    if kv is not None:
        out["engine_kv"] = kv
        echo(
            f"engine KV cache: {kv['num_gpu_blocks']:,} blocks of {kv['block_size']} = "
            f"{kv['tokens']:,} tokens (vllm:cache_config_info)",
            err=True,
        )
    if proof_req is None:
        out["proof"] = {"past_native": None}
        return out
    echo(
        f"proof: sending a {proof_req.prompt_tokens:,}-token prompt (native window "
        f"{proof_req.native:,}) ...",
        err=True,
    )
    result = run_proof(plan.base_url, plan.served_model_name, proof_req, timeout=timeout)
    echo(describe(result), err=True)
    if not result["ok"]:
        handle.stop()
        fail(
            ChecksFailed(
                f"the server started but a prompt past the native window did not run: "
                f"{result.get('error')}; stopped it.",
                hint="qwenprep check PATH runs the gate without starting anything; "
                "--no-proof skips this request.",
            ),
            as_json,
        )
    out["proof"] = {"past_native": result}
    if record:
        from qwenprep.planning.measured import describe_kept, record_proof

        kept = record_proof(plan, result)
        echo(describe_kept(kept), err=True)
        out["measurement"] = kept
    return out


def _emit_json_line(obj: dict[str, Any]) -> None:
    """One compact JSON object per line (serve --json's stream), through the redactor."""
    import json

    from qwenprep.util.redact import redact_obj, secrets

    click.echo(json.dumps(redact_obj(obj, secrets()), ensure_ascii=False, separators=(",", ":")))
