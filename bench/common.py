"""Shared helpers of the aimetcli benchmarks: timing, peak memory, RESULTS.md sections.

* :func:`median_time` / :func:`repeat` time a function in this process
  (``time.perf_counter``), median of several repeats: other processes may share
  the machine's two cores, so single runs are not to be trusted.
* :func:`in_child` runs a module-level function in a fresh ``spawn`` process and
  returns its result with the child's peak resident set (``VmHWM`` of
  ``/proc/self/status``, read inside the child when the function asks for it
  with :func:`peak_rss`, else when it returns).
* :func:`run_process` runs a command (the ``aimetcli`` CLI) and returns its wall
  time and the peak RSS of exactly that child (``os.wait4``'s rusage).
* :func:`write_section` replaces one named section of bench/RESULTS.md, between
  ``<!-- name:start -->`` and ``<!-- name:end -->``, with a title, the date and
  machine, and the given markdown, so several scripts share the file.
"""

from __future__ import annotations

import datetime
import fcntl
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DATA = BENCH / "data"
RESULTS = BENCH / "RESULTS.md"
SAMPLE_MODELS = Path(os.environ.get("AIMETCLI_SAMPLE_MODELS", ROOT / "sample_models"))
MOBILENETV2 = DATA / "mobilenetv2_full.onnx"
PYTHON = sys.executable
AIMETCLI = str(Path(sys.executable).with_name("aimetcli"))

# Numbers measured with AIMET-ONNX 2.42 / onnxruntime on these machines
# (/work/shared/reference/aimet-facts.md): full-size MobileNetV2, 64 samples 224x224.
AIMET_REF = {
    "load_save": 0.048,
    "fp32_pass": 0.54,
    "fold": 0.71,
    "equalize": 1.69,
    "compute_encodings": 1.83,
    "ort_quantize_static": 4.69,
}

# Quick mode (BENCH_QUICK=1): fewer repeats, for checking that the scripts run.
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def repeats(normal: int) -> int:
    return 1 if QUICK else normal


# ---------------------------------------------------------------------------- timing
@dataclass
class Timing:
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        return (max(self.samples) - min(self.samples)) / self.median if self.median else 0.0


def median_time(fn: Callable[[], object], n: int = 5, warmup: int = 0) -> Timing:
    """Wall time of ``fn()`` (perf_counter), ``n`` repeats after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return Timing(out)


def repeat(fn: Callable[[], dict[str, float]], n: int) -> dict[str, Timing]:
    """``fn`` returns named durations (stages of one run); each name gets its samples."""
    acc: dict[str, list[float]] = {}
    for _ in range(n):
        for k, v in fn().items():
            acc.setdefault(k, []).append(v)
    return {k: Timing(v) for k, v in acc.items()}


# ---------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss() -> int:
    """This process's peak resident set so far, in bytes (VmHWM)."""
    return _status_kb("VmHWM") * 1024


def current_rss() -> int:
    return _status_kb("VmRSS") * 1024


def _child_main(conn, func, args, kwargs) -> None:
    try:
        result = func(*args, **kwargs)
        conn.send(("ok", result, peak_rss()))
    except BaseException:  # report, never hang the parent
        conn.send(("error", traceback.format_exc(), 0))
    finally:
        conn.close()


class ChildError(RuntimeError):
    pass


def in_child(func: Callable, *args, timeout: float = 900, **kwargs) -> tuple[object, int]:
    """``func(*args, **kwargs)`` in a fresh spawn process: (its result, the child's VmHWM at return).

    ``func`` must be importable (module level). A function that wants the peak of
    one part of its work returns it itself (read with :func:`peak_rss`).
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child, func, args, kwargs))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            proc.kill()
            raise ChildError(f"{func.__name__} took more than {timeout} s")
        status, payload, hwm = parent.recv()
    except EOFError as exc:
        raise ChildError(f"{func.__name__}: child died (exit code {proc.exitcode})") from exc
    finally:
        proc.join()
    if status != "ok":
        raise ChildError(f"{func.__name__} failed in the child:\n{payload}")
    return payload, hwm


@dataclass
class ProcessRun:
    seconds: float
    peak_rss: int
    returncode: int
    stderr: str = ""
    cpu_seconds: float = 0.0  # user + system time of the command and its children


# Runs the command and reports its wall time and peak RSS. A small wrapper process is needed:
# Linux carries the parent's RSS high-water mark across fork + exec into the child's ru_maxrss,
# so a child forked from a large benchmark process would report at least the parent's size.
_WRAPPER = """
import os, resource, subprocess, sys, time
t0 = time.perf_counter()
code = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL)
dt = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
os.write(int(sys.argv[1]), f"{dt} {ru.ru_maxrss} {code} {ru.ru_utime + ru.ru_stime}".encode())
"""


def require_import_from(tree: str | os.PathLike, cwd: str | os.PathLike, env: dict[str, str] | None = None) -> None:
    """Exit unless a Python started in ``cwd`` with ``env`` imports ``tree``'s aimetcli. A run that
    compares two trees through PYTHONPATH needs this: ``python -m`` and ``-c`` put the working
    directory first on sys.path, so started in a checkout's root every side imports that checkout."""
    where = subprocess.run([PYTHON, "-c", "import aimetcli; print(aimetcli.__file__)"], cwd=cwd, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(Path(tree).resolve()):
        raise SystemExit(f"aimetcli is imported from {where}, not from {tree}: PYTHONPATH does not win here")


def run_process(cmd: Sequence[str], *, cwd: str | os.PathLike | None = None, check: bool = True,
                env: dict[str, str] | None = None) -> ProcessRun:
    """Run ``cmd`` (in ``env``, default this process's); its wall time, CPU time, peak RSS (ru_maxrss,
    measured through a small wrapper) and stderr.

    A non-zero exit raises :class:`ChildError`, unless ``check`` is false.
    """
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([PYTHON, "-S", "-c", _WRAPPER, str(w), *map(str, cmd)], cwd=cwd, pass_fds=(w,),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        os.close(w)
        w = -1
        _, err = proc.communicate()
        report = os.read(r, 200).decode()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if proc.returncode != 0 or not report:
        raise ChildError(f"wrapper for {' '.join(map(str, cmd))} failed:\n{err.decode(errors='replace')[-2000:]}")
    seconds, maxrss_kb, code, cpu = report.split()
    if check and int(code) != 0:
        raise ChildError(f"{' '.join(map(str, cmd))} exited with {code}:\n{err.decode(errors='replace')[-2000:]}")
    return ProcessRun(float(seconds), int(maxrss_kb) * 1024, int(code), err.decode(errors="replace"), float(cpu))


def time_process(cmd: Sequence[str], n: int) -> tuple[Timing, int]:
    """Median wall time of ``n`` runs of ``cmd`` and the largest peak RSS seen."""
    runs = [run_process(cmd) for _ in range(n)]
    return Timing([r.seconds for r in runs]), max(r.peak_rss for r in runs)


# ---------------------------------------------------------------------------- models
def ensure_mobilenetv2() -> Path:
    """The full-size MobileNetV2 (BN unfolded), built by make_mobilenetv2.py when missing."""
    if not MOBILENETV2.exists():
        subprocess.run([PYTHON, str(BENCH / "make_mobilenetv2.py"), str(MOBILENETV2)], check=True,
                       stdout=subprocess.DEVNULL)
    return MOBILENETV2


def sample_models() -> list[Path]:
    """sample_models/*.onnx, when they have been built (``make sample-models``)."""
    return sorted(SAMPLE_MODELS.glob("*.onnx")) if SAMPLE_MODELS.is_dir() else []


def sample_calib() -> Path | None:
    p = SAMPLE_MODELS / "calib.npz"
    return p if p.exists() else None


def folded_copy(src: Path) -> Path:
    """``src`` with every BN folded by the current aimetcli (rebuilt on every call: the code changes)."""
    dest = DATA / f"{src.stem}_folded.onnx"
    from aimetcli import api, model_io

    model, _ = api.load(str(src))
    api.fold_bn(model)
    DATA.mkdir(parents=True, exist_ok=True)
    model_io.save_model(model, str(dest))
    return dest


def random_npy(name: str, shape: tuple[int, ...], seed: int) -> Path:
    """bench/data/<name>.npy: standard-normal float32 samples of ``shape`` from ``seed``, made once."""
    import numpy as np

    path = DATA / f"{name}.npy"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        np.save(path, np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))
    return path


def scratch_dir() -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="scratch-", dir=DATA))


# ---------------------------------------------------------------------------- reporting
def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 10:
        return f"{x:.1f} s"
    if x >= 0.1:
        return f"{x:.2f} s"
    return f"{x * 1000:.1f} ms" if x < 0.01 else f"{x:.3f} s"


def fmt_x(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}x" if x < 100 else f"{x:.0f}x"


def fmt_mb(nbytes: int | float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.0f} MB"


def verdict(value: float, limit: float) -> str:
    return "met" if value <= limit else "**missed**"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A markdown table; ``align`` one letter per column (l/r), default: first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(map(str, headers)) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "not installed"
    try:
        import onnx

        onnx_v = onnx.__version__
    except ImportError:
        onnx_v = "?"
    mem = ""
    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB RAM"
    except (ValueError, OSError):
        pass
    load = ", load average {:.1f}/{:.1f}/{:.1f} at the end".format(*os.getloadavg())
    return (f"{os.cpu_count()} x {cpu}{mem}; Python {platform.python_version()}, onnxruntime {ort}, "
            f"onnx {onnx_v}; aimetcli {revision()}{load}")


def revision() -> str:
    """The commit measured (read-only git), flagged when aimetcli/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "aimetcli"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(unknown revision)"
    if not head:
        return "(unknown revision)"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


HEADER = """# aimetcli benchmarks

Speed and memory of aimetcli's steps, measured by `make bench` (`bench/run_all.py`;
each `bench/bench_*.py` also runs alone and rewrites only its own section below).
Times are medians of several repeats (wall clock, `time.perf_counter`); peak memory
is the peak resident set (VmHWM / `wait4` ru_maxrss) of a fresh process doing one run.
AIMET reference numbers: `/work/shared/reference/aimet-facts.md` (same machines).
"""


def write_section(name: str, title: str, body: str, machine_info: str | None = None) -> None:
    """Replace section ``name`` of RESULTS.md (appended when absent) with ``title`` + date/machine + ``body``."""
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    info = machine_info or machine()
    block = (f"<!-- {name}:start -->\n## {title}\n\n_{stamp}; {info}{'; QUICK mode (1 repeat)' if QUICK else ''}._"
             f"\n\n{body.strip()}\n<!-- {name}:end -->")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a+") as f:  # the lock lets scripts run at the same time
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read() or HEADER
        pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        f.seek(0)
        f.truncate()
        f.write(text)
        fcntl.flock(f, fcntl.LOCK_UN)


def publish(name: str, title: str, body: str, print_only: bool) -> None:
    """Section ``name`` of RESULTS.md (:func:`write_section`), or printed with ``print_only``; then the time."""
    if print_only:
        print(body)
    else:
        write_section(name, title, body)
    log(f"done at {time.strftime('%H:%M UTC', time.gmtime())}")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)
