"""Compare a trained eGRU and a trained GRU on the same Cortex-M0 image setup (qemu microbit):
the whole test split on the M0 for the 3-bit eGRU and the int8 GRU (bit-exact against their
integer references), a seeded sample for the soft-float GRU, flash/RAM, instructions per
inference and a Cortex-M0+ cycle estimate.  See :mod:`dualsparse.apps.kws.m0_report`.

Usage: python examples/kws_m0.py --egru RUN --gru RUN --out docs/results/kws/m0_random_s0.json
"""

from dualsparse.apps.kws.m0_report import main

if __name__ == "__main__":
    main()
