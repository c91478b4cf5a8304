"""Streaming helpers for the per-video loop: read ahead of the work, and re-cut a stream of chunks."""
import torch


def read_ahead(read, spans, pool):
    """Yield read(a, b) for each (a, b) in spans while the next span is already being read in `pool`."""
    pending = pool.submit(read, *spans[0]) if spans else None
    for i in range(len(spans)):
        frames = pending.result()
        pending = pool.submit(read, *spans[i + 1]) if i + 1 < len(spans) else None
        yield frames


class rechunk:
    """A stream of tensors (e.g. decoder chunks (B, C, k, H, W)) re-cut along `dim`: take(n) returns the next
    n items, pulling from the stream only as far as needed, so at most one stream chunk is held beyond them."""

    def __init__(self, stream, dim=0):
        self.stream, self.dim, self.buffer = iter(stream), dim, []

    def _held(self):
        return sum(x.shape[self.dim] for x in self.buffer)

    def take(self, n):
        """The next n items along dim (fewer only when the stream ends)."""
        while self._held() < n:
            try:
                self.buffer.append(next(self.stream))
            except StopIteration:
                break
        if not self.buffer:
            raise ValueError(f'rechunk.take({n}): the stream has ended')
        out = torch.cat(self.buffer, dim=self.dim) if len(self.buffer) > 1 else self.buffer[0]
        k = min(n, out.shape[self.dim])
        head, rest = out.narrow(self.dim, 0, k), out.narrow(self.dim, k, out.shape[self.dim] - k)
        self.buffer = [rest] if rest.shape[self.dim] else []
        return head
