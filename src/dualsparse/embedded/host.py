"""Host test harness for the emitted C: compile it with a C99 compiler and a stdin/stdout driver,
run it on Q15 inputs and parse what it prints (logits, states, class)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from string import Template

import numpy as np

from dualsparse.embedded.codegen import emit_c
from dualsparse.embedded.reference import DeployedEGRU

_HOST_MAIN = Template("""\
/* Host test driver: stdin = int32 B, int32 T, then B*T*${P}_INPUT int16 (little endian);
 * stdout = one line per sequence: logits then the states of all layers. */
#include <stdio.h>
#include <stdlib.h>
#include "${p}.h"

static int16_t buf[${P}_INPUT];

int main(void) {
    int32_t B, T, b, t, c, l, i;
    int32_t logits[${P}_CLASSES];
    if (fread(&B, 4, 1, stdin) != 1 || fread(&T, 4, 1, stdin) != 1) return 2;
    for (b = 0; b < B; ++b) {
        ${p}_reset();
        for (t = 0; t < T; ++t) {
            if (fread(buf, 2, ${P}_INPUT, stdin) != ${P}_INPUT) return 3;
            ${p}_step(buf);
        }
        ${p}_logits(logits);
        for (c = 0; c < ${P}_CLASSES; ++c) printf("%ld ", (long)logits[c]);
        for (l = 0; l < ${P}_NUM_LAYERS; ++l)
            for (i = 0; i < ${p}_state_size(l); ++i) printf("%d ", (int)${p}_state(l)[i]);
        printf("%d\\n", ${p}_argmax(logits));
    }
    return 0;
}
""")

HOST_CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2")


def build_host(model: DeployedEGRU, work_dir: str | os.PathLike, prefix: str = "egru",
               cc: str = "gcc") -> Path:
    """Emit the C, add the stdin/stdout driver and compile with ``cc -std=c99 -Wall -Werror``."""
    d = Path(work_dir)
    emit_c(model, d, prefix)
    (d / "host_main.c").write_text(_HOST_MAIN.substitute(p=prefix, P=prefix.upper()))
    exe = d / f"{prefix}_host"
    srcs = [str(d / "host_main.c"), str(d / f"{prefix}.c")]
    subprocess.run([cc, *HOST_CFLAGS, "-o", str(exe), *srcs], check=True, capture_output=True,
                   text=True)
    return exe


def parse_outputs(
    text: str, model: DeployedEGRU
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Parse driver lines -> ``(logits (B, C), [h per layer (B, H)], argmax (B,))``."""
    rows = [list(map(int, ln.split())) for ln in text.strip().splitlines() if ln.strip()]
    a = np.array(rows, dtype=np.int64).reshape(len(rows), -1)
    C = model.num_classes
    hs, off = [], C
    for L in model.layers:
        hs.append(a[:, off : off + L.hidden_size])
        off += L.hidden_size
    if a.shape[1] != off + 1:
        raise ValueError(f"unexpected driver output width {a.shape[1]} (expected {off + 1})")
    return a[:, :C], hs, a[:, off]


def run_host(exe: str | os.PathLike, model: DeployedEGRU, x_q: np.ndarray, timeout: float = 60
             ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Run a host driver on Q15 inputs ``(B, T, I)``."""
    x = np.asarray(x_q)
    if x.ndim != 3 or x.shape[2] != model.input_size:
        raise ValueError(f"x_q must be (B, T, {model.input_size}), got {x.shape}")
    payload = np.array(x.shape[:2], "<i4").tobytes() + x.astype("<i2").tobytes()
    r = subprocess.run([str(exe)], input=payload, capture_output=True, timeout=timeout, check=True)
    return parse_outputs(r.stdout.decode(), model)
