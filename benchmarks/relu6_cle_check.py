"""How far cross-layer equalization through ReLU6 moves MobileNetV2-small's float function (issue 15).

``learnq.ptq.equalize`` scales a ReLU6 channel only where its BatchNorm statistics say the clip at 6 never binds
(``β + kγ <= 6``, k = 3, the 3σ rule the DFQ paper uses for its high-bias absorption). Real activations have tails
beyond kσ, so the equalized float network is not exactly the original: this script measures the largest logit
change and the float accuracy before/after on the test split, for k = 3 (learnq's rule) and k = 6, with the
absorption off (the scaling alone). Models: the DSMM pilot's MobileNetV2-small, seed 0 (``dsmm_ptq_table1.py``).

    .venv/bin/python benchmarks/relu6_cle_check.py     # a few seconds; writes results/relu6_cle_check.json
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import learnq.ptq.equalize as E
from learnq.bn_fold import bn_statistics, find_conv_bn_pairs, fold_batchnorm
from learnq.pipeline.model_files import rebuild

PILOT = Path.home() / ".cache/learnq-bench/dsmm-pilot/alr5/scratch/mobilenetv2-small"
OUT = Path(__file__).resolve().parent / "results" / "relu6_cle_check.json"


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    rule = E.relu6_upper
    for k in (3.0, 6.0):
        E.relu6_upper = lambda mean, std, k=k: mean.double() + k * std.double()  # noqa: E731 - the bound's k
        try:
            for reg in ("l2", "dsmm"):
                model, splits, _ = rebuild(PILOT / reg / "seed0.safetensors")
                model.eval()
                x = torch.stack([splits.test[i][0] for i in range(len(splits.test))])
                y = torch.tensor([int(splits.test[i][1]) for i in range(len(splits.test))])
                stats = bn_statistics(model, find_conv_bn_pairs(model))
                folded = fold_batchnorm(model)
                with torch.no_grad():
                    before = folded(x)
                info = E.equalize(folded, stats, absorb=False)
                with torch.no_grad():
                    after = folded(x)
                rows.append({"k": k, "reg": reg, "pairs": len(info["pairs"]),
                             "relu6_channels_held": sum(info["relu6_channels_held"].values()),
                             "max_logit_change": float((after - before).abs().max()),
                             "max_logit": float(before.abs().max()),
                             "float_accuracy_before": float((before.argmax(1) == y).float().mean()),
                             "float_accuracy_after": float((after.argmax(1) == y).float().mean())})
                print(rows[-1], flush=True)
        finally:
            E.relu6_upper = rule
    OUT.write_text(json.dumps({"rows": rows, "torch": torch.__version__}, indent=1) + "\n")


if __name__ == "__main__":
    main()
