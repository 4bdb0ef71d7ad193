#!/bin/sh
# Install the Cortex-M0 toolchain and emulator used by tests/embedded (Debian/Ubuntu):
# gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm.  Never fails the build: when the
# tools cannot be installed it says why and exits 0 (the tests that need them then skip).
have() { command -v "$1" >/dev/null 2>&1; }
if have arm-none-eabi-gcc && have arm-none-eabi-size && have qemu-system-arm; then
    echo "install-embedded-tools: arm-none-eabi-gcc and qemu-system-arm already installed"
    exit 0
fi
if ! have apt-get; then
    echo "install-embedded-tools: no apt-get; install gcc-arm-none-eabi and qemu-system-arm by hand (M0 tests will skip)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if have sudo && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "install-embedded-tools: not root and no password-less sudo; skipping (M0 tests will skip)"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -q >/dev/null 2>&1 &&
   $SUDO apt-get install -y -q --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi \
       qemu-system-arm >/dev/null 2>&1; then
    echo "install-embedded-tools: installed gcc-arm-none-eabi, qemu-system-arm"
else
    echo "install-embedded-tools: apt-get failed (offline or packages unavailable); M0 tests will skip"
fi
exit 0
