"""What Ray's processes use, read from /proc (Linux): peak RSS and CPU seconds per process."""

from __future__ import annotations

import os
import threading
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int | str) -> float | None:
    """``VmHWM``: the process's peak RSS so far, so short peaks between samples count too."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:  # the process ended between listing and reading
        return None
    return None


def private_rss_mib(pid: int | str) -> float | None:
    """``RssAnon``: the process's own memory now, without the object store's shared pages it has mapped."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | str) -> float | None:
    """User + system CPU seconds the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def ray_processes() -> dict[int, str]:
    """pid -> Ray process title (``ray::RayTrainWorker...``) for this machine's Ray worker processes."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::"):
                out[int(entry.name)] = title
    return out


class RaySampler(threading.Thread):
    """Until stopped: every Ray process's largest peak RSS, last CPU seconds and last busy title."""

    def __init__(self, interval_s: float = 1.0):  # coarse: the sampler must not take the CPU it measures
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peaks: dict[int, float] = {}
        self.private_peaks: dict[int, float] = {}  # sampled, so a peak between samples can be missed
        self.cpu: dict[int, float] = {}
        self.titles: dict[int, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            for pid, title in ray_processes().items():
                mib, private, cpu = peak_rss_mib(pid), private_rss_mib(pid), cpu_seconds(pid)
                if mib is not None:
                    self.peaks[pid] = max(self.peaks.get(pid, 0.0), mib)
                if private is not None:
                    self.private_peaks[pid] = max(self.private_peaks.get(pid, 0.0), private)
                if cpu is not None:
                    self.cpu[pid] = cpu
                if not title.startswith("ray::IDLE") or pid not in self.titles:  # a worker is IDLE between jobs
                    self.titles[pid] = title

    def stop(self) -> None:
        self.done.set()
        self.join()

    def is_trainer(self, pid: int) -> bool:
        return "RayTrainWorker" in self.titles.get(pid, "")

    def cpu_by_title(self, before: dict[int, float]) -> dict[str, float]:
        """CPU seconds used since ``before`` (pid -> seconds), summed by process title."""
        out: dict[str, float] = {}
        for pid, cpu in self.cpu.items():
            title = self.titles[pid].split(".")[0].split("(")[0]  # ray::RayTrainWorker.run_train_fn -> ray::RayTrainWorker
            out[title] = out.get(title, 0.0) + cpu - before.get(pid, 0.0)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))
