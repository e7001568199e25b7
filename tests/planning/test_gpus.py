"""GPU inventory: NVML -> nvidia-smi -> flags. This machine has neither NVML nor nvidia-smi, so
the nvidia-smi path runs a real executable named nvidia-smi (a script printing the tool's real
--query-gpu CSV) placed first on PATH: a stand-in for the external tool, not for gpus.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fakes import H200_CSV, fake_smi
from qwenprep.errors import InputError, UsageError
from qwenprep.planning.gpus import GPU, from_nvidia_smi, inventory, parse_smi_csv
from qwenprep.util.sizes import MiB

# What `nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits`
# prints on an 8x H200 node (MiB, no header, ", " separated).


@pytest.fixture
def no_nvml() -> None:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return
    pytest.skip("nvidia-ml-py is installed here; these tests cover the fallbacks")


def test_parse_smi_csv() -> None:
    gpus = parse_smi_csv(H200_CSV)
    assert len(gpus) == 8
    assert gpus[0] == GPU(0, "NVIDIA H200", 143771 * MiB, 143271 * MiB)
    assert gpus[7].index == 7 and gpus[7].memory_free == (143771 - 507) * MiB


def test_parse_smi_csv_rejects_garbage() -> None:
    with pytest.raises(InputError, match=r"nvidia-smi line 1: memory fields '\[N/A\]'"):
        parse_smi_csv("NVIDIA H100 80GB HBM3, [N/A], 81000\n")
    with pytest.raises(InputError, match="expected 3 fields"):
        parse_smi_csv("NVIDIA H100, 81559\n")


def test_inventory_uses_flags_when_given() -> None:
    inv = inventory(gpus=8, gpu_memory=80 * 1024**3)
    assert inv.source == "flags" and inv.count == 8
    assert inv.min_total == 80 * 1024**3
    assert inv.gpus[3].memory_free is None


def test_flags_go_together() -> None:
    with pytest.raises(UsageError, match="--gpus and --gpu-memory go together"):
        inventory(gpus=8)


def test_nothing_here_gives_none(
    no_nvml: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    inv = inventory()
    assert inv.source == "none" and inv.count == 0
    assert "NVML: nvidia-ml-py is not installed" in inv.notes
    assert "nvidia-smi is not on PATH" in inv.notes


def test_nvidia_smi_on_path(no_nvml: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_smi(tmp_path / "bin", H200_CSV)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    inv = inventory()
    assert inv.source == "nvidia-smi"
    assert [g.name for g in inv.gpus] == ["NVIDIA H200"] * 8
    assert inv.min_total == 143771 * MiB
    assert inv.to_dict()["gpus"][0] == {
        "index": 0,
        "name": "NVIDIA H200",
        "memory_total": 143771 * MiB,
        "memory_free": 143271 * MiB,
    }


def test_failing_nvidia_smi_is_a_note(
    no_nvml: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_smi(tmp_path / "bin", "", rc=9)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    inv = inventory()
    assert inv.source == "none"
    assert any(
        n.startswith("nvidia-smi: nvidia-smi exited 9: NVIDIA-SMI has failed") for n in inv.notes
    ), inv.notes


def test_from_nvidia_smi_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nvidia-smi is not on PATH"):
        from_nvidia_smi()
    with pytest.raises(RuntimeError, match="nvidia-smi did not run"):
        from_nvidia_smi(str(tmp_path / "nvidia-smi"))


def test_plan_reads_gpus_from_nvidia_smi(
    no_nvml: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """qwenprep plan without memory flags takes the GPUs (count -> TP, memory) from nvidia-smi."""
    import json

    from click.testing import CliRunner

    from conftest import TINY
    from qwenprep.cli import cli

    fake_smi(tmp_path / "bin", "NVIDIA H100 80GB HBM3, 81559, 81000\n" * 2)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    r = CliRunner().invoke(
        cli,
        ["plan", str(TINY), "--context", "1m", "--vllm-version", "0.32", "--json"],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["parallel"]["tp"] == 2 and out["parallel"]["gpus"] == 2
    assert out["exact"] is False
    assert out["estimate"]["gpu_memory_bytes"] == 81559 * MiB


# ------------------------------------------------------------------ NVML (nvidia-ml-py)
# A small `pynvml` module written into tmp_path stands in for the external NVIDIA library (it
# has the functions gpus.from_nvml calls, with nvidia-ml-py's names and return shapes: a
# handle per index, the name as bytes (older releases) or str, a memory struct in bytes).

FAKE_PYNVML = """
class NVMLError(Exception):
    pass

INIT_ERROR = {init_error!r}
GPUS = {gpus!r}  # (name, total bytes, free bytes)
calls = []

class _Memory:
    def __init__(self, total, free):
        self.total, self.free, self.used = total, free, total - free

def nvmlInit():
    calls.append("init")
    if INIT_ERROR:
        raise NVMLError(INIT_ERROR)

def nvmlShutdown():
    calls.append("shutdown")

def nvmlDeviceGetCount():
    return len(GPUS)

def nvmlDeviceGetHandleByIndex(i):
    return ("handle", i)

def nvmlDeviceGetName(h):
    name = GPUS[h[1]][0]
    return name.encode() if h[1] == 0 else name

def nvmlDeviceGetMemoryInfo(h):
    return _Memory(GPUS[h[1]][1], GPUS[h[1]][2])
"""

H100 = ("NVIDIA H100 80GB HBM3", 85520809984, 84942979072)


def fake_pynvml(
    dir_: Path, *, gpus: list[tuple[str, int, int]], init_error: str | None = None
) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "pynvml.py").write_text(FAKE_PYNVML.format(gpus=gpus, init_error=init_error))
    return dir_


@pytest.fixture
def use_fake_nvml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    def install(**kw: object) -> object:
        import importlib.util

        d = fake_pynvml(tmp_path / "nvml", **kw)  # type: ignore[arg-type]
        spec = importlib.util.spec_from_file_location("pynvml", d / "pynvml.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        # `import pynvml` in gpus.from_nvml finds this one; the old entry is back after the test
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod

    return install


def test_inventory_from_nvml(
    use_fake_nvml,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-smi"))
    mod = use_fake_nvml(gpus=[H100, ("NVIDIA H100 80GB HBM3", 85520809984, 1000 * MiB)])
    inv = inventory()
    assert inv.source == "nvml" and inv.count == 2 and inv.notes == ()
    assert inv.gpus == (
        GPU(0, "NVIDIA H100 80GB HBM3", 85520809984, 84942979072),
        GPU(1, "NVIDIA H100 80GB HBM3", 85520809984, 1000 * MiB),
    )
    assert inv.min_total == 85520809984
    assert mod.calls == ["init", "shutdown"]  # NVML is shut down again after reading


def test_nvml_init_failure_falls_back_to_nvidia_smi(
    use_fake_nvml,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    fake_smi(tmp_path / "bin", H200_CSV)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    mod = use_fake_nvml(gpus=[H100], init_error="Driver Not Loaded")
    inv = inventory()
    assert inv.source == "nvidia-smi" and inv.count == 8
    assert inv.notes == ("NVML: NVML did not start (Driver Not Loaded)",)
    assert mod.calls == ["init"]


def test_nvml_with_no_gpus_falls_back(
    use_fake_nvml,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-smi"))
    use_fake_nvml(gpus=[])
    inv = inventory()
    assert inv.source == "none"
    assert inv.notes == ("NVML: no GPUs", "nvidia-smi is not on PATH")


def test_console_script_plan_reads_nvml(tmp_path: Path) -> None:
    """Through the installed console script in a fresh process: the fake pynvml first on
    PYTHONPATH gives the GPUs (count -> TP, memory -> the estimate)."""
    import json
    import subprocess

    from conftest import QWENPREP_BIN, TINY

    d = fake_pynvml(tmp_path / "nvml", gpus=[H100, H100])
    env = dict(os.environ, PYTHONPATH=str(d), PATH=str(tmp_path / "no-smi"))
    res = subprocess.run(
        [
            str(QWENPREP_BIN),
            "plan",
            str(TINY),
            "--context",
            "1m",
            "--vllm-version",
            "0.32",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["parallel"]["tp"] == 2 and out["parallel"]["gpus"] == 2
    assert out["estimate"]["gpu_memory_bytes"] == 85520809984


# ------------------------------------------------------------------ the catalog's memory


def test_catalog_memory_is_what_the_driver_reports() -> None:
    """Each GPU's memory is the driver's figure in bytes, with where it was read: an H200 is
    150,754,820,096 bytes (143,771 MiB, NVML on a real H200), not the datasheet's "141 GB"
    read as GiB (151,397,597,184) nor as GB (141,000,000,000)."""
    from qwenprep.planning.catalog import CATALOG, lookup

    want = {"H200": 143771, "H100 SXM": 81559, "B200": 183359, "L40S": 46068, "A100": 81920}
    for name, mib in want.items():
        spec = lookup(name) if name != "A100" else lookup("A100 80GB SXM")
        assert spec is not None and spec.memory_bytes == mib * MiB, name
    mi300x = lookup("MI300X")
    assert mi300x is not None and mi300x.memory_bytes == 206_141_652_992
    for spec in CATALOG:
        assert spec.memory_source and spec.to_dict()["memory_source"] == spec.memory_source


def test_hints_and_examples_give_a_gpu_name_or_a_binary_size(no_nvml: None) -> None:
    """No hint, help example or README line tells people to type a datasheet's decimal GB
    (`--gpu-memory 141GB` is 131.32 GiB, 6 % less than an H200 has)."""
    import re

    from click.testing import CliRunner

    from conftest import REPO, TINY
    from qwenprep.cli import cli

    decimal = re.compile(r"--gpu-memory[ =]\d+(\.\d+)?[GMT]B\b")
    texts = {"README.md": (REPO / "README.md").read_text(encoding="utf-8")}
    for command in ("plan", "check", "serve"):
        texts[f"{command} --help"] = CliRunner().invoke(cli, [command, "--help"]).output
    # the hints of the mistakes people make: no memory budget, --gpus without --gpu-memory
    env = {"PATH": "/nonexistent"}  # no nvidia-smi either
    texts["plan, no GPU"] = CliRunner(env=env).invoke(cli, ["plan", str(TINY)]).output
    texts["check --gpus"] = (
        CliRunner(env=env).invoke(cli, ["check", str(TINY), "--no-engine", "--gpus", "8"]).output
    )
    for where, text in texts.items():
        assert not decimal.search(text), (where, decimal.search(text))
    assert "--gpu H200" in texts["plan, no GPU"] + texts["check --gpus"]


# ------------------------------------------------------------------ the names people type


@pytest.mark.parametrize(
    ("typed", "name", "note"),
    [
        ("H100", "H100 SXM", "--gpu 'H100' read as H100 SXM (the catalog also has H100 PCIe"),
        ("a100", "A100 80GB SXM", "--gpu 'a100' read as A100 80GB SXM"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM", None),  # nvidia-smi's product names
        ("NVIDIA H200", "H200", None),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM", None),
        ("NVIDIA H100 PCIe", "H100 PCIe", None),
        ("AMD Instinct MI300X", "MI300X", None),
        ("h100sxm", "H100 SXM", None),  # case and spacing free
        ("  H100 - SXM ", "H100 SXM", None),
    ],
)
def test_plan_reads_the_gpu_names_people_type(typed: str, name: str, note: str | None) -> None:
    import json

    from click.testing import CliRunner

    from conftest import TINY
    from qwenprep.cli import cli

    r = CliRunner().invoke(
        cli,
        ["plan", str(TINY), "--gpus", "1", "--tp", "1", "--gpu", typed, "--vllm-version", "0.32"]
        + ["--json"],
    )
    assert r.exit_code in (0, 1), r.output
    out = json.loads(r.stdout)
    assert out["gpu"]["name"] == name
    notes = [n for n in out["time_notes"] if n.startswith("--gpu ")]
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith(note)


@pytest.mark.parametrize(("typed", "choices"), [("H2", "H200, H20"), ("mi3", "MI300X, MI325X")])
def test_an_ambiguous_gpu_name_lists_the_choices(typed: str, choices: str) -> None:
    from qwenprep.planning.catalog import require

    with pytest.raises(UsageError) as e:
        require(typed)
    assert e.value.message == f"--gpu {typed!r} is ambiguous: it could be {choices}."
    assert e.value.exit_code == 2


def test_unknown_gpu_names_stay_unknown() -> None:
    from qwenprep.planning.catalog import lookup, require

    for typed in ("H100 NVL", "NVIDIA A100-SXM4-40GB", "A100 PCIe", "RTX 4090"):
        assert lookup(typed) is None
        with pytest.raises(UsageError, match="not in the GPU catalog"):
            require(typed)
