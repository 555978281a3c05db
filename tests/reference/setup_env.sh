#!/usr/bin/env bash
# Creates the reference environment: PyPI chatterbox-tts 0.1.7 and its torch, in a venv of its own.
# Its transformers pin conflicts with mlx-lm, so it never shares an env with nightingale_mlx.
# Usage: tests/reference/setup_env.sh [ENV_DIR]   (default: $NIGHTINGALE_REF_ENV or ~/.cache/nightingale/ref-env)
set -euo pipefail
env_dir="${1:-${NIGHTINGALE_REF_ENV:-$HOME/.cache/nightingale/ref-env}}"
python="${PYTHON:-python3}"
if [ ! -x "$env_dir/bin/python" ]; then
    "$python" -m venv "$env_dir"
fi
"$env_dir/bin/python" -m pip install -q --upgrade pip
# numpy<2 and the exact torch/transformers pins come from chatterbox-tts itself.
"$env_dir/bin/python" -m pip install -q "chatterbox-tts==0.1.7"
"$env_dir/bin/python" -c "import chatterbox, torch; print('reference env ready:', torch.__version__)"
echo "export NIGHTINGALE_REF_PYTHON=$env_dir/bin/python"
