"""reasoning-gym scoring worker: a separate OS process that runs the datasets' own ``score_answer``.

Started from its source with ``python -c`` by :mod:`entropyctl.rewards.reasoning_gym` (it never imports
entropyctl). One JSON request per line on stdin, ``{"spec": {"name", "config", "seed", "size"},
"answer": str | null, "entry": <base64 pickle of the entry dict>}``; one JSON reply per line on stdout,
``{"score": float}`` or ``{"error": str}``. The parent enforces the timeout by killing this process.
"""

import base64
import json
import logging
import math
import os
import pickle
import sys
import threading
import time


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def main() -> None:
    if "" in sys.path:
        sys.path.remove("")
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # library output never enters the reply channel
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    logging.disable(logging.CRITICAL)
    import warnings

    warnings.filterwarnings("ignore")
    from reasoning_gym import create_dataset

    datasets: dict[str, object] = {}
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        try:
            reply: dict[str, object]
            request = json.loads(line)
            spec = request["spec"]
            key = json.dumps(spec, sort_keys=True)
            if key not in datasets:
                datasets[key] = create_dataset(
                    spec["name"], seed=spec["seed"], size=spec["size"], **json.loads(spec["config"])
                )
            entry = pickle.loads(base64.b64decode(request["entry"]))
            score = float(datasets[key].score_answer(request["answer"], entry))  # type: ignore[attr-defined]
            if not math.isfinite(score):
                reply = {"error": f"score_answer returned {score}"}
            else:
                reply = {"score": score}
        except MemoryError:
            reply = {"error": "out of memory"}
        except Exception as exc:  # a failing verifier scores that answer 0, never crashes the worker
            reply = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
