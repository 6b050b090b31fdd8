#!/usr/bin/env bash
# Download the wheels listed in benchmarks/gpu-wheels.txt into .whl/ (git-ignored), built for the GPU machine:
# CPython 3.12 on manylinux x86_64. Run it where pip can reach an index; benchmarks/device_check.sh installs
# them on the machine, which has no network (the device tool needs `.whl` in its carry list).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
rm -f .whl/*.whl  # one version of each package: two would stop the install
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest .whl --requirement benchmarks/gpu-wheels.txt
ls -l .whl
