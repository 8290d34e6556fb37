#!/usr/bin/env bash
# Create or update .venv with everything the forecast needs, at the exact versions of the locks; safe to run
# again (it installs only what is missing or not the locked version).
#
#   bash setup_venv.sh          runtime dependencies (requirements.lock)
#   bash setup_venv.sh --test   plus the test dependencies (requirements-test.lock), the reference Kronos package
#                               (test-only) and the Debian packages the tests start (redis-server, chromium,
#                               chromium-driver)
#   bash setup_venv.sh --ray    plus Ray (requirements-ray.lock), for backtests on a cluster; --test includes it
#   bash setup_venv.sh --lock   refresh the three locks from requirements*.txt (the ranges we accept) with uv,
#                               for Linux x86-64 and Python 3.10 and newer; then rerun --test and commit the locks
#
# Environment:
#   PYTHON          interpreter that creates the venv (default: python3; 3.10 or newer)
#   TORCH_VARIANT   auto (default) | cpu | cu128. auto picks cu128 when nvidia-smi sees a GPU: an RTX 50xx
#                   (Blackwell, sm_120) needs a PyTorch built for CUDA 12.8 or newer.
#   TORCH_VERSION   the pinned PyTorch release (default 2.13.0); cu128 installs its +cu128 build
#   TORCH_SPEC      a pip requirement for torch instead (e.g. torch==2.9.1), for either variant
#   TORCH_INDEX_URL extra index holding the torch build (cu128 default: PyTorch's own cu128 wheel index; cpu: none,
#                   https://download.pytorch.org/whl/cpu gives a smaller CPU-only build)
set -euo pipefail
cd "$(dirname "$0")"

want_tests=0
want_ray=0
want_lock=0
for arg in "$@"; do
  case "$arg" in
    --test) want_tests=1; want_ray=1 ;;
    --ray) want_ray=1 ;;
    --lock) want_lock=1 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;  # the comment block at the top
    *) echo "setup_venv.sh: unknown argument '$arg' (use --test, --ray, --lock or --help)" >&2; exit 2 ;;
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

if [ "$want_lock" = 1 ]; then
  # uv resolves for every supported Python at once (--universal) and records each file's hash.
  pip_install uv==0.13.9
  compile() { "$py" -m uv pip compile --quiet --universal --python-version 3.10 --generate-hashes "$@"; }
  compile requirements.txt -o requirements.lock
  compile requirements-ray.txt -c requirements.lock -o requirements-ray.lock
  compile requirements-test.txt -c requirements.lock -c requirements-ray.lock -o requirements-test.lock
  echo "locks refreshed: review 'git diff requirements*.lock', run 'bash setup_venv.sh --test && .venv/bin/python -m pytest', commit"
  exit 0
fi

# The runtime lock without its hashes, as constraints for the torch step (pip refuses hashes in constraints):
# torch's own dependencies then install at the locked versions too.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
sed -e '/^ *--hash=/d' -e 's/ *\\$//' requirements.lock > "$constraints"
locked_install() { pip_install --require-hashes -r "$1"; }

variant=${TORCH_VARIANT:-auto}
if [ "$variant" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then variant=cu128; else variant=cpu; fi
fi
case "$variant" in
  cpu|cu128) ;;
  *) echo "setup_venv.sh: TORCH_VARIANT must be auto, cpu or cu128, not '$variant'" >&2; exit 2 ;;
esac

TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ "$variant" = cpu ]; then
  spec=${TORCH_SPEC:-torch==$TORCH_VERSION}
  index=${TORCH_INDEX_URL:-}
else
  spec=${TORCH_SPEC:-torch==$TORCH_VERSION+cu128}
  index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}
fi
# The build installed now, as "2.13.0+cpu", "2.13.0+cu128", ... or "none"; reinstall when it does not satisfy spec.
installed=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
if [ "$installed" = none ] || ! "$py" - "$spec" "$installed" "$variant" <<'PY'
import sys
from packaging.requirements import Requirement
from packaging.version import Version
spec, installed, variant = Requirement(sys.argv[1]), Version(sys.argv[2]), sys.argv[3]
cuda = installed.local is not None and installed.local.startswith("cu")
ok = spec.specifier.contains(installed, prereleases=True) or spec.specifier.contains(installed.public)
sys.exit(0 if ok and cuda == (variant != "cpu") else 1)
PY
then
  echo "installing PyTorch ($spec, $variant build)"
  pip_install -c "$constraints" "$spec" ${index:+--extra-index-url "$index"}
fi

locked_install requirements.lock
# Our own packages, editable: the scripts, tests and benchmarks import them from this checkout.
pip_install "setuptools>=68"
pip_install --no-deps --no-build-isolation -e .
if [ "$want_ray" = 1 ]; then
  locked_install requirements-ray.lock
fi
if [ "$want_tests" = 1 ]; then
  locked_install requirements-test.lock
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
