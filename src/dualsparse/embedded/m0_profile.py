"""Instructions per inference of a Cortex-M0 image under qemu, their mix, and a Cortex-M0+ cycle
estimate from the mix.

Method: qemu logs the instructions of every translation block when it translates it
(``-d in_asm``) and, with block chaining off, every execution of a block (``-d exec,nochain``);
a block is straight-line code that ends at a branch, so an execution runs all its instructions
(nothing inside the inference raises an exception).  Executions from the entry of the empty
marker ``bench_begin`` up to the entry of ``bench_end`` belong to one inference (the count
includes the few instructions of the call itself).  Each address is mapped to its instruction
through ``arm-none-eabi-objdump -d``; a block's final conditional branch counts as taken when
the next block does not start right after it.  The traced image is a symbol-stripped copy
(qemu looks every block's symbol up otherwise).

Cycle table (:data:`M0PLUS_CYCLES`, Cortex-M0+ Technical Reference Manual, instruction set
summary; single-cycle multiplier; zero flash wait states): data processing, ``MULS``, moves,
compares, extends 1; ``LDR*``/``STR*`` 2; ``LDM``/``STM``/``PUSH``/``POP`` 1+N, ``POP`` with
``PC`` 3+N (N without ``PC``); ``B`` 2; ``B<cond>`` 2 taken, 1 not taken; ``BL`` 3;
``BX``/``BLX`` 2; ``ADD``/``MOV`` to ``PC`` 2; ``MRS``/``MSR``/barriers 3.  QEMU is not
cycle-accurate; this is an estimate of the same instruction stream on a real M0+ without bus
stalls, not a measurement.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np

from dualsparse.embedded.cortex_m0 import m0_tools, qemu_cmd, write_inputs
from dualsparse.embedded.emit import CModel

#: the cycle table used by :func:`classify`, per instruction class (N = registers in the list)
M0PLUS_CYCLES = {
    "alu": "1", "muls": "1", "load/store": "2", "push/pop/ldm/stm": "1+N", "pop pc": "3+N",
    "branch (uncond.)": "2", "branch (cond.)": "2 taken, 1 not taken", "bl": "3", "bx/blx": "2",
    "write pc": "2", "system": "3",
}
_FLASH_HALFWORDS = 256 * 1024 // 2
_OBJDUMP_RE = re.compile(r"^\s*([0-9a-f]+):\s+(?:[0-9a-f]{4} ?){1,2}\s+([a-z][a-z0-9.]*)\s*(.*)$")
_TRACE_RE = re.compile(rb"\[[0-9a-f]+/([0-9a-f]{8})/")
_COND = ("eq", "ne", "cs", "cc", "hs", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt",
         "gt", "le")


def _regs(ops: str) -> int:
    """Number of registers in a ``{r0, r4-r7, lr}`` list."""
    inner = ops[ops.find("{") + 1: ops.find("}")]
    n = 0
    for part in inner.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            n += int(b.strip()[1:]) - int(a.strip()[1:]) + 1
        elif part:
            n += 1
    return n


def classify(mnemonic: str, ops: str) -> tuple[str, int, bool]:
    """``(class, cycles when not a taken conditional branch, is_conditional_branch)``."""
    m = mnemonic.split(".")[0]
    if m in ("push", "pop", "ldmia", "stmia", "ldm", "stm"):
        n = _regs(ops)
        if m == "pop" and "pc" in ops:
            return "pop pc", 3 + n - 1, False  # N counts the low registers, not PC
        return "push/pop/ldm/stm", 1 + n, False
    if m.startswith(("ldr", "str")):
        return "load/store", 2, False
    if m == "bl":
        return "bl", 3, False
    if m in ("bx", "blx"):
        return "bx/blx", 2, False
    if m == "b":
        return "branch (uncond.)", 2, False
    if m.startswith("b") and m[1:] in _COND:
        return "branch (cond.)", 1, True
    if m in ("mrs", "msr", "dmb", "dsb", "isb"):
        return "system", 3, False
    if m in ("add", "mov") and ops.split(",")[0].strip() == "pc":
        return "write pc", 2, False
    if m == "muls":
        return "muls", 1, False
    return "alu", 1, False


def instruction_table(elf: str | os.PathLike) -> dict[int, tuple[str, int, bool]]:
    """``address -> classify(...)`` for every instruction of the ELF's code."""
    tools = m0_tools()
    if tools is None:
        raise FileNotFoundError("arm-none-eabi tools not found")
    objdump = tools["gcc"].replace("-gcc", "-objdump")
    out = subprocess.run([objdump, "-d", str(elf)], check=True, capture_output=True,
                         text=True).stdout
    table = {}
    for ln in out.splitlines():
        m = _OBJDUMP_RE.match(ln)
        if m and not m.group(2).startswith("."):
            table[int(m.group(1), 16)] = classify(m.group(2), m.group(3))
    return table


def _marker_addresses(elf: str | os.PathLike) -> tuple[int, int]:
    tools = m0_tools()
    assert tools is not None
    nm = subprocess.run([tools["nm"], str(elf)], check=True, capture_output=True, text=True).stdout
    addr = {}
    for ln in nm.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[2] in ("bench_begin", "bench_end"):
            addr[parts[2]] = int(parts[0], 16) & ~1
    if len(addr) != 2:
        raise RuntimeError(f"{elf}: marker symbols bench_begin/bench_end not found")
    return addr["bench_begin"], addr["bench_end"]


_HEX = np.full(256, 0, np.int64)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_POW16 = 16 ** np.arange(7, -1, -1, dtype=np.int64)


def _pcs(chunk: bytes) -> np.ndarray:
    found = _TRACE_RE.findall(chunk)
    if not found:
        return np.zeros(0, np.int64)
    digits = _HEX[np.frombuffer(b"".join(found), np.uint8).reshape(-1, 8)]
    return digits @ _POW16


_IN_RE = re.compile(rb"IN:[^\n]*\n((?:0x[0-9a-f]{8}:[^\n]*\n)+)")
_INSN_RE = re.compile(rb"^0x([0-9a-f]{8}):", re.M)


class _Counter:
    """Per-inference block execution counts and taken final conditional branches."""

    def __init__(self, begin: int, end: int, is_cond: np.ndarray) -> None:
        self.begin, self.end, self.is_cond = begin, end, is_cond
        self.blocks: dict[int, np.ndarray] = {}  # block start -> its instruction addresses
        self.last_cond = np.zeros(_FLASH_HALFWORDS, bool)  # block ends in a conditional branch
        self.fall = np.zeros(_FLASH_HALFWORDS, np.int64)  # address after the block
        self.inside = False
        self.hist = self.taken = np.zeros(0, np.int64)
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.carry = np.zeros(0, np.int64)

    def translated(self, chunk: bytes) -> None:
        for block in _IN_RE.findall(chunk):
            addrs = np.array([int(a, 16) for a in _INSN_RE.findall(block)], np.int64)
            start, last = int(addrs[0]), int(addrs[-1])
            self.blocks[start] = addrs
            self.last_cond[start >> 1] = self.is_cond[last >> 1]
            self.fall[start >> 1] = last + 2

    def feed(self, starts: np.ndarray) -> None:
        arr = np.concatenate([self.carry, starts])
        if len(arr) < 2:
            self.carry = arr
            return
        cur, nxt, self.carry = arr[:-1], arr[1:], arr[-1:]
        marks = np.flatnonzero((cur == self.begin) | (cur == self.end)).tolist()
        bounds = [0, *marks, len(cur)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if a in marks:
                if cur[a] == self.begin:
                    self.inside = True
                    self.hist = np.zeros(_FLASH_HALFWORDS, np.int64)
                    self.taken = np.zeros(_FLASH_HALFWORDS, np.int64)
                elif self.inside:
                    self.inside = False
                    self.calls.append((self._expand(self.hist), self.taken))
            if self.inside and b > a:
                c, n = cur[a:b], nxt[a:b]
                self.hist += np.bincount(c >> 1, minlength=_FLASH_HALFWORDS)
                t = self.last_cond[c >> 1] & (n != self.fall[c >> 1])
                self.taken += np.bincount(c[t] >> 1, minlength=_FLASH_HALFWORDS)

    def _expand(self, block_hist: np.ndarray) -> np.ndarray:
        """Block executions -> executions per instruction address (halfword index)."""
        hist = np.zeros(_FLASH_HALFWORDS, np.int64)
        for i in np.flatnonzero(block_hist).tolist():
            hist[self.blocks[2 * i] >> 1] += block_hist[i]
        return hist


def _stripped(elf: Path) -> Path:
    tools = m0_tools()
    assert tools is not None
    out = elf.with_name(elf.stem + "_stripped.elf")
    subprocess.run([tools["gcc"].replace("-gcc", "-objcopy"), "--strip-all", str(elf), str(out)],
                   check=True, capture_output=True)
    return out


def profile_m0(elf: str | os.PathLike, model: CModel, x_q: np.ndarray, timeout: float = 600
               ) -> list[dict]:
    """Run the image on ``x_q`` under the tracing qemu; one dict per inference: ``instructions``,
    ``cycles_m0plus`` (estimate, see the module docstring) and ``mix`` (instructions per class;
    ``branch (cond.) taken`` counts the taken ones among ``branch (cond.)``)."""
    elf = Path(elf)
    write_inputs(elf, model, x_q)
    begin, end = _marker_addresses(elf)
    table = instruction_table(elf)
    base = np.zeros(_FLASH_HALFWORDS, np.int64)
    is_cond = np.zeros(_FLASH_HALFWORDS, bool)
    cls = np.full(_FLASH_HALFWORDS, "", dtype=object)
    for a, (k, cyc, cond) in table.items():
        base[a >> 1], is_cond[a >> 1], cls[a >> 1] = cyc, cond, k
    counter = _Counter(begin, end, is_cond)
    cmd = [*qemu_cmd(_stripped(elf)), "-d", "in_asm,exec,nochain", "-D", "/dev/stdout"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            cwd=elf.parent)
    assert proc.stdout is not None
    rest = b""
    try:
        while True:
            chunk = proc.stdout.read(1 << 24)
            data = rest + chunk
            # cut before a Trace line: the in_asm lines of a block never straddle the cut
            cut = len(data) if not chunk else data.rfind(b"\nTrace ") + 1
            if cut > 0:
                counter.translated(data[:cut])
                counter.feed(_pcs(data[:cut]))
            rest = data[cut:]
            if not chunk:
                break
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = []
    for hist, taken in counter.calls:
        if (hist[base == 0] != 0).any():
            raise RuntimeError("executed an address that objdump does not list")
        mix: dict[str, int] = {}
        for k in set(cls[hist > 0].tolist()):
            mix[k] = int(hist[cls == k].sum())
        if "branch (cond.)" in mix:
            mix["branch (cond.) taken"] = int(taken.sum())
        cycles = int((hist * base).sum() + taken.sum())
        out.append({"instructions": int(hist.sum()), "cycles_m0plus": cycles, "mix": mix})
    return out


__all__ = ["M0PLUS_CYCLES", "classify", "instruction_table", "profile_m0"]
