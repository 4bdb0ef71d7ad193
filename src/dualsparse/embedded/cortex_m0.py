"""Cortex-M0 harness for the emitted C: a bare-metal microbit image (``qemu-system-arm -M
microbit``) that classifies test sequences, its flash/RAM sizes and instruction counts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from string import Template

import numpy as np

from dualsparse.embedded.codegen import emit_c
from dualsparse.embedded.host import parse_outputs
from dualsparse.embedded.reference import DeployedEGRU
from dualsparse.validation import check_choice

_M0_STARTUP = """\
/* Minimal Cortex-M0 start-up for qemu -M microbit (nRF51: flash 0x0, 16 KiB RAM at 0x20000000). */
#include <stdint.h>
extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void sh_exit(int code);
void *memset(void *d, int c, unsigned long n) {
    unsigned char *p = d; while (n--) *p++ = (unsigned char)c; return d; }
void *memcpy(void *d, const void *s, unsigned long n) {
    unsigned char *p = d; const unsigned char *q = s; while (n--) *p++ = *q++; return d; }
void Reset_Handler(void) {
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss; ) *dst++ = 0;
    sh_exit(main());
}
void Default_Handler(void) { sh_exit(99); }
__attribute__((section(".vectors"), used)) void (*const vectors[16])(void) = {
    (void (*)(void))&_estack, Reset_Handler, Default_Handler, Default_Handler,
    0, 0, 0, 0, 0, 0, 0, Default_Handler, 0, 0, Default_Handler, Default_Handler };
static int sh_call(int op, void *arg) {
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}
void sh_puts(const char *s) { sh_call(0x04, (void *)s); }
void sh_exit(int code) {
    (void)code;
    sh_call(0x18, (void *)0x20026); /* ADP_Stopped_ApplicationExit */
    for (;;) {}
}
"""

_M0_LD = """\
MEMORY { FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 256K
         RAM (rwx)  : ORIGIN = 0x20000000, LENGTH = 16K }
_estack = ORIGIN(RAM) + LENGTH(RAM);
SECTIONS {
  .text : { KEEP(*(.vectors)) *(.text*) *(.rodata*) . = ALIGN(4); } > FLASH
  _sidata = LOADADDR(.data);
  .data : { _sdata = .; *(.data*) . = ALIGN(4); _edata = .; } > RAM AT > FLASH
  .bss (NOLOAD) : { _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; } > RAM
}
"""

_M0_MAIN = Template("""\
/* M0 test driver: runs the embedded test sequences, prints logits, states and class. */
#include <stdint.h>
#include "${p}.h"
#include "test_vectors.h"
void sh_puts(const char *s);
static char line[16 * (${P}_CLASSES + 200)];
static char *put_int(char *o, int32_t v) {
    char tmp[12]; int n = 0; uint32_t u = (v < 0) ? 0u - (uint32_t)v : (uint32_t)v;
    if (v < 0) *o++ = '-';
    do { tmp[n++] = (char)('0' + u % 10u); u /= 10u; } while (u);
    while (n) *o++ = tmp[--n];
    *o++ = ' ';
    return o;
}
__attribute__((noinline)) void bench_begin(void) { __asm__ volatile(""); }
__attribute__((noinline)) void bench_end(void) { __asm__ volatile(""); }
int main(void) {
    int s, c, l, i, k;
    int32_t logits[${P}_CLASSES];
    for (s = 0; s < TV_NSEQ; ++s) {
        char *o = line;
        bench_begin();
        k = ${p}_classify(tv_x[s], TV_T, logits);
        bench_end();
        for (c = 0; c < ${P}_CLASSES; ++c) o = put_int(o, logits[c]);
        for (l = 0; l < ${P}_NUM_LAYERS; ++l)
            for (i = 0; i < ${p}_state_size(l); ++i) o = put_int(o, ${p}_state(l)[i]);
        o = put_int(o, k);
        o[-1] = '\\n'; *o = 0;
        sh_puts(line);
    }
    sh_puts("DONE\\n");
    return 0;
}
""")

M0_CFLAGS = ("-mcpu=cortex-m0", "-mthumb", "-std=c99", "-Wall", "-Werror",
             "-ffreestanding", "-ffunction-sections", "-fdata-sections")


def m0_tools() -> dict[str, str] | None:
    """Paths of ``arm-none-eabi-gcc``, ``arm-none-eabi-size``, ``qemu-system-arm`` (or None)."""
    names = {"gcc": "arm-none-eabi-gcc", "size": "arm-none-eabi-size",
             "nm": "arm-none-eabi-nm", "qemu": "qemu-system-arm"}
    found = {k: shutil.which(v) for k, v in names.items()}
    return None if None in found.values() else found  # type: ignore[return-value]


def build_m0(model: DeployedEGRU, x_q: np.ndarray, work_dir: str | os.PathLike,
             prefix: str = "egru", with_model: bool = True, opt: str = "-Os") -> Path:
    """Cross-compile a bare-metal microbit ELF that classifies the sequences ``x_q (B, T, I)``.

    ``with_model=False`` builds the same driver without inference (stubs that read the inputs and
    return zeros) so that the model's own flash/RAM can be measured as a difference.  ``opt`` is
    the gcc optimisation flag (``-Os`` default, ``-O2`` is faster and slightly larger).
    """
    check_choice("opt", opt, ("-Os", "-O0", "-O1", "-O2", "-O3"))
    tools = m0_tools()
    if tools is None:
        raise FileNotFoundError("arm-none-eabi-gcc / qemu-system-arm not found "
                                "(run scripts/install-embedded-tools.sh)")
    x = np.asarray(x_q)
    if x.ndim != 3 or x.shape[2] != model.input_size:
        raise ValueError(f"x_q must be (B, T, {model.input_size}), got {x.shape}")
    d = Path(work_dir)
    emit_c(model, d, prefix)
    B, T, I = x.shape
    tv = [f"#define TV_NSEQ {B}\n#define TV_T {T}\n",
          f"static const int16_t tv_x[{B}][{T * I}] = {{\n"]
    for b in range(B):
        tv.append("  {" + ",".join(str(int(v)) for v in x[b].ravel()) + "},\n")
    tv.append("};\n")
    (d / "test_vectors.h").write_text("".join(tv))
    (d / "startup.c").write_text(_M0_STARTUP)
    (d / "m0.ld").write_text(_M0_LD)
    main = _M0_MAIN.substitute(p=prefix, P=prefix.upper())
    srcs = [d / "startup.c", d / "m0_main.c"]
    if with_model:
        srcs.append(d / f"{prefix}.c")
    else:  # stubs with the same API, to measure the driver alone
        main = main.replace(f'#include "{prefix}.h"', f'#include "{prefix}.h"\n'
                            f"int {prefix}_classify(const int16_t *x, int T, "
                            f"int32_t o[{prefix.upper()}_CLASSES]) "
                            "{ int c; volatile int32_t sink = 0; long i; "
                            f"for (i = 0; i < (long)T * {prefix.upper()}_INPUT; ++i) sink += x[i]; "
                            f"for (c = 0; c < {prefix.upper()}_CLASSES; ++c) o[c] = 0; "
                            "return 0; }\n"
                            f"const int16_t *{prefix}_state(int l) {{ (void)l; return 0; }}\n"
                            f"int {prefix}_state_size(int l) {{ (void)l; return 0; }}\n")
    (d / "m0_main.c").write_text(main)
    elf = d / f"{prefix}_m0{'' if with_model else '_empty'}.elf"
    cmd = [tools["gcc"], *M0_CFLAGS, opt, f"-I{d}", "-nostdlib", "-Wl,--gc-sections",
           f"-T{d / 'm0.ld'}", "-o", str(elf), *map(str, srcs), "-lgcc"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"arm-none-eabi-gcc failed:\n{r.stderr[-3000:]}")
    return elf


def m0_size(elf: str | os.PathLike) -> dict[str, int]:
    """``arm-none-eabi-size`` of an ELF: text, data, bss; flash = text + data, ram = data + bss."""
    tools = m0_tools()
    if tools is None:
        raise FileNotFoundError("arm-none-eabi-size not found")
    out = subprocess.run([tools["size"], str(elf)], check=True, capture_output=True, text=True)
    text, data, bss = map(int, out.stdout.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "ram": data + bss}


def symbol_sizes(elf: str | os.PathLike, prefix: str = "egru") -> dict[str, int]:
    """Sizes in bytes of the ELF's symbols starting with ``prefix`` (from ``nm -S``)."""
    tools = m0_tools()
    if tools is None:
        raise FileNotFoundError("arm-none-eabi-nm not found")
    out = subprocess.run([tools["nm"], "-S", "--size-sort", str(elf)], check=True,
                         capture_output=True, text=True).stdout
    res = {}
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) == 4 and parts[3].startswith(prefix):
            res[parts[3]] = int(parts[1], 16)
    return res


def _qemu_cmd(elf: Path) -> list[str]:
    tools = m0_tools()
    assert tools is not None
    return [tools["qemu"], "-M", "microbit", "-kernel", str(elf), "-nographic", "-monitor", "none",
            "-serial", "none", "-semihosting-config", "enable=on,target=native"]


def run_m0(elf: str | os.PathLike, model: DeployedEGRU, timeout: float = 120
           ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Run an image from :func:`build_m0` under qemu; parse the semihosting output."""
    r = subprocess.run(_qemu_cmd(Path(elf)), capture_output=True, timeout=timeout, text=True)
    lines = (r.stdout + r.stderr).splitlines()  # semihosting writes to stderr
    if "DONE" not in lines:
        raise RuntimeError(f"M0 run did not finish (rc {r.returncode}): {r.stdout[-500:]}"
                           f"{r.stderr[-500:]}")
    return parse_outputs("\n".join(ln for ln in lines if ln != "DONE"), model)


def count_instructions_m0(elf: str | os.PathLike, timeout: float = 600) -> list[int]:
    """Instructions executed per call of ``p_classify`` in an image from :func:`build_m0`.

    Method: qemu runs one instruction per translation block (``-singlestep``) with block chaining
    off and logs every executed block (``-d exec,nochain``); the log lines between the entries
    of the empty marker functions ``bench_begin`` and ``bench_end`` are counted (this includes
    the few instructions of the call itself and of ``bench_begin``).
    """
    tools = m0_tools()
    if tools is None:
        raise FileNotFoundError("qemu-system-arm / arm-none-eabi-nm not found")
    nm = subprocess.run([tools["nm"], str(elf)], check=True, capture_output=True, text=True).stdout
    addr = {}
    for ln in nm.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[2] in ("bench_begin", "bench_end"):
            addr[parts[2]] = int(parts[0], 16) & ~1
    if len(addr) != 2:
        raise RuntimeError("marker symbols not found in the ELF")
    cmd = [*_qemu_cmd(Path(elf)), "-singlestep", "-d", "exec,nochain", "-D", "/dev/stderr"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pat = re.compile(r"Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")
    counts: list[int] = []
    n, inside = 0, False
    assert proc.stderr is not None
    try:
        for ln in proc.stderr:
            m = pat.search(ln)
            if not m:
                continue
            pc = int(m.group(1), 16)
            if pc == addr["bench_begin"]:
                n, inside = 0, True
            elif pc == addr["bench_end"] and inside:
                counts.append(n)
                inside = False
            n += 1
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return counts
