"""A real one-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd
from Debian's packages, with a generated configuration, state and logs in a temporary folder
(`SLURM_CONF`; nothing under /etc or /run is used or written).

The daemons run in the foreground (`-D`, `-F`) as children of the test session, with no
inherited descriptors (a daemon holding the pipe of a captured command would hang it), so
that `stop` ends exactly the processes `start` started. Facts behind each setting:
../shared/slurm/NOTES.md (its pitfall numbers are cited).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "mungekey", "sbatch", "squeue", "scontrol")
SBIN = (Path("/usr/sbin"), Path("/usr/bin"))


NO_CLUSTER = "no local SLURM cluster:"  # every reason to skip starts so


def missing_reason() -> str | None:
    """Why no cluster can start here (None when it can)."""
    if os.geteuid() != 0:
        return f"{NO_CLUSTER} the daemons run as root and this user is not root"
    lost = [name for name in PROGRAMS if not any((d / name).exists() for d in SBIN)]
    if lost:
        return (
            f"{NO_CLUSTER} Debian's slurmctld slurmd slurm-client munge are not installed "
            f"(no {', '.join(lost)}; .ci/run installs them with apt)"
        )
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_line() -> str:
    """This machine's node definition as slurmd measures it (pitfall 6)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    words = [w for w in out.split() if w.split("=")[0] not in ("UpTime",)]
    return " ".join(words) + " NodeAddr=127.0.0.1 State=UNKNOWN"


def config(base: Path, host: str, ports: tuple[int, int]) -> str:
    return f"""ClusterName=pubmedqa-tests
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge/munge.socket
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/run/slurmctld.pid
SlurmdPidFile={base}/run/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={base}/log/jobcomp.txt
ReturnToService=2
MpiDefault=none
SchedulerParameters=batch_sched_delay=0
EnforcePartLimits=ALL
MinJobAge=600
KillWait=5
{node_line()}
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Cluster:
    base: Path
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(
            list(args), env=os.environ | self.env, capture_output=True, text=True,
            check=check, timeout=120,
        )  # fmt: skip

    def log(self, name: str) -> str:
        path = self.base / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _daemon(cluster: Cluster, name: str, args: list[str]) -> None:
    log = open(cluster.base / "log" / f"{name}.out", "ab")  # noqa: SIM115 (the child holds it)
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        close_fds=True, env=os.environ | cluster.env, start_new_session=True,
    )  # fmt: skip
    log.close()
    cluster.processes.append(proc)


def start(base: Path, timeout: float = 60) -> Cluster:
    """Start munged, slurmctld and slurmd in `base`, a new folder whose ancestors all let
    others in (munged refuses a socket that others could not reach, pitfall 1: pytest's own
    temporary folders are private); return once the node is idle."""
    base.mkdir(mode=0o755)
    for sub in ("munge", "state", "spool", "run", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "munge").chmod(0o755)
    host = socket.gethostname().split(".")[0]
    (base / "slurm.conf").write_text(config(base, host, (free_port(), free_port())))
    cluster = Cluster(base, {"SLURM_CONF": str(base / "slurm.conf")})
    subprocess.run(["mungekey", "-c", "-k", str(base / "munge/munge.key")], check=True)
    _daemon(cluster, "munged", [
        "munged", "-F", f"--socket={base}/munge/munge.socket",
        f"--key-file={base}/munge/munge.key", f"--log-file={base}/log/munged.log",
        f"--pid-file={base}/munge/munged.pid", f"--seed-file={base}/munge/munged.seed",
    ])  # fmt: skip
    deadline = time.monotonic() + timeout
    while not (base / "munge/munge.socket").exists():
        if time.monotonic() > deadline or cluster.processes[0].poll() is not None:
            stop(cluster)
            raise RuntimeError(f"munged did not start: {(base / 'log/munged.out').read_text()}")
        time.sleep(0.05)
    conf = str(base / "slurm.conf")
    _daemon(cluster, "slurmctld", ["slurmctld", "-D", "-i", "-f", conf])
    _daemon(cluster, "slurmd", ["slurmd", "-D", "-f", conf])
    while True:  # the node registered and idle (pitfall 14: a fresh state folder, no old node)
        state = cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
        if state == "idle":
            return cluster
        dead = [p.args[0] for p in cluster.processes if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            stop(cluster)
            raise RuntimeError(
                f"SLURM did not come up (node {state!r}, exited: {dead}):\n"
                + cluster.log("slurmctld")[-2000:]
                + cluster.log("slurmd")[-2000:]
            )
        time.sleep(0.2)


def job_processes(cluster: Cluster) -> list[int]:
    """The processes slurmd started for this cluster's jobs (slurmstepd and what it runs):
    they detach from slurmd, so they are found by the SLURM_CONF they inherited."""
    mine = f"SLURM_CONF={cluster.env['SLURM_CONF']}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if mine in environ and state != "Z":
            found.append(int(entry.name))
    return found


def stop(cluster: Cluster, timeout: float = 30) -> None:
    """Cancel the jobs left (a failed test may leave some running) and wait for them to end,
    then end the daemons this cluster started and any job process left behind, by pid."""
    if cluster.processes and all(p.poll() is None for p in cluster.processes):
        cluster.run("scancel", "--user=root", "--full", check=False)
        deadline = time.monotonic() + timeout
        while cluster.run("squeue", "-h", check=False).stdout.strip():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    for proc in reversed(cluster.processes):
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(cluster.processes):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    cluster.processes.clear()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = job_processes(cluster)
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while left and job_processes(cluster) and time.monotonic() < deadline:
            time.sleep(0.1)
