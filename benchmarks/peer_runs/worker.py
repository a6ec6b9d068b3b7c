"""One library's rows for one seed, in its own process (started by ``benchmarks/peers.py``):

    PYTHONPATH=.:benchmarks python -m peer_runs.worker --library nncf --folder SEED_DIR --tmp DIR \\
        --options '{"rounds": 3, ...}' --rows quantize/W8A8,compress_weights/W4A32

learnq's rows run under ``.venv/bin/python``, the peers' under ``.venv-bench/bin/python``. Each finished row is
printed as one line ``PEERS-ROW <json>`` (the first line is ``PEERS-INFO <json>``: versions); everything else the
libraries print is left to the caller's log. A row whose setting the plan marks ``TRY`` and that raises is "not
supported" with the error as the reason; any other exception is an "error" row (traceback in ``extra``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import os
import sys
import warnings
from pathlib import Path

ROW, INFO = "PEERS-ROW ", "PEERS-INFO "


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--library", required=True)
    p.add_argument("--folder", type=Path, required=True, help="the seed's prepared float model and data")
    p.add_argument("--tmp", type=Path, required=True, help="where the artifacts go")
    p.add_argument("--options", default="{}", help="JSON: rounds, qat_epochs, qat_lr, adaround_iterations, quick")
    p.add_argument("--rows", required=True, help="comma-separated method/setting")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry off (its only effect)
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")  # its JIT build can exceed 60 s on a busy machine
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    from peer_runs.common import Bench, Row, fail, learnq_mse
    from peer_runs.plan import LIBRARIES, SETTINGS, TRY, method

    bench = Bench.load(args.folder, args.tmp, json.loads(args.options))
    dist = LIBRARIES[args.library][0]
    if args.library == "learnq":
        import learnq

        version = learnq.__version__
    else:
        version = importlib.metadata.version(dist)
    print(INFO + json.dumps({"library": args.library, "version": version, "torch": torch.__version__,
                             "threads": torch.get_num_threads(), "python": sys.version.split()[0]}), flush=True)
    side = importlib.import_module(f"peer_runs.side_{args.library}")
    if hasattr(side, "warm_up"):
        side.warm_up(bench)
    baselines = {}
    for item in args.rows.split(","):
        key, _, setting = item.partition("/")
        m = method(args.library, key)
        wbits, abits, _, _ = SETTINGS[setting]
        if (wbits, abits) not in baselines:
            baselines[(wbits, abits)] = learnq_mse(bench, bench.model, wbits, abits)
            baselines[(wbits, abits)]()  # untimed first call (lazy imports)
        row = Row(args.library, key, setting, bench.seed)
        try:
            side.run(bench, m, setting, row, baselines[(wbits, abits)])
            if m.settings[setting] == TRY:
                row.note += " (the plan expected a refusal: the peer now accepts this setting)"
        except Exception as exc:  # a failing row is a result, not a crash
            fail(row, exc, "not supported" if m.settings[setting] == TRY else "error")
        print(ROW + json.dumps(row.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
