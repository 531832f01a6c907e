"""Running the network on a batch: device and precision choice, and the fastest correct path for each.

CPU: oneDNN fused kernels (`fused.py`) in fp32 or bf16, else the eager module in channels_last.
CUDA: the eager module in channels_last, cuDNN in its deterministic mode; uint8 batches go over in pinned
    memory, non-blocking, and are normalised on the GPU (a quarter of the bytes of a float batch).
MPS: the eager module.
Precision: fp32 (default, exact: top-5 as torchvision's reference), bf16 (CPUs with AVX-512 BF16/AMX, CUDA),
fp16 (CUDA, MPS). torchvision's int8 weights (quantized.py) run on the CPU, on torch's fbgemm engine, as they
are. Softmax (or a one-output head's sigmoid) is always taken in float32.

An image's answer depends on the image and the options only, to the last bit. Kernel libraries pick their
algorithms by tensor shape (oneDNN computes an image in a batch of 1, 2 or 3 differently from one in a batch of
8, measured), so the network always runs on the same shape: chunks of `forward_batch()` images, the last one
padded with blank images. The batch an image lands in, its batch mates, `--batch-size`, the engine and the
thread count then change nothing: the padding costs a one-image run 7 images' worth of compute on a CPU
(docs/benchmarks.md has the measurement), and nothing to full batches.
"""

from __future__ import annotations

import torch

from .devices import check_precision, dtype_of, forward_batch, resolve_device
from .formats import check_exported
from .preprocess import normalize
from .registry import Preprocess


def load_for(job, device: torch.device | None = None, *, check_here: bool = True):
    """(device, dtype, weights.LoadedModel, task) for a job: the device found on this machine (or `device`,
    which an engine has decided), the precision checked on it (unless `check_here` is False: a cluster's GPU is
    not this machine's), the weights loaded and the job's task bound to the model's classes (tasks.Task.bind)."""
    from .weights import load

    int8 = job.weights.spec is not None and job.weights.spec.quantized
    if job.weights.runtime != "torch":  # an exported file: its runtime, on the CPU, in the file's precision
        check_exported(job.weights, job.options.device, job.options.precision)  # make_job did; the API too
        device, check_here = torch.device("cpu"), False
    elif device is None:  # int8 weights run on the CPU: --device auto means the CPU for them
        device = resolve_device("cpu" if int8 and job.options.device == "auto" else job.options.device)
    dtype = check_precision(job.options.precision, device) if check_here else dtype_of(job.options.precision)
    if int8:
        check_int8(job.weights.name, device, dtype)
    loaded = load(job.weights, offline=job.network.offline, quiet=job.options.quiet)
    return device, dtype, loaded, job.task.bind(loaded.num_classes)


def top(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the `k` largest of each row, largest first, equal values in class-index order.

    torch.topk leaves the order of equal values unspecified (measured: class 704 before 146 on an exact tie),
    and int8 networks give exact ties often (their logits take few distinct values); a stable sort makes the
    order, and which classes make the cut at the k-th place, a function of the probabilities alone."""
    values, indices = torch.sort(probs, dim=1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


def check_int8(name: str, device: torch.device, dtype: torch.dtype) -> None:
    """A usage error unless int8 weights (`name`) are asked to run where they can: the CPU, fp32 around the
    int8 layers (quantized.py)."""
    from ..core.errors import UsageError

    if device.type != "cpu":
        raise UsageError(f"{name} are int8 weights for torch's fbgemm engine, which runs on the CPU only; "
                         f"leave out --device or give --device cpu")
    if dtype != torch.float32:
        raise UsageError(f"{name} are int8 weights: they run as they were quantized; leave out --precision")


class Predictor:
    """The network on batches of (N, crop, crop, 3) uint8 CPU tensors, any N: it runs on chunks of
    `forward_batch` images, the last one padded (module docstring). `classify`, `embed` and `explain` are what
    the tasks (tasks.py) ask of it.

    A head with one output is a binary classifier trained with a sigmoid (BCEWithLogitsLoss): its logit z
    gives two classes, 0 with probability sigmoid(-z) = 1 - sigmoid(z) and 1 (the positive class) with
    sigmoid(z); never a softmax over one logit. An image whose logits are not all finite (NaN or infinite
    weights, an overflow) gets NaN probabilities, which its task turns into a failure (tasks.Task.records)."""

    def __init__(self, module, preprocess: Preprocess, *, device: torch.device, dtype: torch.dtype) -> None:
        from . import fused

        self.preprocess = preprocess
        self.device = device
        self.dtype = dtype
        self.chunk = forward_batch(device.type)
        self.feature_dim = module.fc.in_features  # the length of `embed`'s vectors
        self.binary = module.fc.out_features == 1
        self.module = module
        if getattr(module, "quantized", False):  # quantized.QuantizedResNet: CPU, fp32 in and out, run as it is
            check_int8("these", device, dtype)
            self.forward = module
        elif device.type == "cpu" and fused.available():
            self.forward = fused.FusedResNet(module, dtype, self.chunk, preprocess.crop)
        else:
            if device.type == "cuda":
                # Autotuning may pick another algorithm from one run to the next, and with it other last bits.
                torch.backends.cudnn.benchmark = False
                torch.backends.cudnn.deterministic = True
            self.forward = module.to(device=device, dtype=dtype, memory_format=torch.channels_last)

    def _chunks(self, batch_u8: torch.Tensor):
        """(number of real images, normalised chunks of the fixed shape, the last padded)."""
        n = len(batch_u8)
        short = -n % self.chunk
        if short:
            batch_u8 = torch.cat([batch_u8, batch_u8.new_zeros((short, *batch_u8.shape[1:]))])
        if self.device.type == "cuda":
            batch_u8 = batch_u8.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            batch_u8 = batch_u8.to(self.device)
        return n, (normalize(part, self.preprocess, self.dtype).contiguous(memory_format=torch.channels_last)
                   for part in batch_u8.split(self.chunk))

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, classes) float32 scores, one per class: the logits, or for a one-output head (-z, z), the log-odds
        of its two classes (what an explanation's gradient is taken of)."""
        logits = logits.float()
        return torch.cat([-logits, logits], dim=1) if self.binary else logits

    def probabilities(self, scores: torch.Tensor, restrict: torch.Tensor | None = None) -> torch.Tensor:
        """(N, classes) float32 probabilities from `scores`, within `restrict` (class indices) when given:
        softmax, or sigmoid of each log-odds for a one-output head. A row whose scores are not all finite is
        all NaN."""
        bad = ~torch.isfinite(scores).all(dim=1, keepdim=True)
        if self.binary:
            probs = torch.sigmoid(scores)
            if restrict is not None:
                probs = probs[:, restrict]
                if len(restrict) < 2:
                    probs = probs / probs.sum(dim=1, keepdim=True)
        else:
            probs = torch.softmax(scores if restrict is None else scores[:, restrict], dim=1)
        return probs.masked_fill(bad, float("nan"))

    @torch.inference_mode()
    def classify(self, batch_u8: torch.Tensor, topk: int, restrict: tuple[int, ...] | None = None,
                 tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, topk) probabilities (float32) and class indices (int64), on the CPU, most probable first. With
        `restrict` (class indices), the prediction is among those classes only: softmax over their logits, as
        timm's `--valid-labels` does. With `tta`, horizontal-flip test-time augmentation: the mean of the
        softmax of each input crop and of its mirror image (as timm's and torchvision's reference scripts
        average flips); the mirrored crops run as chunks of their own, of the same fixed shape, so the answer
        stays independent of the batch."""
        keep = None if restrict is None else torch.tensor(sorted(restrict), device=self.device)

        def probabilities(x: torch.Tensor) -> torch.Tensor:
            return self.probabilities(self.scores(self.forward(x)), keep)

        n, chunks = self._chunks(batch_u8)
        values, indices = [], []
        for x in chunks:
            probs = probabilities(x)
            if tta:
                mirrored = probabilities(x.flip(3).contiguous(memory_format=torch.channels_last))
                probs = (probs + mirrored) / 2
            v, i = top(probs, topk)
            values.append(v)
            indices.append(i if keep is None else keep[i])
        return torch.cat(values)[:n].cpu(), torch.cat(indices)[:n].cpu()

    @torch.inference_mode()
    def embed(self, batch_u8: torch.Tensor) -> torch.Tensor:
        """(N, D) float32 on CPU: the vector the classifier head receives, for each image."""
        n, chunks = self._chunks(batch_u8)
        features = self.forward.features
        return torch.cat([features(x).float() for x in chunks])[:n].cpu()

    def explain(self, batch_u8: torch.Tensor, method: str, position: int, target: int | None = None,
                topk: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`classify`'s (top-k probabilities, top-k indices), from the very same forward pass, and for each image
        (target index, its probability, its (crop, crop) class activation map from `method` at block number
        `position`; cam.py). `target` None: each image's top-1 class.

        Which activations the map is computed from:
        - layer4's last block, on the fused CPU path: the fused pass's own. Only the pooling and the linear head
          follow that block, so the gradient is the head's weights whatever the activations, and the map is a
          linear function of them: BatchNorm folded into the convolutions moves it by float rounding only
          (4e-6 from torchvision's arithmetic, measured). The map then costs almost nothing over classify.
        - any earlier block: the eager module's, recomputed from the input. There the gradient passes through
          ReLUs on its way back, which amplify the fused path's rounding: it moved a test model's normalised
          layer3 maps by up to 3e-3 from torchvision's, where the eager module's agree within 1e-5
          (tests/cli/commands/test_explain.py).
        """
        from . import cam, fused

        self.module.requires_grad_(False)  # the maps need the activations' gradient only
        dtype = next(self.module.parameters()).dtype
        last = position == cam.block_count(self.module) - 1
        reuse = last and isinstance(self.forward, fused.FusedResNet)
        n, chunks = self._chunks(batch_u8)
        parts: list[list[torch.Tensor]] = [[], [], [], [], []]
        for x in chunks:
            with torch.no_grad():
                if reuse:
                    block = self.forward.layer4(x)
                    logits = self.forward.head(block)
                    block = block.to(dtype)
                else:
                    logits = self.forward(x).float()
                    block = cam.eager_prefix(self.module, x.to(dtype).contiguous(), position)
                probs = self.probabilities(self.scores(logits), None)
                v, i = top(probs, topk)
                t = i[:, 0] if target is None else torch.full_like(i[:, 0], target)
                p = probs.gather(1, t[:, None])[:, 0]
            m = cam.maps(method, lambda a: self.scores(cam.eager_suffix(self.module, a, position)), block, t,
                         self.preprocess.crop)
            for part, value in zip(parts, (v, i, t, p, m)):
                part.append(value)
        return tuple(torch.cat(part)[:n].cpu() for part in parts)
