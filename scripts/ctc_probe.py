"""ctc_loss forward on CUDA at the scorecard's core shapes: the alpha kernel of an earlier version of the file
against the current one, GPU time of the kernel alone and wall time of the whole call, with torch's. Session 7
compared the state-form kernel (one step ahead, cf0ef98) with the pair form (grouped prefetch), then the pair
form's host path before (1eddf78) and after one length transfer instead of two:
`git show COMMIT:flagstack/ops/challenge/ctc_loss.py > scripts/ctc_old_source.txt` (ignored by git: the device
call carries it), then `python3 scripts/ctc_probe.py`."""
import importlib.util
import pathlib
import sys

import torch

from flagstack.bench.common import interleaved_medians
new = importlib.import_module("flagstack.ops.challenge.ctc_loss")

source = pathlib.Path(__file__).with_name("ctc_old_source.txt").read_text()
module_path = pathlib.Path("/tmp/ctc_old_probe.py")
module_path.write_text(source[:source.index("for _name in (\"aten::_ctc_loss\"")])  # without its registration
spec = importlib.util.spec_from_file_location("ctc_old_probe", module_path)
old = importlib.util.module_from_spec(spec)
sys.modules["ctc_old_probe"] = old
spec.loader.exec_module(old)

for rows, classes in ((4096, 64), (4096, 512), (1024, 64)):
    case = new._bench_case(rows, torch.float32, "cuda", classes)
    log_probs, targets, in_lens, tg_lens = case.args
    prepared = {name: module._prepare(log_probs, targets, in_lens, tg_lens, 0) for name, module in
                (("old", old), ("new", new))}  # each version's own tuple
    ref_nll, ref_alpha = torch.ops.aten._ctc_loss(log_probs, targets, in_lens, tg_lens, 0, False)
    for name, module in (("old", old), ("new", new)):
        nll, alpha = module._alpha(log_probs, prepared[name], 0)
        print(rows, classes, name, "nll max err", (nll - ref_nll).abs().max().item(), flush=True)
    variants = {"torch F.ctc_loss": lambda: torch.nn.functional.ctc_loss(log_probs, targets, in_lens, tg_lens),
                "old call": lambda: old.ctc_loss_triton(log_probs, targets, in_lens, tg_lens),
                "new call": lambda: new.ctc_loss_triton(log_probs, targets, in_lens, tg_lens)}
    for name, us in interleaved_medians(variants, 3, device="cuda").items():
        print(f"{rows}x{classes} wall {name}: {us:.1f} us", flush=True)
    kernels = {f"{name} alpha": lambda module=module, name=name: module._alpha(log_probs, prepared[name], 0)
               for name, module in (("old", old), ("new", new))}
    for name, us in interleaved_medians(kernels, 3, device="cuda", cuda_graph=True).items():
        print(f"{rows}x{classes} GPU {name} (+ alpha fill): {us:.1f} us", flush=True)
