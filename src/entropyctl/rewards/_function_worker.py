"""Custom-reward worker: a separate OS process that calls a user's ``package.module:function``.

Started by :class:`entropyctl.rewards.registry.ProcessFunctionReward` from its source with ``python -c``
(the reward's path is ``sys.argv[1]``, the parent's ``sys.path`` ``sys.argv[2]``, joined by ``os.pathsep``).
It imports the function, greets ``{"ready": true}`` (or ``{"ready": false, "error": ...}``), then reads
one JSON request per line, ``{"pred": completion, "gold": answer}`` (and ``"info"``, passed as ``info=``,
for a function that takes it), and replies
``{"status": "correct"|"wrong", "score": float}`` or ``{"status": "error", "detail": traceback}``.
The hard timeout is the parent's: it kills this process when a reply is late.
This module imports nothing from entropyctl on purpose.
"""

import importlib
import json
import math
import os
import sys
import threading
import time
import traceback


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _load(path: str):  # noqa: ANN202
    module_name, _, attr = path.partition(":")
    target = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def main() -> None:
    extra = sys.argv[2] if len(sys.argv) > 2 else ""
    for entry in reversed([p for p in extra.split(os.pathsep) if p]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # a print() in the user's function never reaches the reply channel
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        fn = _load(sys.argv[1])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as a start-up error
        out.write(json.dumps({"ready": False, "error": f"cannot load {sys.argv[1]}: {exc!r}"}) + "\n")
        return
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        try:
            request = json.loads(line)
            if "info" in request:
                score = float(fn(request["pred"], request["gold"], info=request["info"]))
            else:
                score = float(fn(request["pred"], request["gold"]))
            if not math.isfinite(score):
                raise ValueError(f"returned a non-finite score {score!r}")
            reply = {"status": "correct" if score > 0 else "wrong", "score": score}
        except Exception:  # noqa: BLE001 - the parent raises it with the traceback
            reply = {"status": "error", "detail": traceback.format_exc(limit=5)}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
