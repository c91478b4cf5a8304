"""One piece of work on every process of a launch: each process computes its share of a stage's items, and
every process receives every result, in order.

    split = WorkSplit.from_process_group(device)     # WorkSplit() alone: a plain lazy map, nothing changes
    for y in split.map(fn, items):                   # fn(item) runs here only for this process's share
        ...                                          # every process sees every result, in item order

The stages take a `split` (models/dit.py forward_windowed: the DiT's tile × window forwards of each sampler
step; models/svd_vae.py decode_iter: the SVD decoder's chunks; models/compressor.py encode and
models/previewer.py decode_iter: their frame chunks). Items go in rounds of `world`: item j·world + r of round
j runs on rank r, then the round's results are all-gathered (torch.distributed: gloo on CPU, NCCL on CUDA), so
an item is computed exactly as one process computes it, from the same inputs, and the outputs of a split run
equal the single-process run's where every process runs the same kernels at the same thread count.

Every exchange starts with a header (status, sequence number, dtype, shape) from every process, so results of
any shape gather, processes out of step fail loudly instead of mixing data, and a failure reaches everyone:
a process whose item raises, or that calls abort() after failing elsewhere, makes the other processes' next
exchange raise SplitAborted, and every process then ends the piece of work at that same exchange (finish()
marks a piece of work done by all). bytes_gathered counts the payload this process received from the others.
"""
import torch
import torch.distributed as dist

NONE, ITEM, DONE, FAILED = 0, 1, 2, 3            # header status: no item this round | an item | finish() | failed
MAX_DIMS = 8
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int64)


def memory_order(t):
    """The dims of t from the outermost in memory to the innermost (stride descending, ties by dim)."""
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))


class SplitAborted(RuntimeError):
    """Another process of the split failed; every process stops the piece of work at the same exchange."""


class WorkSplit:
    """The processes sharing one piece of work: this process's rank in `world`, the torch.distributed group
    (None: the default one) and the device its exchanges use (NCCL needs CUDA tensors). world 1: no exchanges.
    Counters: bytes_gathered (payload bytes received from the other processes), exchanges."""

    def __init__(self, rank=0, world=1, group=None, device='cpu'):
        if not 0 <= rank < world:
            raise ValueError(f'WorkSplit: rank {rank} is not in 0..{world - 1}')
        self.rank, self.world, self.group, self.device = rank, world, group, torch.device(device)
        self.bytes_gathered = 0
        self.exchanges = 0
        self._told = False                   # this process's failure already reached the others (in map)

    @classmethod
    def from_process_group(cls, device='cpu', group=None):
        """The processes of the initialised default group (accelerate's PartialState or torchrun set it up);
        a single-process WorkSplit when torch.distributed is not initialised."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(group), dist.get_world_size(group), group, device)

    @property
    def single(self):
        return self.world == 1

    @property
    def main(self):
        """Whether this is the process that writes (rank 0)."""
        return self.rank == 0

    def __repr__(self):
        return f'WorkSplit(rank={self.rank}, world={self.world})'

    # ---- the split map ------------------------------------------------------------------------------------
    def map(self, fn, items):
        """Yield fn(item) for every item, in order, on every process; fn runs here for items rank, rank + world,
        ... only. fn must return a tensor (any shape; the same dtype on every process). Lazy: a round runs when
        its first result is wanted, so memory holds one round (world results). The error fn raises on this
        process is raised here; the others raise SplitAborted at the same round."""
        items = list(items)
        if self.single:
            yield from map(fn, items)
            return
        for start in range(0, len(items), self.world):
            i = start + self.rank
            mine, error = None, None
            if i < len(items):
                try:
                    mine = fn(items[i])
                except Exception as e:             # told to the others, then raised here
                    error = e
            headers = self._exchange(FAILED if error else ITEM if mine is not None else NONE, mine)
            if error is not None:
                self._told = True
                raise error
            self._raise_if_failed(headers)
            yield from self._gather(mine, headers)[:len(items) - start]

    def finish(self):
        """End a piece of work: every process calls it once after its last map(); SplitAborted if another
        process failed (its abort() meets this call)."""
        self._told = False
        if not self.single:
            self._raise_if_failed(self._exchange(DONE))

    def abort(self):
        """This process failed: tell the others (their next exchange raises SplitAborted), unless the failure was
        an item of map(), which told them already. Call it once, instead of finish(), and not after a
        SplitAborted (the others already stopped there)."""
        if self._told:
            self._told = False
        elif not self.single:
            self._exchange(FAILED)

    def broadcast(self, obj):
        """rank 0's picklable object on every process (a plan, a decision); obj on one process."""
        if self.single:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0, group=self.group, device=self.device)
        return box[0]

    # ---- exchanges ------------------------------------------------------------------------------------------
    def _exchange(self, status, tensor=None):
        """All-gather every process's header -> (world, 4 + 2·MAX_DIMS) int64: status, sequence, dtype, ndim,
        shape, the dims in memory order (so an item arrives with its sender's strides: a channels-last tensor
        stays channels-last, and what is computed from it next runs the same kernels as on one process)."""
        head = torch.full((4 + 2 * MAX_DIMS,), -1, dtype=torch.int64)
        head[0], head[1] = status, self.exchanges
        if tensor is not None:
            if tensor.dim() > MAX_DIMS or tensor.dtype not in DTYPES:
                raise ValueError(f'WorkSplit: cannot gather a {tensor.dtype} tensor of {tensor.dim()} dims')
            n, order = tensor.dim(), memory_order(tensor)
            head[2], head[3] = DTYPES.index(tensor.dtype), n
            head[4:4 + n] = torch.tensor(tensor.shape, dtype=torch.int64)
            head[4 + MAX_DIMS:4 + MAX_DIMS + n] = torch.tensor(order, dtype=torch.int64)
        head = head.to(self.device)
        heads = [torch.empty_like(head) for _ in range(self.world)]
        dist.all_gather(heads, head, group=self.group)
        self.exchanges += 1
        heads = torch.stack(heads).cpu()
        if (heads[:, 1] != heads[0, 1]).any():
            raise RuntimeError(f'WorkSplit: processes out of step (exchange numbers {heads[:, 1].tolist()}); '
                               f'every process must run the same stages with the same plan')
        statuses = set(heads[:, 0].tolist())
        if DONE in statuses and statuses - {DONE, FAILED}:
            raise RuntimeError('WorkSplit: some processes finished while others still had items; every process '
                               'must run the same stages with the same plan')
        return heads

    def _raise_if_failed(self, heads):
        failed = [r for r, h in enumerate(heads.tolist()) if h[0] == FAILED]
        if failed:
            raise SplitAborted(f"process{'es' if len(failed) > 1 else ''} {', '.join(map(str, failed))} of "
                               f"{self.world} failed; the work was stopped on every process")

    def _gather(self, mine, heads):
        """Every process's item of this round (None where a process had none), from its header's shape."""
        shapes = [tuple(h[4:4 + h[3]]) if h[0] == ITEM else None for h in heads.tolist()]
        orders = [tuple(h[4 + MAX_DIMS:4 + MAX_DIMS + h[3]]) if h[0] == ITEM else None for h in heads.tolist()]
        dtypes = {DTYPES[h[2]] for h in heads.tolist() if h[0] == ITEM}
        if len(dtypes) > 1:
            raise RuntimeError(f'WorkSplit: the processes returned different dtypes {sorted(map(str, dtypes))}')
        if not dtypes:
            return [None] * self.world
        dtype = dtypes.pop()
        sizes = [0 if s is None else int(torch.Size(s).numel()) for s in shapes]
        width = max(sizes)
        flat = torch.zeros(width, dtype=dtype, device=self.device)
        if mine is not None:
            flat[:mine.numel()] = mine.detach().permute(memory_order(mine)).reshape(-1).to(self.device)
        parts = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(parts, flat, group=self.group)
        out = []
        for r, (shape, order, n, part) in enumerate(zip(shapes, orders, sizes, parts)):
            if shape is None:
                out.append(None)
            elif r == self.rank:
                out.append(mine)
            else:
                stored = part[:n].view([shape[d] for d in order])          # the sender's memory order
                item = stored.permute(sorted(range(len(order)), key=order.__getitem__))
                out.append(item.to(mine.device if mine is not None else self.device))
                self.bytes_gathered += n * part.element_size()
        return out
