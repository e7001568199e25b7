"""Deploy artefacts from a vLLM launch plan: the launch as a vLLM `--config` YAML file, and a
Kubernetes LeaderWorkerSet manifest (leader and workers, the overlay digest guard, a readiness
probe on /v1/models). Plain data in, text out; nothing here asks vLLM or prints.

vLLM's `--config FILE.yaml` (FlexibleArgumentParser.load_config_file, vLLM 0.32) turns each
`key: value` into `--key VALUE` (a true bool into `--key`, a list into `--key A B`, a mapping
into JSON) and inserts them right after `serve MODEL`; the model stays positional, and options
on the command line after `--config FILE` win over the file.

The LeaderWorkerSet fields written here are those of leaderworkerset.x-k8s.io/v1 as its CRD
defines them (kubernetes-sigs/lws, config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets
.yaml); schemas/lws.schema.json holds that subset, and the tests validate every manifest
against it. LWS gives every container LWS_LEADER_ADDRESS, LWS_GROUP_SIZE and LWS_WORKER_INDEX
(api/leaderworkerset/v1/leaderworkerset_types.go), which the node commands use.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.errors import QwenprepError, UsageError
from qwenprep.util.jsonio import atomic_write_text

if TYPE_CHECKING:
    from qwenprep.engines.vllm.launch import LaunchPlan, NodeCommand

LWS_API = "leaderworkerset.x-k8s.io/v1"
K8S_HEADER = (
    "A LeaderWorkerSet (https://lws.sigs.k8s.io, leaderworkerset.x-k8s.io/v1) written by "
    "qwenprep serve --emit k8s.\nNeeds the LWS controller in the cluster; the model "
    "paths must exist on every node (host paths).\nApply: kubectl apply -f FILE"
)
LEADER = "$(LWS_LEADER_ADDRESS)"  # expanded by Kubernetes in command/args
RANK = "$(LWS_WORKER_INDEX)"
_VALUE = re.compile(r"^(?!-[A-Za-z-])")  # "-1" is a value, "-tp" or "--x" an option


def serve_at(argv: Sequence[str]) -> int:
    """Where `serve MODEL ...` starts in ARGV (`vllm serve` or `python -c ENTRY serve`)."""
    return list(argv).index("serve")


def serve_args(argv: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(MODEL, the options after it) of a `... serve MODEL OPTIONS` argv."""
    i = serve_at(argv)
    return argv[i + 1], tuple(argv[i + 2 :])


def _long_name(name: str) -> str:
    """NAME (without its value) as the long option vLLM's parser reads it: a short option
    (-tp) as its long form (gate_offline.SHORT, vLLM 0.32's), `_` as `-`."""
    from qwenprep.engines.vllm.offline import SHORT

    head, dot, keys = name.partition(".")
    if head in SHORT:
        head = "--" + SHORT[head]
    elif head.startswith("--"):
        head = "--" + head[2:].replace("_", "-")
    else:
        raise UsageError(
            f"{name!r} cannot go into a vLLM --config file: only options (--name VALUE, "
            "or a short option vLLM knows, e.g. -tp 2) can."
        )
    return head + dot + keys  # a prefix stays one: vLLM reads the file's keys as it reads argv


def _file_value(value: str) -> Any:
    """VALUE as the file holds it: vLLM turns a key's value back into text with str(), so an
    integer is written as one only when str() gives VALUE back (`007` stays the string)."""
    if re.fullmatch(r"-?[1-9]\d{0,17}|0", value) and str(int(value)) == value:
        return int(value)
    return value


def split_options(args: Sequence[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """vLLM serve options ARGS as (the mapping a `--config` file holds, what must stay on the
    command line). `--key VALUE`, `--key=VALUE`, `-tp VALUE` -> key: VALUE; a lone `--key` ->
    key: true. A user's `--config FILE` is merged in as vLLM reads it (its options first, the
    command line's win: FlexibleArgumentParser._pull_args_from_config, vLLM 0.32). A value
    that starts with `-` stays on the command line as --key=VALUE (vLLM would read it from
    the file as `--key -x`, an option). Refused (UsageError): an option given twice with
    two values on the command line."""
    from qwenprep.engines.vllm.offline import yaml_args

    args = list(args)
    parts = [args]
    if "--config" in args:
        i = args.index("--config")
        try:
            parts = [yaml_args(args[i + 1]), args[:i] + args[i + 2 :]]
        except (ValueError, OSError, IndexError) as e:
            raise UsageError(f"--config after --: cannot read it ({e}).") from None
    out: dict[str, Any] = {}
    line: dict[str, str] = {}
    for part in parts:
        seen: dict[str, Any] = {}
        i = 0
        while i < len(part):
            tok = part[i]
            name, eq, value = tok.partition("=")
            key = _long_name(name)[2:]
            has_value = bool(eq)
            if not has_value and i + 1 < len(part) and _VALUE.match(part[i + 1]):
                value, has_value = part[i + 1], True
                i += 1
            i += 1
            got: Any = _file_value(value) if has_value else True
            if key in seen and seen[key] != got:
                raise UsageError(
                    f"--{key} is given twice ({seen[key]!r}, {got!r}); a vLLM --config file "
                    "holds each option once: give it once."
                )
            seen[key] = got
            out.pop(key, None)
            line.pop(key, None)
            if isinstance(got, str) and got.startswith("-") and not _VALUE.match(got):
                line[key] = f"--{key}={got}"
            else:
                out[key] = got
    return out, tuple(line.values())


def config_mapping(args: Sequence[str]) -> dict[str, Any]:
    """The `--config` mapping of ARGS (split_options); UsageError when some option can only
    be given on the command line."""
    out, line = split_options(args)
    if line:
        raise UsageError(f"{line[0]} cannot go into a vLLM --config file: give it after --.")
    return out


def dump_yaml(data: Any, header: str = "") -> str:
    import yaml  # PyYAML: a dependency of huggingface_hub, which qwenprep depends on

    class Plain(yaml.SafeDumper):  # type: ignore[misc]
        def ignore_aliases(self, data: Any) -> bool:  # every block written out, no &id001
            return True

    body: str = yaml.dump(data, Dumper=Plain, sort_keys=False, default_flow_style=False, width=100)
    return _comment(header) + body


def _comment(text: str) -> str:
    return "".join(f"# {ln}\n" if ln else "#\n" for ln in text.splitlines())


@dataclass(frozen=True)
class EmittedConfig:
    path: Path
    options: dict[str, Any]
    argv: tuple[str, ...]  # the single-node command: vllm serve MODEL --config PATH
    nodes: tuple[NodeCommand, ...] = ()  # multi-node: each node's command using the file

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "options": self.options,
            "argv": list(self.argv),
            "command": shlex.join(self.argv),
            "nodes": [n.to_dict() for n in self.nodes],
        }


def _shared(plan: LaunchPlan) -> tuple[str, ...]:
    """The options every node runs with: the single-node argv without --host/--port."""
    _, args = serve_args(plan.argv)
    out: list[str] = []
    skip = 0
    for i, a in enumerate(args):
        if skip:
            skip -= 1
            continue
        if i < len(args) - len(plan.extra_args) and a.split("=")[0] in ("--host", "--port"):
            skip = 0 if "=" in a else 1
            continue
        out.append(a)
    return tuple(out)


def _node_only(node: NodeCommand, shared: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """The options of NODE's argv that are not in SHARED: its address, rank, --headless,
    --host/--port on the head (they sit between the shared options and the user's EXTRA)."""
    _, args = serve_args(node.argv)
    core = tuple(shared[: len(shared) - len(extra)])
    end = len(args) - len(extra)
    if args[: len(core)] != core or tuple(args[end:]) != tuple(extra):  # pragma: no cover
        raise QwenprepError(
            f"node {node.node_rank}'s command does not start with the shared "
            "options; cannot split it into a config file and the command."
        )
    return tuple(args[len(core) : end])


CONFIG_HEADER = "# vLLM serve options for "  # how a file emit_config wrote begins
DIGEST_LINE = "# Content sha256: "  # the last header line: the digest of all the other lines


def _digest(text: str) -> tuple[str | None, str]:
    """The digest TEXT's (last) digest line names (None: none), and the sha256 of TEXT
    without that line: header comments and YAML alike, so any edit shows."""
    import hashlib

    lines = text.splitlines(keepends=True)
    at = [i for i, ln in enumerate(lines) if ln.startswith(DIGEST_LINE)]
    said = lines[at[-1]][len(DIGEST_LINE) :].strip() if at else None
    rest = "".join(ln for i, ln in enumerate(lines) if not at or i != at[-1])
    return said, hashlib.sha256(rest.encode("utf-8")).hexdigest()


def _unchanged_ours(target: Path) -> str | None:
    """None when TARGET is a file emit_config wrote and nobody edited since (the whole file
    but its digest line still has the digest that line names); else why not."""
    try:
        text = target.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return "was not written by qwenprep"
    if not text.startswith(CONFIG_HEADER):
        return "was not written by qwenprep"
    said, actual = _digest(text)
    if said is None:
        return "its header has no content digest (an edit, or an older qwenprep wrote it)"
    if said != actual:
        return (
            "was edited after qwenprep wrote it (its content, comments included, no longer "
            "has its digest; or an older qwenprep wrote it)"
        )
    return None


def config_target(path: Path, *, force: bool = False) -> Path:
    """Where --emit-config writes, as an absolute path (the printed command must work from
    any directory), judged before anything is probed: a .yaml/.yml name in a directory that
    exists, and no file there but one qwenprep wrote and nobody edited since (FORCE: replace
    any regular file; never a symlink). UsageError / ConflictError (exit 3) otherwise."""
    from qwenprep.util.jsonio import output_target

    if path.suffix not in (".yaml", ".yml"):
        raise UsageError(f"--emit-config {path}: vLLM reads only .yaml or .yml config files.")
    return output_target("--emit-config", path, _unchanged_ours, force=force)


def emit_config(plan: LaunchPlan, path: Path, *, force: bool = False) -> EmittedConfig:
    """Write PLAN's vLLM options to PATH (config_target) as a vLLM --config YAML; return it
    with the command(s) that use it: `vllm serve MODEL --config PATH` (plus what a file cannot
    hold: split_options; per node: plus the node's own options)."""
    path = config_target(path, force=force)
    model, args = serve_args(plan.argv)
    vllm_nodes = [n for n in plan.nodes if "serve" in n.argv]
    shared = _shared(plan) if vllm_nodes else args
    options, line = split_options(shared)
    header = (
        f"vLLM serve options for {model}, written by qwenprep serve --emit-config.\n"
        f"Use: vllm serve {shlex.join([model, '--config', str(path), *line])}"
    )
    if plan.digest:
        header += f"\nOverlay digest: {plan.digest}"
    body = dump_yaml(options)
    text = _comment(header) + DIGEST_LINE + _digest(_comment(header) + body)[1] + "\n" + body
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise QwenprepError(f"cannot write {path}: {e.strerror or e}.", path=str(path)) from None
    from qwenprep.engines.vllm.launch import node_entry

    entry = (
        node_entry(plan.engine.python, plan.engine.distribution)
        if plan.engine
        else ("vllm", "serve")
    )
    argv = (*entry, model, "--config", str(path), *line)
    nodes = []
    for node in plan.nodes:
        if "serve" in node.argv:
            own = node.argv[: serve_at(node.argv) + 1]
            node = replace(
                node,
                argv=(
                    *own,
                    model,
                    "--config",
                    str(path),
                    *line,
                    *_node_only(node, shared, plan.extra_args),
                ),
            )
        nodes.append(node)
    return EmittedConfig(path, options, argv, tuple(nodes))


def source_dir(plan: LaunchPlan) -> str | None:
    """Where an overlay's linked files live: the source directory from its manifest (for a
    Hugging Face cache snapshot, the repo's cache folder, which holds snapshots/ and the
    blobs/ the links end in). None for a plain checkpoint."""
    from qwenprep.model.manifest import read_manifest

    try:
        m = read_manifest(Path(plan.model_path))
    except QwenprepError:
        return None
    src = m.source.path if m is not None else None
    if not src:
        return None
    parts = Path(str(src)).parts
    if "snapshots" in parts:
        return str(Path(*parts[: parts.index("snapshots")]))
    return str(src)


# ------------------------------------------------------------------ Kubernetes
def k8s_name(text: str) -> str:
    """A DNS-1035 label (what LWS names its pods after): lower case, digits, '-'."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:50].rstrip("-")
    return name or "vllm"


def _sizes(args: Sequence[str]) -> dict[str, Any]:
    """The parallel sizes ARGS set, read as vLLM's parser reads them (short options, `_`
    spellings, prefixes, `=`, a --config YAML; the last wins: gate_offline.offline_dests);
    an argv that reading cannot take whole is read option by option, names normalised alike."""
    from qwenprep.engines.vllm.offline import offline_dests

    try:
        return offline_dests(list(args))
    except (ValueError, OSError):
        pass
    out: dict[str, Any] = {}
    for i, a in enumerate(args):
        name, eq, value = a.partition("=")
        if not name.startswith("-") or re.fullmatch(r"-\d+(\.\d+)?", name):
            continue
        try:
            key = _long_name(name)[2:].replace("-", "_")
        except UsageError:
            continue
        out[key] = value if eq else args[i + 1] if i + 1 < len(args) else True
    return out


def _gpus(args: Sequence[str], plan: LaunchPlan) -> int:
    """GPUs one pod needs: TP x PP on a single node, else what each node's TP share is."""
    sizes = _sizes(args)

    def num(dest: str) -> int:
        try:
            return max(1, int(sizes.get(dest, 1)))
        except (TypeError, ValueError):
            return 1

    tp = num("tensor_parallel_size")
    pp = num("pipeline_parallel_size")
    n = max(1, len(plan.nodes))
    if plan.multinode_mode == "dp":
        return tp * num("data_parallel_size_local")
    return max(1, (tp * pp) // n)


def _lws_argv(argv: Sequence[str], *, worker: bool) -> list[str]:
    """A node's argv for a pod: `vllm serve` from the image (not this machine's interpreter),
    the head address from LWS, a worker's rank too."""
    out = ["vllm", *argv[serve_at(argv) :]] if "serve" in argv else list(argv)
    for i, a in enumerate(out[:-1]):
        if a in ("--master-addr", "--data-parallel-address"):
            out[i + 1] = LEADER
        elif a == "--address" and out[i + 1].endswith(":6379"):
            out[i + 1] = f"{LEADER}:6379"
        elif a == "--node-rank" and worker:
            out[i + 1] = RANK
    return out


def _sh(argv: Sequence[str], pre: Sequence[Sequence[str]], start_rank: int | None) -> list[str]:
    """A shell step list for a container: PRE commands, then exec ARGV. Kubernetes expands
    $(LWS_...) in the text before the shell runs; a data-parallel start rank is computed by
    the shell from the worker index ($$ is Kubernetes' escape for a literal $)."""
    steps = [shlex.join(p) for p in pre]
    line = shlex.join(argv)
    if start_rank is not None:
        line = re.sub(
            r"--data-parallel-start-rank \d+",
            f"--data-parallel-start-rank $$((LWS_WORKER_INDEX * {start_rank}))",
            line,
        )
    steps.append("exec " + line)
    return ["/bin/sh", "-c", " && ".join(steps)]


def _container(
    name: str,
    image: str,
    command: list[str],
    env: dict[str, str],
    gpus: int,
    mounts: list[dict[str, Any]],
    port: int | None,
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": image, "command": command}
    if env:
        c["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if port is not None:
        c["ports"] = [{"containerPort": port, "name": "http", "protocol": "TCP"}]
        c["readinessProbe"] = {
            "httpGet": {"path": "/v1/models", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        }
    c["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    c["volumeMounts"] = mounts
    return c


# engine options whose value may be a file or directory on this host (vLLM 0.32 EngineArgs /
# the frontend's --chat-template): the pods read them at the same path, so they are mounted
_HOST_PATH_OPTIONS = ("--config", "--hf-config-path", "--tokenizer", "--chat-template")


def _host_files(args: Sequence[str]) -> list[tuple[str, str]]:
    """(path, hostPath type) for each option value in ARGS naming a file or directory here.
    A relative one is refused: the container's working directory is not this one."""
    from qwenprep.engines.vllm.offline import flag_values

    out: list[tuple[str, str]] = []
    for flag in _HOST_PATH_OPTIONS:
        for v in flag_values(args, flag):
            path = Path(v)
            if not path.exists():
                continue  # a Hub id or a path only the image has
            if not path.is_absolute():
                raise UsageError(
                    f"--emit k8s: {flag} {v} is a relative path; the pods cannot read it from "
                    "this directory.",
                    hint=f"give it as an absolute path ({path.resolve()}): the manifest mounts "
                    "it read-only at the same path",
                )
            out.append((str(path), "Directory" if path.is_dir() else "File"))
    return list(dict.fromkeys(out))


def lws_manifest(
    plan: LaunchPlan, *, image: str, source: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """A LeaderWorkerSet for PLAN: one group of len(plan.nodes) pods (one for a single-node
    plan). Every pod first runs the digest guard (an init container: `qwenprep serve PATH
    --expect-digest D --dry-run`, so IMAGE needs qwenprep beside vLLM); the leader serves on
    the plan's port with a readiness probe on /v1/models. The overlay (and SOURCE, where its
    files link to) are host paths mounted read-only at the same path on every node."""
    model, args = serve_args(plan.argv)
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    for i, p in enumerate(dict.fromkeys(x for x in (model, source) if x)):
        vol = f"model-{i}"
        volumes.append({"name": vol, "hostPath": {"path": p, "type": "Directory"}})
        mounts.append({"name": vol, "mountPath": p, "readOnly": True})
    for i, (p, kind) in enumerate(_host_files(args)):  # what the argv reads from this host
        vol = f"arg-{i}"
        volumes.append({"name": vol, "hostPath": {"path": p, "type": kind}})
        mounts.append({"name": vol, "mountPath": p, "readOnly": True})
    env = dict(plan.env)
    nodes = list(plan.nodes)
    gpus = _gpus(args, plan)
    guard = (
        ["qwenprep", "serve", model, "--expect-digest", plan.digest, "--dry-run"]
        if plan.digest
        else None
    )

    def pod(role: str, command: list[str], serves: bool) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if guard is not None:
            spec["initContainers"] = [
                {"name": "overlay-guard", "image": image, "command": guard, "volumeMounts": mounts}
            ]
        spec["containers"] = [
            _container(
                "vllm" if serves or role == "leader" else "worker",
                image,
                command,
                env,
                gpus,
                mounts,
                plan.port if serves else None,
            )
        ]
        spec["volumes"] = volumes
        return {
            "metadata": {
                "labels": {"app.kubernetes.io/name": "qwenprep-vllm", "qwenprep/role": role}
            },
            "spec": spec,
        }

    if not nodes:  # one pod: LWS uses the worker template for the leader too
        group, worker_pod = 1, pod("leader", _lws_argv(plan.argv, worker=False), True)
        leader_pod = None
    else:
        head, worker = nodes[0], nodes[1]
        start = None
        if plan.multinode_mode == "dp":
            local = next(
                int(worker.argv[i + 1])
                for i, a in enumerate(worker.argv[:-1])
                if a == "--data-parallel-size-local"
            )
            start = local
        h_argv = _lws_argv(head.argv, worker=False)
        leader_cmd = _sh(h_argv, head.pre, None) if head.pre else h_argv
        w_argv = _lws_argv(worker.argv, worker=True)
        worker_cmd = _sh(w_argv, worker.pre, start) if start is not None or worker.pre else w_argv
        group = len(nodes)
        leader_pod = pod("leader", leader_cmd, True)
        worker_pod = pod("worker", worker_cmd, False)
    lwt: dict[str, Any] = {"size": group, "restartPolicy": "RecreateGroupOnPodRestart"}
    if leader_pod is not None:
        lwt["leaderTemplate"] = leader_pod
    lwt["workerTemplate"] = worker_pod
    return {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": {
            "name": k8s_name(name or plan.served_model_name),
            "labels": {
                "app.kubernetes.io/name": "qwenprep-vllm",
                "app.kubernetes.io/managed-by": "qwenprep",
            },
            **({"annotations": {"qwenprep/overlay-digest": plan.digest}} if plan.digest else {}),
        },
        "spec": {"replicas": 1, "startupPolicy": "LeaderCreated", "leaderWorkerTemplate": lwt},
    }


# A container image reference as registries parse it (the distribution project's reference
# grammar, simplified): [host[:port]/]path[:tag][@algorithm:hex], path components lowercase.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)"
)
_IMAGE = re.compile(
    rf"(?:{_HOST}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


def check_image(image: str) -> str:
    """IMAGE when it reads as a container image reference; UsageError otherwise (a typo
    here would only show when the pods fail to pull)."""
    if not _IMAGE.fullmatch(image) or len(image) > 255:
        raise UsageError(
            f"--image {image!r} is not a container image reference.",
            hint="write it as [REGISTRY/]NAME[:TAG][@sha256:DIGEST], the name in lower case, "
            "e.g. vllm/vllm-openai:v0.11.1 or registry.example.com:5000/team/vllm:v1",
        )
    return image


def default_image(plan: LaunchPlan) -> str:
    """vLLM's own image for the planned version (it must also hold qwenprep for the guard)."""
    if plan.engine is None:
        return "vllm/vllm-openai:latest"
    version = plan.engine.version.split("+")[0]
    return f"vllm/vllm-openai:v{version}"
