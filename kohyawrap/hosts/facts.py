"""What a host offers for training: GPUs, driver and CUDA, disk, python, git, uv, torch.

:func:`read_facts` asks in ONE round trip (a bash script printing ``KEY=VALUE`` lines);
:func:`parse_facts` turns those lines into :class:`HostFacts` and is a pure function, tested on
literal ``nvidia-smi`` output. A host without ``nvidia-smi`` has an empty GPU list, not an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from kohyawrap.errors import HostError

if TYPE_CHECKING:
    from kohyawrap.hosts.base import Host

_VERSION_RE = re.compile(r"(\d+(?:\.\d+)+)")
_CUDA_RE = re.compile(r"CUDA Version:\s*([0-9.]+)")

# Each probe prints KEY=VALUE lines; a missing tool prints nothing for its keys.
_SCRIPT = r"""
w={work_dir}
one() {{ printf '%s=%s\n' "$1" "$(printf '%s' "$2" | head -n 1)"; }}
os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")
one OS "${{os:-$(uname -s)}}"
one KERNEL "$(uname -sr)"
one ARCH "$(uname -m)"
one CPUS "$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
one MEM_KB "$(awk '/^MemTotal:/ {{print $2}}' /proc/meminfo 2>/dev/null)"
if command -v nvidia-smi >/dev/null 2>&1; then
  one NVIDIA_SMI yes
  q=name,memory.total,driver_version
  nvidia-smi --query-gpu=$q --format=csv,noheader,nounits 2>&1 | sed 's/^/GPU=/'
  nvidia-smi --query-gpu=index,uuid,memory.used,memory.free --format=csv,noheader,nounits 2>/dev/null | sed 's/^/GPU_STATE=/'
  nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory,process_name --format=csv,noheader,nounits 2>/dev/null | sed 's/^/GPU_APP=/'
  nvidia-smi 2>/dev/null | grep -m 1 'CUDA Version' | sed 's/^/SMI_HEADER=/'
fi
d=$w; while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done
one DISK_DIR "$d"
df -Pk -- "$d" 2>/dev/null | awk 'NR == 2 {{print "DISK_TOTAL_KB=" $2; print "DISK_FREE_KB=" $4}}'
command -v python3 >/dev/null 2>&1 && one PYTHON "$(python3 --version 2>&1)"
command -v git >/dev/null 2>&1 && one GIT "$(git --version 2>&1)"
command -v uv >/dev/null 2>&1 && one UV "$(uv --version 2>&1)"
one WORK_DIR "$w"
for x in "$w"/sd-scripts/*/; do [ -d "$x" ] && one SDSCRIPTS "$(basename -- "$x")"; done
for x in "$w"/venvs/*/; do [ -d "$x" ] && one VENV "$(basename -- "$x")"; done
# Who rents the host: RunPod keeps RUNPOD_POD_ID in /etc/rp_environment (an SSH session may lack
# it); Vast.ai puts CONTAINER_ID / CONTAINER_API_KEY in the container's first process. The key is
# never printed, only whether it is there.
penv() {{ {{ tr '\0' '\n' </proc/1/environ; }} 2>/dev/null | sed -n "s/^$1=//p" | head -n 1; }}
rp=${{RUNPOD_POD_ID:-}}
[ -z "$rp" ] && [ -r /etc/rp_environment ] && rp=$(sed -n 's/^\(export \)\{{0,1\}}RUNPOD_POD_ID=//p' /etc/rp_environment | head -n 1 | tr -d "\"'")
[ -z "$rp" ] && rp=$(penv RUNPOD_POD_ID)
one RUNPOD_POD_ID "$rp"
vid=${{CONTAINER_ID:-}}; vkey=${{CONTAINER_API_KEY:+yes}}
[ -z "$vid" ] && vid=$(penv CONTAINER_ID)
[ -z "$vkey" ] && [ -n "$(penv CONTAINER_API_KEY)" ] && vkey=yes
one VAST_CONTAINER_ID "$vid"
one VAST_API_KEY "$vkey"
command -v runpodctl >/dev/null 2>&1 && one RUNPODCTL "$(command -v runpodctl)"
if [ -n "{probe_torch}" ] && command -v python3 >/dev/null 2>&1; then
  timeout 120 python3 -c 'import torch; print("TORCH=" + torch.__version__)
print("TORCH_CUDA=" + str(torch.cuda.is_available()))' 2>/dev/null
fi
true
"""


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on a GPU (``nvidia-smi --query-compute-apps``)."""

    pid: int
    used_mib: int | None
    name: str


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi reports it, with what is using it when the facts were read."""

    name: str
    memory_mib: int | None
    driver: str
    index: int | None = None  # nvidia-smi's index (PCI bus order)
    uuid: str = ""  # GPU-...: what CUDA_VISIBLE_DEVICES names without any ordering doubt
    memory_used_mib: int | None = None
    memory_free_mib: int | None = None
    processes: tuple[GpuProcess, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["processes"] = [asdict(p) for p in self.processes]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gpu:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["processes"] = tuple(GpuProcess(**p) for p in data.get("processes") or ())
        return cls(**fields)


@dataclass(frozen=True)
class HostFacts:
    """A host's hardware and software, as seen by ``kohyawrap hosts check``."""

    label: str
    os: str
    kernel: str
    arch: str
    cpu_count: int | None
    memory_mib: int | None
    gpus: tuple[Gpu, ...]
    nvidia_smi: bool
    nvidia_smi_error: str | None
    driver_version: str | None
    cuda_version: str | None
    work_dir: str
    disk_path: str
    disk_free_bytes: int | None
    disk_total_bytes: int | None
    python_version: str | None
    git_version: str | None
    uv_version: str | None
    torch_version: str | None
    torch_cuda: bool | None
    sdscripts_checkouts: tuple[str, ...]
    venvs: tuple[str, ...]
    provider: str = "none"  # runpod | vast | none: who rents the host, from its environment
    provider_id: str = ""  # the RunPod pod id or Vast.ai instance id
    provider_tool: str = ""  # runpodctl's path (RunPod stops and destroys a pod with it)

    @property
    def disk_free_gb(self) -> float | None:
        """Free disk where the work goes, in GB (10^9 bytes)."""
        return None if self.disk_free_bytes is None else self.disk_free_bytes / 1e9

    def notes(self) -> list[str]:
        """Warnings worth showing next to the facts (several GPUs, missing tools, ...)."""
        out = []
        if not self.nvidia_smi:
            out.append("nvidia-smi not found: no NVIDIA GPU or driver visible on this host")
        elif not self.gpus:
            out.append(f"nvidia-smi found no GPU: {self.nvidia_smi_error or 'empty list'}")
        if len(self.gpus) > 1:
            out.append(
                f"{len(self.gpus)} GPUs: a run trains on one unless `train --gpus all --multi-gpu` "
                "spreads it over them"
            )
        for position, gpu in enumerate(self.gpus):
            if gpu.processes:
                index = gpu.index if gpu.index is not None else position
                used = sum(p.used_mib or 0 for p in gpu.processes)
                names = ", ".join(sorted({p.name for p in gpu.processes}))
                out.append(
                    f"GPU {index} is in use: {len(gpu.processes)} process(es) ({names}) "
                    f"hold {used} MiB"
                )
        if self.python_version is None:
            out.append("python3 not found: sd-scripts needs Python 3.10 or newer")
        elif _version_tuple(self.python_version) < (3, 10):
            out.append(f"python3 is {self.python_version}: sd-scripts needs 3.10 or newer")
        if self.git_version is None:
            out.append("git not found: needed to fetch sd-scripts")
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``--json`` output), with derived values added."""
        data = asdict(self)
        data["gpus"] = [g.to_json() for g in self.gpus]
        data["sdscripts_checkouts"] = list(self.sdscripts_checkouts)
        data["venvs"] = list(self.venvs)
        data["disk_free_gb"] = None if self.disk_free_gb is None else round(self.disk_free_gb, 2)
        data["notes"] = self.notes()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostFacts:
        """Facts recorded by :meth:`to_json` (derived values are dropped, missing ones empty)."""
        fields: dict[str, Any] = {k: data.get(k) for k in cls.__dataclass_fields__}
        fields["gpus"] = tuple(Gpu.from_json(g) for g in data.get("gpus") or ())
        fields["sdscripts_checkouts"] = tuple(data.get("sdscripts_checkouts") or ())
        fields["venvs"] = tuple(data.get("venvs") or ())
        fields["nvidia_smi"] = bool(data.get("nvidia_smi"))
        for key, default in (("provider", "none"), ("provider_id", ""), ("provider_tool", "")):
            fields[key] = str(data.get(key) or default)
        for key in ("label", "os", "kernel", "arch", "work_dir", "disk_path"):
            fields[key] = str(fields[key] or "")
        return cls(**fields)


def facts_script(work_dir: str, *, probe_torch: bool = True) -> str:
    """The bash script that prints the facts as ``KEY=VALUE`` lines."""
    from kohyawrap.hosts.base import quote

    return _SCRIPT.format(work_dir=quote(work_dir), probe_torch="1" if probe_torch else "")


def read_facts(host: Host, work_dir: str = "~/kohyawrap", *, probe_torch: bool = True) -> HostFacts:
    """Ask ``host`` for its facts in one round trip (torch is probed when ``probe_torch``)."""
    absolute = _expand(host, work_dir)
    result = host.run(facts_script(absolute, probe_torch=probe_torch), timeout=180)
    return parse_facts(result.stdout, label=host.label)


def _expand(host: Host, path: str) -> str:
    if path == "~" or path.startswith("~/"):
        return host.home() + path[1:]
    return path if path.startswith("/") else f"{host.home()}/{path}"


def parse_gpu(line: str) -> Gpu | None:
    """One ``name, memory.total, driver_version`` line (nounits), or None if it is not one.

    >>> parse_gpu("NVIDIA GeForce RTX 4090, 24564, 550.54.14")
    Gpu(name='NVIDIA GeForce RTX 4090', memory_mib=24564, driver='550.54.14')
    """
    parts = [p.strip() for p in line.rsplit(",", 2)]
    if len(parts) != 3 or not parts[0] or not _VERSION_RE.fullmatch(parts[2]):
        return None
    name, memory, driver = parts
    return Gpu(name=name, memory_mib=int(memory) if memory.isdigit() else None, driver=driver)


def parse_gpu_app(line: str) -> tuple[str, GpuProcess] | None:
    """One ``gpu_uuid, pid, used_memory, process_name`` line: (the GPU's uuid, the process).

    >>> parse_gpu_app("GPU-5f2c, 4242, 20480, /usr/bin/python3")
    ('GPU-5f2c', GpuProcess(pid=4242, used_mib=20480, name='/usr/bin/python3'))
    """
    parts = [p.strip() for p in line.split(",", 3)]
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    used = int(parts[2]) if parts[2].isdigit() else None
    return parts[0], GpuProcess(int(parts[1]), used, parts[3])


def _with_state(
    gpus: tuple[Gpu, ...], states: list[str], apps: list[tuple[str, GpuProcess]]
) -> tuple[Gpu, ...]:
    """Index, uuid, used/free memory and compute processes added to each GPU (both nvidia-smi
    queries list the GPUs in the same order; a line that is not a state is ignored)."""
    out = []
    for gpu, line in zip(gpus, [*states, *[""] * len(gpus)], strict=False):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            out.append(gpu)
            continue
        index, uuid, used, free = parts
        processes = tuple(p for owner, p in apps if owner == uuid)
        out.append(
            replace(
                gpu,
                index=int(index),
                uuid=uuid,
                memory_used_mib=int(used) if used.isdigit() else None,
                memory_free_mib=int(free) if free.isdigit() else None,
                processes=processes,
            )
        )
    return tuple(out)


def parse_facts(text: str, *, label: str) -> HostFacts:
    """Build HostFacts from the ``KEY=VALUE`` lines of :func:`facts_script`."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isupper():
            values.setdefault(key, []).append(value.strip())

    def one(key: str) -> str | None:
        found = values.get(key)
        return found[0] if found and found[0] else None

    parsed = [(line, parse_gpu(line)) for line in values.get("GPU", [])]
    gpus = _with_state(
        tuple(g for _, g in parsed if g),
        values.get("GPU_STATE", []),
        [app for line in values.get("GPU_APP", []) if (app := parse_gpu_app(line))],
    )
    errors = [line for line, g in parsed if g is None and line]
    header = one("SMI_HEADER") or ""
    cuda = _CUDA_RE.search(header)
    torch_cuda = one("TORCH_CUDA")
    return HostFacts(
        label=label,
        os=one("OS") or "unknown",
        kernel=one("KERNEL") or "unknown",
        arch=one("ARCH") or "unknown",
        cpu_count=_int(one("CPUS")),
        memory_mib=None if (kb := _int(one("MEM_KB"))) is None else kb // 1024,
        gpus=gpus,
        nvidia_smi=one("NVIDIA_SMI") == "yes",
        nvidia_smi_error=errors[0] if errors else None,
        driver_version=gpus[0].driver if gpus else None,
        cuda_version=cuda.group(1) if cuda else None,
        work_dir=one("WORK_DIR") or "",
        disk_path=one("DISK_DIR") or "",
        disk_free_bytes=_kib(one("DISK_FREE_KB")),
        disk_total_bytes=_kib(one("DISK_TOTAL_KB")),
        python_version=_version(one("PYTHON")),
        git_version=_version(one("GIT")),
        uv_version=_version(one("UV")),
        torch_version=one("TORCH"),
        torch_cuda=None if torch_cuda is None else torch_cuda == "True",
        sdscripts_checkouts=tuple(values.get("SDSCRIPTS", [])),
        venvs=tuple(values.get("VENV", [])),
        **_provider(one),
    )


def _provider(one: Callable[[str], str | None]) -> dict[str, str]:
    """RunPod when the pod id is there; Vast.ai when the instance id AND its key are."""
    if one("RUNPOD_POD_ID"):
        return {
            "provider": "runpod",
            "provider_id": one("RUNPOD_POD_ID") or "",
            "provider_tool": one("RUNPODCTL") or "",
        }
    if one("VAST_CONTAINER_ID") and one("VAST_API_KEY") == "yes":
        return {"provider": "vast", "provider_id": one("VAST_CONTAINER_ID") or ""}
    return {"provider": "none"}


def check_disk(facts: HostFacts, need_gb: float) -> None:
    """Raise HostError when the work directory's disk has less than ``need_gb`` GB free."""
    free = facts.disk_free_gb
    if free is None:
        raise HostError(f"{facts.label}: could not read the free disk space at {facts.work_dir}")
    if free < need_gb:
        raise HostError(
            f"not enough disk on {facts.label}: {free:.1f} GB free at {facts.disk_path}, "
            f"about {need_gb:.1f} GB needed",
            evidence=[f"work directory: {facts.work_dir}"],
            hint="rent a machine with a bigger disk, or free space there (old runs, cached models)",
        )


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _kib(value: str | None) -> int | None:
    kib = _int(value)
    return None if kib is None else kib * 1024


def _version(text: str | None) -> str | None:
    match = _VERSION_RE.search(text or "")
    return match.group(1) if match else None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))
