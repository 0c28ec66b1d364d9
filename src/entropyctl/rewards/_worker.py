"""Math-verification worker: a separate OS process that owns all SymPy work.

Runs as ``python -m entropyctl.rewards._worker`` or from its own source with ``python -c`` (how
:mod:`entropyctl.rewards.math` starts it, so the worker never imports the rest of entropyctl).
It reads one JSON request per line on stdin, ``{"pred": str, "gold": str}``, and writes one JSON reply
per line on stdout, ``{"status": "correct"|"wrong"|"parse_error", "detail": str}``.

The hard timeout is NOT enforced here: the parent kills this process when a reply is late. That is
the only mechanism that works from any thread of any process; math-verify's own timeout uses
``signal.alarm``, which raises off the main thread, so it is disabled (``timeout=None``) here.
This module imports nothing from entropyctl on purpose: keep it standalone.
"""

import json
import logging
import os
import sys
import threading
import time


def _limit_memory() -> None:
    # A pathological expression can allocate without bound before the parent's timeout fires;
    # an address-space cap turns that into a MemoryError (reported as parse_error) instead of
    # swapping the machine. ENTROPYCTL_REWARD_WORKER_MEM_MB=0 disables it.
    mb = int(os.environ.get("ENTROPYCTL_REWARD_WORKER_MEM_MB", "2048"))
    if mb <= 0:
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    except (ImportError, ValueError, OSError):
        pass


def _watch_parent(parent_pid: int) -> None:
    # Exit when the parent is gone (reparented), even while a computation is running.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _wrap(text: str) -> str:
    # Inside \boxed{...} math-verify reads the text as LaTeX; plain forms (1/2, 0.5, x^2) parse too.
    return text if "\\boxed" in text else "\\boxed{" + text + "}"


def main() -> None:
    if "" in sys.path:
        sys.path.remove("")
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    # Anything a library prints goes to stderr, never into the reply channel.
    sys.stdout = sys.stderr
    _limit_memory()
    parent_pid = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    logging.disable(logging.CRITICAL)
    import warnings

    warnings.filterwarnings("ignore")
    from math_verify import parse, verify

    # The first comparison fills parser caches (~0.3 s): pay it before reporting ready, not on an
    # answer's timeout.
    verify(
        parse("\\boxed{\\frac{1}{2}}", parsing_timeout=None),
        parse("\\boxed{0.5}", parsing_timeout=None),
        timeout_seconds=None,
    )
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        try:
            request = json.loads(line)
            gold = parse(_wrap(request["gold"]), parsing_timeout=None)
            if not gold:
                reply = {"status": "parse_error", "detail": "gold answer did not parse"}
            else:
                pred = parse(_wrap(request["pred"]), parsing_timeout=None)
                if not pred:
                    reply = {"status": "parse_error", "detail": "answer did not parse"}
                else:
                    ok = verify(gold, pred, timeout_seconds=None)
                    reply = {"status": "correct" if ok else "wrong", "detail": ""}
        except MemoryError:
            reply = {"status": "parse_error", "detail": "out of memory"}
        except Exception as exc:  # any SymPy failure is a parse error of that answer, never a crash
            reply = {"status": "parse_error", "detail": f"{type(exc).__name__}"}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
