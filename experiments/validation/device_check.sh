#!/usr/bin/env bash
# The one prepared GPU check (issue 16, part 3), for a session lent a device machine (`run` of the device tool):
# moe-calibrate, moe-validate --runtime cuda (LRU at 8, 16 and 32 slots per layer, on the shipped trace and the
# DeepSeek-V2-Lite prompt 1351) and the CUDA tests, well under 8 minutes. Everything it writes goes to $OUT.
#
# The device image has torch, numpy, pandas, pyarrow, numba, seaborn, pytest and hypothesis, but not simpy,
# hydra-core, omegaconf or pydantic: carry them as wheels in .whl (/work/.library/device/README.md, "nvidia-h200"):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     simpy hydra-core omegaconf antlr4-python3-runtime==4.9.3 pydantic pydantic-core annotated-types \
#     typing-inspection hydra-joblib-launcher hydra-submitit-launcher submitit
# and import the DeepSeek prompt here first (../shared does not travel):
#   mkdir -p .whl/traces && moe-trace import --format moe-beyond \
#     ../shared/traces/real/deepseek_v2_lite_moebeyond_prompt_1351_data.csv -o .whl/traces/ds1351.parquet
# Then: run(command="bash experiments/validation/device_check.sh", carry=[".whl"], timeout_s=540).
set -uo pipefail
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv | tee "$OUT/gpu.txt"
start=$(date +%s)
timeout 120 python3 -m hardware_profiles.calibration.calibrate --out "$OUT/calibrated.yaml" 2>&1 | tee "$OUT/calibrate.log"
echo "calibrate: $(( $(date +%s) - start )) s"
traces=(--trace traces/data/default.parquet)
[ -f .whl/traces/ds1351.parquet ] && traces+=(--trace .whl/traces/ds1351.parquet)
# capacities 8, 16 and 32 are the default
timeout 300 python3 -m experiments.validation.validate --runtime cuda --json "$OUT/validate.json" "${traces[@]}" \
  --repeats 3 --store /tmp/experts 2>&1 | tee "$OUT/validate.log"
echo "validate: $(( $(date +%s) - start )) s"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_validate.py tests/test_calibrate.py 2>&1 | tail -5 | tee "$OUT/tests.log"
echo "total: $(( $(date +%s) - start )) s"
