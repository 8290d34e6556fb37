#!/usr/bin/env bash
# Create or update .venv with everything the forecast needs; safe to run again (it only installs what is missing).
#
#   bash setup_venv.sh          runtime dependencies
#   bash setup_venv.sh --test   plus the test dependencies, the reference Kronos package (test-only) and the
#                               Debian packages the tests start (redis-server, chromium, chromium-driver)
#   bash setup_venv.sh --ray    plus Ray, for backtests on a cluster (backtest.py --ray); --test includes it
#
# Environment:
#   PYTHON          interpreter that creates the venv (default: python3; 3.10 or newer)
#   TORCH_VARIANT   auto (default) | cpu | cu128. auto picks cu128 when nvidia-smi sees a GPU: an RTX 50xx
#                   (Blackwell, sm_120) needs a PyTorch built for CUDA 12.8 or newer.
#   TORCH_SPEC      pip requirement for torch (default: torch==2.13.0 for cpu, torch>=2.7 for cu128)
#   TORCH_INDEX_URL index for the CUDA build (default: PyTorch's own cu128 wheel index)
set -euo pipefail
cd "$(dirname "$0")"

want_tests=0
want_ray=0
for arg in "$@"; do
  case "$arg" in
    --test) want_tests=1; want_ray=1 ;;
    --ray) want_ray=1 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;  # the comment block at the top
    *) echo "setup_venv.sh: unknown argument '$arg' (use --test, --ray or --help)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup_venv.sh: $PYTHON is missing or older than Python 3.10" >&2
  exit 2
fi

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
py=.venv/bin/python
pip_install() { "$py" -m pip install --quiet --disable-pip-version-check "$@"; }

variant=${TORCH_VARIANT:-auto}
if [ "$variant" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then variant=cu128; else variant=cpu; fi
fi
case "$variant" in
  cpu|cu128) ;;
  *) echo "setup_venv.sh: TORCH_VARIANT must be auto, cpu or cu128, not '$variant'" >&2; exit 2 ;;
esac

# Which build is installed now: "cpu", "cu12.8", ... or "none".
installed=$("$py" -c 'import torch; print("cu" + torch.version.cuda if torch.version.cuda else "cpu")' 2>/dev/null || echo none)
if [ "$variant" = cpu ]; then
  if [ "$installed" != cpu ]; then
    echo "installing PyTorch (CPU build)"
    pip_install "${TORCH_SPEC:-torch==2.13.0}"
  fi
else
  case "$installed" in
    cu12.8|cu12.9|cu13.*) ;;
    *)
      echo "installing PyTorch built for CUDA 12.8"
      pip_install --upgrade "${TORCH_SPEC:-torch>=2.7}" \
        --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}"
      ;;
  esac
fi

pip_install -r requirements.txt
# Our own packages, editable: the scripts, tests and benchmarks import them from this checkout.
pip_install "setuptools>=68"
pip_install --no-deps --no-build-isolation -e .
if [ "$want_ray" = 1 ]; then
  pip_install -r requirements-ray.txt
fi
if [ "$want_tests" = 1 ]; then
  pip_install -r requirements-test.txt
  # The upstream Kronos code is the test oracle only; its own pins are too strict, hence --no-deps.
  pip_install --no-deps kronos-model-arch==0.1.0 einops==0.8.2
  # Servers the tests start on 127.0.0.1: a real Redis, and a headless Chromium with its WebDriver (Debian).
  missing=()
  for pair in redis-server:redis-server chromium:chromium chromedriver:chromium-driver; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} (apt-get)"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

"$py" - <<'PY'
import torch
if torch.cuda.is_available():
    device = f"cuda ({torch.cuda.get_device_name(0)})"
elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
    device = "mps"
else:
    device = "cpu"
print(f"torch {torch.__version__} | CUDA {torch.version.cuda or 'none'} | device {device}")
PY
