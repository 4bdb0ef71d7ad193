"""Host test harness for the emitted C: compile it with a C99 compiler and a stdin/stdout driver,
run it on Q15 inputs and parse what it prints (logits, states, class)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from string import Template

import numpy as np

from dualsparse.embedded.emit import CModel, emit_model, model_sources
from dualsparse.embedded.reference import check_q15_input

_HOST_MAIN = Template("""\
/* Host test driver: stdin = int32 B, int32 T, then B*T*${P}_INPUT int16 (little endian);
 * stdout = one line per sequence: logits then the states of all layers. */
#include <stdio.h>
#include <stdlib.h>
#include "${p}.h"
#include "value_bits.h"

static int16_t buf[${P}_INPUT];

int main(void) {
    int32_t B, T, b, t, c, l, i;
    ${p}_logit_t logits[${P}_CLASSES];
    if (fread(&B, 4, 1, stdin) != 1 || fread(&T, 4, 1, stdin) != 1) return 2;
    for (b = 0; b < B; ++b) {
        ${p}_reset();
        for (t = 0; t < T; ++t) {
            if (fread(buf, 2, ${P}_INPUT, stdin) != ${P}_INPUT) return 3;
            ${p}_step(buf);
        }
        ${p}_logits(logits);
        for (c = 0; c < ${P}_CLASSES; ++c) printf("%ld ", (long)value_bits(logits[c]));
        for (l = 0; l < ${P}_NUM_LAYERS; ++l)
            for (i = 0; i < ${p}_state_size(l); ++i)
                printf("%ld ", (long)value_bits(${p}_state(l)[i]));
        printf("%d\\n", ${p}_argmax(logits));
    }
    return 0;
}
""")

_VALUE_BITS_H = Template("""\
/* value_bits(v): a logit or state as int32 for printing (float: its IEEE-754 bit pattern). */
#include <stdint.h>
#if ${P}_IS_FLOAT
static int32_t value_bits(float v) { union { float f; int32_t i; } u; u.f = v; return u.i; }
#else
static int32_t value_bits(int32_t v) { return v; }
#endif
""")


def write_value_bits_h(work_dir: str | os.PathLike, prefix: str) -> Path:
    """Write the drivers' ``value_bits.h`` for a model emitted under ``prefix``."""
    path = Path(work_dir) / "value_bits.h"
    path.write_text(_VALUE_BITS_H.substitute(P=prefix.upper()))
    return path


HOST_CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2")


def build_host(model: CModel, work_dir: str | os.PathLike, prefix: str = "egru",
               cc: str = "gcc") -> Path:
    """Emit the C, add the stdin/stdout driver and compile with ``cc -std=c99 -Wall -Werror``
    (``-lm`` for the float GRU)."""
    d = Path(work_dir)
    emit_model(model, d, prefix)
    write_value_bits_h(d, prefix)
    (d / "host_main.c").write_text(_HOST_MAIN.substitute(p=prefix, P=prefix.upper()))
    exe = d / f"{prefix}_host"
    srcs = [str(d / "host_main.c"), *map(str, model_sources(d, prefix))]
    r = subprocess.run([cc, *HOST_CFLAGS, "-o", str(exe), *srcs, "-lm"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{cc} failed:\n{r.stderr[-3000:]}")
    return exe


def parse_outputs(
    text: str, model: CModel
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Parse driver lines -> ``(logits (B, C), [h per layer (B, H)], argmax (B,))`` (int64, or
    float32 for a float model)."""
    rows = [list(map(int, ln.split())) for ln in text.strip().splitlines() if ln.strip()]
    a = np.array(rows, dtype=np.int64).reshape(len(rows), -1)
    if getattr(model, "is_float", False):
        cls = a[:, -1:]
        a = a.astype(np.int32).view(np.float32)
        return _split(a, model, cls[:, 0])
    return _split(a, model, a[:, -1])


def _split(a: np.ndarray, model: CModel, cls: np.ndarray
           ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    C = model.num_classes
    hs, off = [], C
    for L in model.layers:
        hs.append(a[:, off : off + L.hidden_size])
        off += L.hidden_size
    if a.shape[1] != off + 1:
        raise ValueError(f"unexpected driver output width {a.shape[1]} (expected {off + 1})")
    return a[:, :C], hs, cls


def run_host(exe: str | os.PathLike, model: CModel, x_q: np.ndarray, timeout: float = 60
             ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Run a host driver on Q15 inputs ``(B, T, I)`` (integers that fit int16, checked like
    :meth:`DeployedEGRU.run`: nothing is wrapped or truncated on the way to the C)."""
    x = check_q15_input(x_q, model.input_size)
    payload = np.array(x.shape[:2], "<i4").tobytes() + x.astype("<i2").tobytes()
    r = subprocess.run([str(exe)], input=payload, capture_output=True, timeout=timeout, check=True)
    return parse_outputs(r.stdout.decode(), model)
