"""Weight transfer over a collective group that the trainer joins as the last rank of a server's workers.

The protocol is TRL's (`/init_communicator/`, then a broadcast from the client rank per update), extended with
buckets: many tensors travel as one flat byte buffer per broadcast, described by a JSON list of names, dtypes and
shapes. On GPUs the group is vLLM's PyNccl communicator; on CPU it is a gloo group over a TCPStore. Both sides are
separate programs, so neither group touches `torch.distributed`'s global state, which the trainer's own DDP/FSDP
group owns.
"""

from __future__ import annotations

import datetime
import math
import socket
from typing import Any, Iterable, Literal, Protocol

import torch
from torch import Tensor

from rcl.serving.weights import NamedTensor

GroupKind = Literal["gloo", "nccl"]


class WeightGroup(Protocol):
    def broadcast(self, tensor: Tensor, src: int) -> None: ...

    def close(self) -> None: ...


def tensor_meta(name: str, tensor: Tensor) -> dict[str, Any]:
    return {"name": name, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}


def parse_dtype(name: str) -> torch.dtype:
    """`float32` or `torch.float32` (TRL sends the latter) as a torch dtype; ValueError naming anything else."""
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def meta_dtype(meta: dict[str, Any]) -> torch.dtype:
    try:
        return parse_dtype(meta["dtype"])
    except ValueError as exc:
        raise ValueError(f"{exc} for {meta['name']!r}") from None


def meta_nbytes(meta: dict[str, Any]) -> int:
    return math.prod(meta["shape"]) * meta_dtype(meta).itemsize


ALIGN_BYTES = 16
"""Every tensor starts at a multiple of this in a packed bucket: a byte view can only be re-viewed as a dtype at an
offset divisible by its size (a bf16 tensor of odd length would otherwise misalign the next fp32 one)."""


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN_BYTES) * ALIGN_BYTES


def bucket_nbytes(metas: list[dict[str, Any]]) -> int:
    """Size of the packed buffer that `metas` describe (each tensor padded to `ALIGN_BYTES`)."""
    return sum(_aligned(meta_nbytes(m)) for m in metas)


def pack_bucket(named: Iterable[NamedTensor], device: torch.device | str = "cpu") -> tuple[Tensor, list[dict]]:
    """One flat uint8 buffer holding every tensor's bytes in order, and the metadata that splits it again."""
    metas, parts = [], []
    for name, t in named:
        metas.append(tensor_meta(name, t))
        data = t.detach().to(device).contiguous().reshape(-1).view(torch.uint8)
        parts.append(data)
        if _aligned(data.numel()) > data.numel():
            parts.append(torch.zeros(_aligned(data.numel()) - data.numel(), dtype=torch.uint8, device=data.device))
    if not metas:
        raise ValueError("pack_bucket got no tensors")
    return torch.cat(parts), metas


def unpack_bucket(flat: Tensor, metas: list[dict[str, Any]]) -> list[NamedTensor]:
    """Inverse of `pack_bucket`: views into `flat`, so keep it alive while the tensors are used."""
    if flat.dtype != torch.uint8 or flat.dim() != 1:
        raise ValueError("unpack_bucket needs a flat uint8 buffer")
    if bucket_nbytes(metas) != flat.numel():
        raise ValueError(f"bucket metadata describes {bucket_nbytes(metas)} bytes but the buffer has {flat.numel()}")
    out, offset = [], 0
    for meta in metas:
        chunk = flat[offset : offset + meta_nbytes(meta)]
        out.append((meta["name"], chunk.view(meta_dtype(meta)).reshape(meta["shape"])))
        offset += _aligned(meta_nbytes(meta))
    return out


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on `host:port` only. A TCPStore master asked for 127.0.0.1 would otherwise listen on every
    interface, and anyone who reaches the port could join the weight group."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class GlooGroup:
    """A gloo group over its own TCPStore (rank 0 hosts the store): the CPU stand-in for vLLM's NCCL communicator.

    Rank 0's store and every rank's gloo pairs listen on `host` only, the address the client was told to use.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float = 300.0):
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size = rank, world_size
        listener = listening_socket(host, port) if rank == 0 else None
        try:
            self._store = torch.distributed.TCPStore(
                host, port, world_size, is_master=rank == 0, timeout=timeout,
                master_listen_fd=listener.fileno() if listener else None,
            )
        except BaseException:
            if listener is not None:
                listener.close()
            raise
        if listener is not None:
            listener.detach()  # the store owns the descriptor now and closes it with itself
        options = torch.distributed.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [torch.distributed.ProcessGroupGloo.create_device(hostname=host)]
        self._group = torch.distributed.ProcessGroupGloo(self._store, rank, world_size, options)

    def broadcast(self, tensor: Tensor, src: int) -> None:
        options = torch.distributed.BroadcastOptions()
        options.rootRank, options.rootTensor = src, 0
        self._group.broadcast([tensor], options).wait()

    def close(self) -> None:
        # Every rank meets first: gloo aborts the process if a peer tears the pair down while another still uses it.
        if self._group is not None:
            self._group.barrier().wait()
            self._group = None
            self._store = None


class NcclGroup:
    """vLLM's PyNccl communicator over its StatelessProcessGroup, as vLLM's own weight-update examples build it."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, device: torch.device):
        try:
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup
        except ImportError as exc:
            raise ImportError("the nccl weight transport needs vLLM in the trainer's environment "
                              "(pip install 'rcl[vllm]'); or use the http transport") from exc
        self.rank, self.world_size = rank, world_size
        self._pg = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
        self._comm = PyNcclCommunicator(self._pg, device=device)
        if self._comm.disabled:  # its broadcast would then return without moving a byte
            raise RuntimeError("vLLM's NCCL communicator is disabled here (no NCCL library, or a single rank); "
                               "use the gloo or http weight transport")

    def broadcast(self, tensor: Tensor, src: int) -> None:
        self._comm.broadcast(tensor, src=src)
        self._pg.barrier()

    def close(self) -> None:
        self._comm = None


def open_group(kind: GroupKind, host: str, port: int, rank: int, world_size: int,
               device: torch.device | str = "cpu") -> WeightGroup:
    if kind == "gloo":
        return GlooGroup(host, port, rank, world_size)
    if kind == "nccl":
        return NcclGroup(host, port, rank, world_size, torch.device(device))
    raise ValueError(f"unknown group kind {kind!r}: gloo or nccl")
