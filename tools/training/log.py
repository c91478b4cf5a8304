"""The training run's bookkeeping: log files, the progress bar and scalars, and stop signals (tools.training.loop)."""
import json
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

log = logging.getLogger('cascadev.train')


class ConsoleHandler(logging.StreamHandler):
    """Log lines to stdout above the progress bar (tqdm.write), so the bar and the lines do not mix."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 -- logging's own policy: report, never raise
            self.handleError(record)


def setup_logging(work_dir, is_main):
    """Log lines of the `cascadev` loggers to stdout and, on the main process, WORK_DIR/train.log."""
    fmt = logging.Formatter('%(asctime)s %(levelname)s %(message)s', '%H:%M:%S')
    root = logging.getLogger('cascadev')
    for handler in list(root.handlers):  # a previous run in this process
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    console = ConsoleHandler(sys.stdout)
    console.setFormatter(fmt)
    root.addHandler(console)
    if is_main:
        file = logging.FileHandler(Path(work_dir) / 'train.log')
        file.setFormatter(fmt)
        root.addHandler(file)


def close_logging():
    """Detach and close the `cascadev` log handlers (train.log is then free to be removed)."""
    root = logging.getLogger('cascadev')
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


class StopSignal:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint and exits at the end of the current step."""

    def __init__(self):
        self.received = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt   # a second Ctrl-C stops at once
        self.received = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class RunLog:
    """Progress bar, and every train.log_every optimizer steps (and after the last) a log line, TensorBoard
    scalars and a log.jsonl line (the main process). A line's loss, mse, vb, grad_norm and step_time are
    means over the optimizer steps since the previous line (and over the ranks); its `lr` is the effective lr
    of its step (auto_lr and warm-up applied)."""

    def __init__(self, run, start_step, goal):
        self.run, self.writer, self.progress, self.file = run, None, None, None
        self.window = []       # per optimizer step since the last line: (terms, grad_norm, time, step, iteration, lr)
        if run.is_main:
            self.writer = SummaryWriter(str(run.work_dir / 'tb'))
            self.progress = tqdm(total=None if goal == math.inf else goal, initial=start_step, desc='train',
                                 dynamic_ncols=True, disable=None)
            self.file = open(run.work_dir / 'log.jsonl', 'a')
        self.restart_clock()

    def restart_clock(self):
        self.t_last = time.perf_counter()   # checkpoints and previews do not count as step time

    def step(self, step, iteration, result, action, in_row):
        run, tc = self.run, self.run.cfg.train
        step_time = time.perf_counter() - self.t_last
        if action in ('skip', 'stop'):
            log.warning(f"iteration {iteration}: non-finite loss or gradient (loss {result.loss:.4g}, grad-norm "
                        f"{result.grad_norm:.4g}); optimizer step skipped ({in_row}/{tc.max_nonfinite} in a row)")
        elif action == 'overflow':
            log.info(f"iteration {iteration}: fp16 gradient overflow, loss scale lowered to "
                     f"{run.accelerator.scaler.get_scale():g}")
        if run.is_main:
            self.progress.update(int(action == 'step'))
            self.progress.set_postfix(loss=f'{result.loss:.4f}', lr=f'{result.lr:.2e}',
                                      s_per_step=f'{step_time:.2f}', refresh=False)
        if action != 'step':
            return
        self.window.append(({k: v.detach().mean() for k, v in result.terms.items()}, result.grad_norm, step_time,
                            step, iteration, result.lr))
        if step % tc.log_every == 0:
            self.line()

    def line(self):
        """The log line, scalars and log.jsonl line of the steps since the previous line (none: nothing). The
        loop calls it at the end too, so a run's last steps are always logged."""
        window, self.window = self.window, []
        if not window:
            return
        run, n = self.run, len(window)
        *_, step, iteration, lr = window[-1]
        values = {k: run.accelerator.reduce(sum(w[0][k] for w in window) / n, 'mean').item() for k in window[0][0]}
        step_time = sum(w[2] for w in window) / n
        values.update(grad_norm=sum(w[1] for w in window) / n, lr=lr, step_time=step_time,
                      samples_per_s=run.accelerator.num_processes * run.cfg.train.batch_size / step_time)
        if run.is_main:
            span = f"step {step}" if n == 1 else f"steps {step - n + 1}-{step}"
            log.info(f"{span}: loss {values['loss']:.4f} (mse {values['mse']:.4f}, vb {values['vb']:.4f}), "
                     f"grad-norm {values['grad_norm']:.3g}, lr {lr:.3g}, {step_time:.2f} s/step")
            for k, v in values.items():
                self.writer.add_scalar(f'train/{k}', v, step)
            self.file.write(json.dumps(dict(step=step, iteration=iteration, **values)) + '\n')
            self.file.flush()

    def close(self):
        for thing in (self.file, self.writer, self.progress):
            if thing is not None:
                thing.close()
