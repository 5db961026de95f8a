# Source on the GPU machine: installs the carried wheels (.whl/, made here by scripts/gpu-wheels.sh)
# into /tmp/site and sets PYTHONPATH.
# Usage there: source scripts/gpu-env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
