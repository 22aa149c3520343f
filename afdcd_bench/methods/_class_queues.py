"""Class-wise FIFO memories of unit vectors (CIRKD's pixel and region queues).

They are the run's state, not trained weights: held outside every module, so no DDP/DeepSpeed
wrapper broadcasts them each step, and checkpointed with the run. Every process keeps the same
copy because each enqueues the same gathered entries and draws from the same generator (seeded
from the run's seed, its state checkpointed too). docs/distillers.md, "CIRKD".
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

PIXEL_ENQUEUE = ("class", "released")


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a new allocation may still take on this device (None: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def queue_bytes(num_classes: int, pixel_size: int, region_size: int, dim: int) -> int:
    return num_classes * (pixel_size + region_size) * dim * 4  # float32


class ClassQueues:
    """queues[c] holds the latest entries of class c; each class has its own write pointer.

    pixel_enqueue "class": each image adds up to `per_image` random pixels of class c to c's queue.
    "released": the random indices are drawn in [0, n_c) of the whole flattened image (n_c = the
    class's pixel count), so most entries are pixels of other classes: the released code's fault,
    kept only to reproduce its published numbers.
    """

    def __init__(self, num_classes: int, pixel_size: int, region_size: int, dim: int, per_image: int = 16,
                 seed: int = 0, device: torch.device | str = "cpu", pixel_enqueue: str = "class"):
        if pixel_enqueue not in PIXEL_ENQUEUE:
            raise ValueError(f"pixel_enqueue must be one of {PIXEL_ENQUEUE}, got {pixel_enqueue!r}")
        if per_image > pixel_size:
            raise ValueError(f"per_image {per_image} exceeds the pixel queue's {pixel_size} slots")
        self.num_classes, self.per_image, self.pixel_enqueue = num_classes, per_image, pixel_enqueue
        self.generator = torch.Generator().manual_seed(seed)
        g = self.generator
        self.pixel = F.normalize(torch.randn(num_classes, pixel_size, dim, generator=g), dim=2).to(device)
        self.region = F.normalize(torch.randn(num_classes, region_size, dim, generator=g), dim=2).to(device)
        self.pixel_ptr = [0] * num_classes
        self.region_ptr = [0] * num_classes

    @property
    def nbytes(self) -> int:
        return self.pixel.numel() * self.pixel.element_size() + self.region.numel() * self.region.element_size()

    @torch.no_grad()
    def enqueue(self, feat: torch.Tensor, labels: torch.Tensor) -> None:
        """feat: (N, C, h, w) unit-length teacher pixel vectors; labels: (N, h, w), classes outside
        [0, K) ignored. Images are taken in order; within an image, classes in increasing order."""
        n, dim, h, w = feat.shape
        k = self.num_classes
        flat = feat.float().flatten(2).transpose(1, 2)  # (N, hw, C)
        lab = labels.flatten(1)
        valid = (lab >= 0) & (lab < k)
        onehot = F.one_hot(torch.where(valid, lab, 0), k).float() * valid[..., None]  # (N, hw, K)
        counts = onehot.sum(1)  # (N, K)
        regions = F.normalize(torch.einsum("nxk,nxc->nkc", onehot, flat) / counts.clamp_min(1)[..., None], dim=2)
        keys = torch.rand(n, h * w, generator=self.generator).to(feat.device)  # the lowest keys are the random picks
        positions = torch.arange(h * w, device=feat.device)
        counts_cpu = counts.long().cpu().tolist()
        pix_src: dict[tuple[int, int], tuple[int, int]] = {}  # (class, slot) -> (image, pixel); later writes win
        reg_src: dict[tuple[int, int], int] = {}
        size_p, size_r = self.pixel.shape[1], self.region.shape[1]
        for i in range(n):
            present = [c for c in range(k) if counts_cpu[i][c]]
            if not present:
                continue
            if self.pixel_enqueue == "class":
                among = onehot[i].T[present] > 0  # (classes present, hw)
            else:
                among = positions[None] < counts[i, present][:, None]
            take_max = min(self.per_image, h * w)
            picks = torch.where(among, keys[i][None], 2.0).topk(take_max, dim=1, largest=False).indices.tolist()
            for c, row in zip(present, picks):
                reg_src[(c, self.region_ptr[c])] = i
                self.region_ptr[c] = (self.region_ptr[c] + 1) % size_r
                take = min(counts_cpu[i][c], self.per_image)
                start = self.pixel_ptr[c]
                if start + take >= size_p:  # as released: the last `take` slots, then back to the start
                    start, self.pixel_ptr[c] = size_p - take, 0
                else:
                    self.pixel_ptr[c] = start + take
                for j, x in enumerate(row[:take]):  # candidates have keys < 1, so they come first
                    pix_src[(c, start + j)] = (i, x)
        if reg_src:
            (cls, slot), img = zip(*reg_src.keys()), list(reg_src.values())
            self.region[list(cls), list(slot)] = regions[img, list(cls)].to(self.region.dtype)
        if pix_src:
            (cls, slot), src = zip(*pix_src.keys()), list(pix_src.values())
            img, px = zip(*src)
            self.pixel[list(cls), list(slot)] = flat[list(img), list(px)].to(self.pixel.dtype)

    def sample(self, pixels: int, regions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's contrast entries: the same random slots of every class, floor(n/K)+1 of them."""
        k = self.num_classes
        p = torch.randperm(self.pixel.shape[1], generator=self.generator)[: pixels // k + 1].to(self.pixel.device)
        r = torch.randperm(self.region.shape[1], generator=self.generator)[: regions // k + 1].to(self.region.device)
        return self.pixel[:, p].reshape(-1, self.pixel.shape[2]), self.region[:, r].reshape(-1, self.region.shape[2])

    def state_dict(self) -> dict[str, Any]:
        return {"pixel": self.pixel.cpu(), "region": self.region.cpu(), "pixel_ptr": list(self.pixel_ptr),
                "region_ptr": list(self.region_ptr), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["pixel"].shape) != tuple(self.pixel.shape) or tuple(state["region"].shape) != tuple(self.region.shape):
            raise ValueError(f"checkpointed queues {tuple(state['pixel'].shape)} / {tuple(state['region'].shape)} do not "
                             f"match this run's {tuple(self.pixel.shape)} / {tuple(self.region.shape)}")
        self.pixel.copy_(state["pixel"])
        self.region.copy_(state["region"])
        self.pixel_ptr, self.region_ptr = list(state["pixel_ptr"]), list(state["region_ptr"])
        self.generator.set_state(state["generator"])
