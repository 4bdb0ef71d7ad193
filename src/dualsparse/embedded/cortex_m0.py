"""Cortex-M0 harness for the emitted C: a bare-metal microbit image (``qemu-system-arm -M
microbit``) that classifies any number of sequences read from a host file through semihosting,
its flash/RAM sizes, and (:mod:`dualsparse.embedded.m0_profile`) instructions per inference."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from string import Template

import numpy as np

from dualsparse.embedded.emit import CModel, emit_model, model_sources
from dualsparse.embedded.host import parse_outputs, write_value_bits_h
from dualsparse.embedded.reference import check_q15_input
from dualsparse.validation import check_choice, check_int

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
int sh_call(int op, void *arg) {
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
/* M0 test driver: reads the sequences from the host file inputs.bin through semihosting
 * (int32 B, int32 T, then B*T*${P}_INPUT int16), classifies each between two marker calls and
 * prints logits, states and class (as int32; floats as their bit patterns). */
#include <stdint.h>
#include "${p}.h"
#include "value_bits.h"
int sh_call(int op, void *arg);
void sh_puts(const char *s);
static int16_t xbuf[${max_t} * ${P}_INPUT];
static char line[16 * (${P}_CLASSES + 200)];
static char *put_int(char *o, int32_t v) {
    char tmp[12]; int n = 0; uint32_t u = (v < 0) ? 0u - (uint32_t)v : (uint32_t)v;
    if (v < 0) *o++ = '-';
    do { tmp[n++] = (char)('0' + u % 10u); u /= 10u; } while (u);
    while (n) *o++ = tmp[--n];
    *o++ = ' ';
    return o;
}
static int sh_read(int fd, void *buf, uint32_t n) {
    uint32_t blk[3]; blk[0] = (uint32_t)fd; blk[1] = (uint32_t)buf; blk[2] = n;
    return sh_call(0x06, blk);  /* SYS_READ: bytes not read */
}
__attribute__((noinline)) void bench_begin(void) { __asm__ volatile(""); }
__attribute__((noinline)) void bench_end(void) { __asm__ volatile(""); }
int main(void) {
    static const char name[] = "inputs.bin";
    uint32_t blk[3];
    int32_t hdr[2];
    int fd, s, c, l, i, k;
    ${p}_logit_t logits[${P}_CLASSES];
    blk[0] = (uint32_t)name; blk[1] = 1u; blk[2] = sizeof(name) - 1u;  /* mode 1 = "rb" */
    fd = sh_call(0x01, blk);
    if (fd < 0) { sh_puts("ERROR open\\n"); return 3; }
    if (sh_read(fd, hdr, 8u) != 0 || hdr[1] < 0 || hdr[1] > ${max_t}) {
        sh_puts("ERROR header\\n"); return 4; }
    for (s = 0; s < hdr[0]; ++s) {
        char *o = line;
        if (sh_read(fd, xbuf, (uint32_t)hdr[1] * ${P}_INPUT * 2u) != 0) {
            sh_puts("ERROR read\\n"); return 5; }
        bench_begin();
        k = ${p}_classify(xbuf, hdr[1], logits);
        bench_end();
        for (c = 0; c < ${P}_CLASSES; ++c) o = put_int(o, value_bits(logits[c]));
        for (l = 0; l < ${P}_NUM_LAYERS; ++l)
            for (i = 0; i < ${p}_state_size(l); ++i) o = put_int(o, value_bits(${p}_state(l)[i]));
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


RAM_BYTES = 16 * 1024
#: RAM kept free for the stack, the driver's line buffer and the model's own RAM
_RAM_RESERVE = 4 * 1024


def build_m0(model: CModel, work_dir: str | os.PathLike, prefix: str = "egru",
             with_model: bool = True, opt: str = "-Os", max_t: int = 64) -> Path:
    """Cross-compile a bare-metal microbit ELF that classifies sequences of up to ``max_t``
    frames, read at run time from ``inputs.bin`` next to the ELF (see :func:`run_m0`).

    ``with_model=False`` builds the same driver without inference (stubs that read the inputs and
    return zeros) so that the model's own flash/RAM can be measured as a difference.  ``opt`` is
    the gcc optimisation flag (``-Os`` default, ``-O2`` is faster and slightly larger).  The
    float GRU links newlib's ``libm``/``libc`` for ``expf``/``tanhf``.
    """
    check_choice("opt", opt, ("-Os", "-O0", "-O1", "-O2", "-O3"))
    max_t = check_int("max_t", max_t, low=1)
    if 2 * max_t * model.input_size > RAM_BYTES - _RAM_RESERVE:
        raise ValueError(f"max_t={max_t}: an input buffer of {2 * max_t * model.input_size} B "
                         f"does not fit the {RAM_BYTES} B RAM")
    tools = m0_tools()
    if tools is None:
        raise FileNotFoundError("arm-none-eabi-gcc / qemu-system-arm not found "
                                "(run scripts/install-embedded-tools.sh)")
    d = Path(work_dir)
    emit_model(model, d, prefix)
    write_value_bits_h(d, prefix)
    (d / "startup.c").write_text(_M0_STARTUP)
    (d / "m0.ld").write_text(_M0_LD)
    P = prefix.upper()
    main = _M0_MAIN.substitute(p=prefix, P=P, max_t=max_t)
    srcs = [d / "startup.c", d / "m0_main.c"]
    if with_model:
        srcs += model_sources(d, prefix)
    else:  # stubs with the same API, to measure the driver alone
        main = main.replace(f'#include "{prefix}.h"', f'#include "{prefix}.h"\n'
                            f"int {prefix}_classify(const int16_t *x, int T, "
                            f"{prefix}_logit_t o[{P}_CLASSES]) "
                            "{ int c; volatile int32_t sink = 0; long i; "
                            f"for (i = 0; i < (long)T * {P}_INPUT; ++i) sink += x[i]; "
                            f"for (c = 0; c < {P}_CLASSES; ++c) o[c] = 0; "
                            "return 0; }\n"
                            f"const {prefix}_state_t *{prefix}_state(int l) "
                            "{ (void)l; return 0; }\n"
                            f"int {prefix}_state_size(int l) {{ (void)l; return 0; }}\n")
    (d / "m0_main.c").write_text(main)
    elf = d / f"{prefix}_m0{'' if with_model else '_empty'}.elf"
    cmd = [tools["gcc"], *M0_CFLAGS, opt, f"-I{d}", "-nostdlib", "-Wl,--gc-sections",
           f"-T{d / 'm0.ld'}", "-o", str(elf), *map(str, srcs),
           "-Wl,--start-group", "-lm", "-lc", "-lgcc", "-Wl,--end-group"]
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


def qemu_cmd(elf: str | os.PathLike) -> list[str]:
    """The qemu command line that runs an image (semihosting on, no serial, no monitor)."""
    tools = m0_tools()
    if tools is None:
        raise FileNotFoundError("qemu-system-arm not found")
    return [tools["qemu"], "-M", "microbit", "-kernel", str(Path(elf).resolve()), "-nographic",
            "-monitor", "none", "-serial", "none", "-semihosting-config",
            "enable=on,target=native"]


def write_inputs(elf: str | os.PathLike, model: CModel, x_q: np.ndarray) -> Path:
    """Write Q15 sequences ``(B, T, I)`` to ``inputs.bin`` next to ``elf`` (the image reads it)."""
    x = check_q15_input(x_q, model.input_size)
    path = Path(elf).parent / "inputs.bin"
    path.write_bytes(np.array(x.shape[:2], "<i4").tobytes() + x.astype("<i2").tobytes())
    return path


def run_m0(elf: str | os.PathLike, model: CModel, x_q: np.ndarray, timeout: float = 120
           ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Run an image from :func:`build_m0` on ``x_q`` under qemu; parse its semihosting output
    (``(logits, [states per layer], classes)`` as :func:`~dualsparse.embedded.host.run_host`)."""
    write_inputs(elf, model, x_q)
    r = subprocess.run(qemu_cmd(elf), capture_output=True, timeout=timeout, text=True,
                       cwd=Path(elf).parent)
    lines = (r.stdout + r.stderr).splitlines()  # semihosting writes to stderr
    if "DONE" not in lines:
        raise RuntimeError(f"M0 run did not finish (rc {r.returncode}): {r.stdout[-500:]}"
                           f"{r.stderr[-500:]}")
    body = [ln for ln in lines if ln and ln[0] in "-0123456789"]
    return parse_outputs("\n".join(body), model)


__all__ = ["M0_CFLAGS", "RAM_BYTES", "build_m0", "m0_size", "m0_tools", "qemu_cmd", "run_m0",
           "symbol_sizes", "write_inputs"]
